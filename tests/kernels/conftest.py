"""Shared fixtures: the native build runs once per test session (the nvcc build is the
expensive part: about 1-3 minutes on 2 cores; incremental re-runs take seconds)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO / "plugins" / "build"
DEFAULT_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")


@dataclass
class NativeBuild:
    dir: Path
    seconds: float
    log: str
    kernels: Path | None
    host: Path | None
    plugin: Path | None
    plugin_test: Path | None
    loader_test: Path | None


def _nvcc() -> str | None:
    return shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)


@pytest.fixture(scope="session")
def native_build() -> NativeBuild:
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found: the native parts cannot be built")
    env = dict(os.environ)
    if _nvcc() and not shutil.which("nvcc"):
        env["PATH"] = str(Path(_nvcc()).parent) + os.pathsep + env.get("PATH", "")
    t0 = time.monotonic()
    # The default architectures on purpose: CI checks registers/spills for all of them. The
    # default (off) registration stated too: a build folder configured earlier keeps its cache.
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_plugins.sh"),
                           "-DCMAKE_CUDA_ARCHITECTURES=80;86;89;90", "-DLN_DEPLOY_STATIC_REGISTRATION=OFF"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"scripts/build_plugins.sh failed ({proc.returncode}):\n{log[-6000:]}")
    found = lambda name: (BUILD_DIR / name) if (BUILD_DIR / name).is_file() else None  # noqa: E731
    return NativeBuild(BUILD_DIR, seconds, log, found("libln_kernels.so"), found("libln_norm_host.so"),
                       found("libln_deploy_trt_plugin.so"), found("plugin_host_test"), found("plugin_loader_test"))


@pytest.fixture(scope="session")
def host_lib(native_build):
    if native_build.host is None:
        pytest.skip("libln_norm_host.so was not built (CUDA headers cuda_fp16.h/cuda_bf16.h not found)")
    from ln_deploy import kernels

    return kernels.load_host_library(native_build.host)


@pytest.fixture(scope="session")
def kernels_lib(native_build):
    if native_build.kernels is None:
        pytest.skip("libln_kernels.so was not built: nvcc not found")
    from ln_deploy import kernels

    return kernels.load_library(native_build.kernels)


@pytest.fixture(scope="session")
def cuda_kernels(native_build):
    """libln_kernels.so on a machine with a CUDA GPU, else skip with the reason."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU (torch.cuda.is_available() is False)")
    if native_build.kernels is None:
        pytest.skip("libln_kernels.so was not built: nvcc not found")
    from ln_deploy import kernels

    kernels.load_library(native_build.kernels)
    return kernels
