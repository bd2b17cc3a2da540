"""CI builds the kernel library with nvcc for every default architecture and checks that no
kernel spills registers (ptxas -v, kept per object as *.ptxas.log by plugins/cmake/ptxas_log.sh)."""

import shutil
import subprocess

import pytest

from ln_deploy import kernels

DEFAULT_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")  # CMakeLists.txt default

# (T, W) pairs built: x/y type, scale/bias type
TYPE_PAIRS = ["float,float", "half,half", "half,float", "bf16,bf16", "bf16,float"]


REGISTER_VARIANTS = [(1, "anyalign"), (1, "vec16"), (2, "anyalign"), (2, "vec16"), (4, "vec16")]
BUDGET = 64  # registers per thread, every kernel (normCore.h kRegisterBudget): >= 50% occupancy


def test_kernels_build_within_the_register_budget(native_build):
    """ptxas -v of the default build: every kernel of every architecture is reported, none spills,
    none uses a stack frame, none uses more than 64 registers."""
    if native_build.kernels is None:
        pytest.skip("nvcc not found: libln_kernels.so is not built")
    entries = kernels.ptxas_report(native_build.dir)
    print(f"\nnative build: {native_build.seconds:.1f} s (incremental when the build dir was warm)")
    print(kernels.format_ptxas_table(entries))
    names = {(e.kernel, e.arch) for e in entries}
    expected = {(f"normRegisterKernel<{p},{i},{v}>", a) for p in TYPE_PAIRS for i, v in REGISTER_VARIANTS
                for a in DEFAULT_ARCHS}
    expected |= {(f"{k}<{p}>", a) for k in ("normStreamKernel", "normSplitStatsKernel", "normSplitApplyKernel")
                 for p in TYPE_PAIRS for a in DEFAULT_ARCHS}
    assert expected <= names, f"missing from the ptxas report: {sorted(expected - names)[:8]}"
    spilling = [e for e in entries if e.spill_stores or e.spill_loads or e.stack]
    assert not spilling, "kernels spill:\n" + kernels.format_ptxas_table(spilling)
    over = [e for e in entries if e.registers > BUDGET]
    assert not over, f"kernels above {BUDGET} registers:\n" + kernels.format_ptxas_table(over)


def test_kernel_library_exports_the_c_abi(native_build):
    if native_build.kernels is None:
        pytest.skip("nvcc not found: libln_kernels.so is not built")
    if shutil.which("nm") is None:
        pytest.skip("nm not found")
    out = subprocess.run(["nm", "-D", "--defined-only", str(native_build.kernels)], capture_output=True,
                         text=True, check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if " T " in line}
    assert {"ln_abi_version", "ln_select_strategy", "ln_workspace_bytes", "ln_norm_forward", "ln_error_name",
            "ln_error_string"} <= exported
    # hidden visibility: nothing else (templates, cudart) leaks from the library
    assert not [s for s in exported if s.startswith("_ZN9ln_deploy")]


def test_launcher_errors_become_python_exceptions(kernels_lib):
    # no GPU needed: argument checks come before any CUDA call; on a CPU-only machine a valid
    # call fails in cudaGetDevice, and that CUDA error is named too
    import ctypes

    a = kernels._NormArgs()
    rc = kernels_lib.ln_norm_forward(ctypes.byref(a), None)
    with pytest.raises(kernels.KernelError, match="LN_ERR_INVALID_ARGUMENT"):
        kernels._check(rc, "ln_norm_forward", kernels_lib)
    a.x = a.scale = a.y = 16
    a.rows, a.hidden, a.dtype, a.scale_dtype = 1, 0, 1, 1
    assert kernels_lib.ln_norm_forward(ctypes.byref(a), None) == -3
    a.hidden, a.scale_dtype = 8, 2  # bf16 scale for fp16 x
    assert kernels_lib.ln_norm_forward(ctypes.byref(a), None) == -2
    assert kernels_lib.ln_error_name(100).decode() == "cudaErrorNoDevice"
