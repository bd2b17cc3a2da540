"""Fixtures for the build tests: quiet progress, and shared libraries compiled here with the C compiler."""

import shutil
import subprocess

import pytest


@pytest.fixture(autouse=True, scope="session")
def _quiet():
    from ln_deploy import progress

    progress.set_quiet(True)
    yield
    progress.set_quiet(False)


@pytest.fixture(scope="session")
def shared_libs(tmp_path_factory):
    """{"plugin": a .so exporting getCreators, "other": a .so without it}; skips without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build test libraries")
    d = tmp_path_factory.mktemp("libs")
    out = {}
    for name, src in (("plugin", "void* getCreators(int* n) { *n = 0; return 0; }\n"),
                      ("other", "int answer(void) { return 42; }\n")):
        c = d / f"{name}.c"
        c.write_text(src)
        so = d / f"lib{name}.so"
        subprocess.run([cc, "-shared", "-fPIC", "-o", str(so), str(c)], check=True)
        out[name] = so
    return out
