"""The TensorRT plugin builds against TensorRT headers only (no libnvinfer here), exports the
dynamic-loading entry points, and its classes pass a host test program on the CPU."""

import os
import shutil
import subprocess

import pytest


def _require_plugin(native_build):
    if native_build.kernels is None:
        pytest.skip("nvcc not found: the plugin needs libln_kernels.so")
    if native_build.plugin is None:
        hint = os.environ.get("TENSORRT_INCLUDE_DIR") or os.environ.get("TensorRT_ROOT")
        pytest.skip("TensorRT headers not found (set TENSORRT_INCLUDE_DIR or TensorRT_ROOT)"
                    + (f"; looked in {hint}" if hint else ""))


def test_plugin_exports_v3_entry_points(native_build):
    _require_plugin(native_build)
    if shutil.which("nm") is None:
        pytest.skip("nm not found")
    out = subprocess.run(["nm", "-D", str(native_build.plugin)], capture_output=True, text=True, check=True).stdout
    defined = {line.split()[-1] for line in out.splitlines() if " T " in line}
    assert {"getCreators", "setLoggerFinder"} <= defined
    undefined = {line.split()[-1] for line in out.splitlines() if line.strip().startswith("U ")}
    # static registration needs the loading process's libnvinfer
    assert "getPluginRegistry" in undefined or "getPluginRegistry" in defined or "libnvinfer" in out


def test_plugin_classes_on_the_cpu(native_build):
    _require_plugin(native_build)
    proc = subprocess.run([str(native_build.plugin_test)], capture_output=True, text=True, timeout=60)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("PASSED")
