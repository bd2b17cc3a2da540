"""The TensorRT plugin is one self-contained library built against TensorRT headers only: it exports
exactly the entry points of its version script, references nothing of TensorRT, depends on no build
folder, installs with `cmake --install`, and its classes pass a host test program on the CPU."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ln_deploy import kernels

MAP = Path(__file__).resolve().parents[2] / "plugins" / "lnDeployNormPlugin" / "lnDeployNormPlugin.map"
DOCUMENTED = {"getCreators", "setLoggerFinder"}  # plugins/lnDeployNormPlugin/README.md


def _require_plugin(native_build):
    if native_build.kernels is None:
        pytest.skip("nvcc not found: the plugin's kernels cannot be built")
    if native_build.plugin is None:
        hint = os.environ.get("TENSORRT_INCLUDE_DIR") or os.environ.get("TensorRT_ROOT")
        pytest.skip("TensorRT headers not found (set TENSORRT_INCLUDE_DIR or TensorRT_ROOT)"
                    + (f"; looked in {hint}" if hint else ""))


def _tool(name):
    if shutil.which(name) is None:
        pytest.skip(f"{name} not found (binutils)")
    return name


def _dynamic_symbols(lib, *flags) -> set[str]:
    out = subprocess.run([_tool("nm"), "-D", *flags, str(lib)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}


def _dynamic_section(lib) -> list[tuple[str, str]]:
    out = subprocess.run([_tool("readelf"), "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\((\w+)\)\s+(.*)", out)


def test_version_script_is_the_documented_entry_points():
    body = MAP.read_text()
    globals_ = re.search(r"global:(.*?)local:", body, re.S).group(1)
    assert set(re.findall(r"(\w+);", globals_)) == DOCUMENTED


def test_plugin_exports_exactly_the_entry_points(native_build):
    _require_plugin(native_build)
    assert _dynamic_symbols(native_build.plugin, "--defined-only") == DOCUMENTED
    undefined = _dynamic_symbols(native_build.plugin, "--undefined-only")
    # nothing of TensorRT (getPluginRegistry, getLogger...): it loads where libnvinfer is not global
    trt = {s for s in undefined if "nvinfer1" in s or s.endswith("_INTERNAL")
           or s in ("getPluginRegistry", "getLogger", "getInferLibVersion")}
    assert not trt, trt
    assert "ln_norm_forward" in _dynamic_symbols(native_build.kernels, "--defined-only")  # ctypes keeps its ABI


def test_plugin_is_self_contained(native_build):
    _require_plugin(native_build)
    entries = _dynamic_section(native_build.plugin)
    needed = [re.search(r"\[(.*)\]", v).group(1) for tag, v in entries if tag == "NEEDED"]
    runpath = [re.search(r"\[(.*)\]", v).group(1) for tag, v in entries if tag == "RUNPATH"]
    print("NEEDED", needed, "RUNPATH", runpath)
    assert not [v for tag, v in entries if tag == "RPATH"], "DT_RPATH set (want RUNPATH $ORIGIN only)"
    assert runpath == ["$ORIGIN"]
    assert not [n for n in needed if "/" in n], needed  # no absolute or relative path dependency
    assert not [n for n in needed if "ln_kernels" in n or "nvinfer" in n or "cudart" in n], needed
    build_dir = str(native_build.dir)
    assert not [v for _, v in entries if build_dir in v]


def test_cmake_install_puts_a_working_copy_in_prefix(native_build, tmp_path, monkeypatch):
    _require_plugin(native_build)
    prefix = tmp_path / "prefix"
    proc = subprocess.run(["cmake", "--install", str(native_build.dir), "--prefix", str(prefix)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lib = prefix / "lib" / kernels.PLUGIN_LIBRARY
    assert lib.is_file() and (prefix / "lib" / "libln_kernels.so").is_file()
    assert (prefix / "include" / "ln_deploy" / "lnKernels.h").is_file()
    assert _dynamic_symbols(lib, "--defined-only") == DOCUMENTED
    # plugin_library() finds an installed copy through the directory variable, a file through its own
    monkeypatch.setenv("LN_DEPLOY_KERNELS_DIR", str(prefix / "lib"))
    assert kernels.plugin_library() == lib
    monkeypatch.setenv("LN_DEPLOY_PLUGIN_LIB", str(lib))
    assert kernels.plugin_library() == lib
    monkeypatch.setenv("LN_DEPLOY_PLUGIN_LIB", str(tmp_path / "missing.so"))
    assert kernels.plugin_library() is None


def test_plugin_classes_on_the_cpu(native_build):
    _require_plugin(native_build)
    proc = subprocess.run([str(native_build.plugin_test)], capture_output=True, text=True, timeout=60)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("PASSED")
