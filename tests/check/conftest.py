"""Fixtures for the check tests: exports made once per session, quiet progress lines."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _quiet():
    from ln_deploy import progress

    progress.set_quiet(True)
    yield
    progress.set_quiet(False)


@pytest.fixture(scope="session")
def export_spec(tmp_path_factory, request):
    """export_spec(spec, **export_kwargs) -> (LoadedModel, onnx path), cached per (spec, kwargs); bundled
    models with default options come from the suite-wide ``exported_bundled`` fixture."""
    from ln_deploy.export import export_model
    from ln_deploy.spec import load_spec
    from models.catalog import BUNDLED, spec_path

    by_spec = {v: k for k, v in BUNDLED.items()}

    out = tmp_path_factory.mktemp("check_exports")
    cache = {}

    def make(spec, **kw):
        key = (spec, tuple(sorted(kw.items())))
        if not kw and spec in by_spec:
            loaded, exported = request.getfixturevalue("exported_bundled")[by_spec[spec]]
            return loaded, exported.path
        if key not in cache:
            loaded = load_spec(spec_path(spec) if not spec.startswith("/") else spec)
            path = out / f"m{len(cache)}.onnx"
            export_model(loaded, path, **kw)
            cache[key] = (loaded, path)
        return cache[key]

    return make
