"""ctypes wrapper of ln_deploy's fused normalization kernels (``libln_kernels.so``).

The library is built by ``scripts/build_plugins.sh`` into ``plugins/build/`` and loaded lazily:
importing this module imports neither torch nor CUDA. Every launcher returns a code; a non-zero
code becomes a :class:`KernelError` naming the CUDA error (``cudaErrorNoDevice``...) or the
argument check (``LN_ERR_HIDDEN_RANGE``...) that failed.

Also here: the host build of the same numerics (``libln_norm_host.so``, used by the CPU tests as
a bit-exact model of the device), the pure strategy choice, the batch-invariance check the
parity checker calls on a GPU, and the ptxas register/spill report of a build.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BadInputError, LnDeployError, MissingDependencyError  # noqa: F401 (re-exported)

__all__ = [
    "KernelError", "load_library", "load_host_library", "library_path", "plugin_library", "PLUGIN_LIBRARY",
    "select_strategy", "workspace_bytes",
    "norm", "host_norm", "bitwise_batch_invariance", "ptxas_report", "format_ptxas_table",
    "DTYPES", "KINDS", "KERNELS", "DEFAULT_SM_COUNT",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUILD_DIR = REPO_ROOT / "plugins" / "build"
DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2}  # LN_DTYPE_*
KINDS = {"layer_norm": 0, "rms_norm": 1}  # LN_KIND_* == plugin_spec.KIND_*
KERNELS = {0: "register", 1: "multipass", 2: "split_row"}  # LN_KERNEL_*
DEFAULT_SM_COUNT = 132  # H100/H200; only the opt-in split mode looks at it
ABI_VERSION = 1


class KernelError(LnDeployError):
    """A launcher returned an error code (a CUDA error or a rejected argument)."""

    exit_code = 1

    def __init__(self, where: str, code: int, name: str, message: str):
        self.code, self.name = code, name
        super().__init__(f"{where}: {name} ({code}): {message}")


class _Strategy(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in (
        "kernel", "threads_per_row", "vec", "iters", "splits", "chunks_per_split", "rows_per_block", "block_threads")]


class _NormArgs(ctypes.Structure):
    _fields_ = [
        ("x", ctypes.c_void_p), ("residual", ctypes.c_void_p), ("scale", ctypes.c_void_p),
        ("bias", ctypes.c_void_p), ("y", ctypes.c_void_p), ("sum_out", ctypes.c_void_p),
        ("rows", ctypes.c_int64), ("hidden", ctypes.c_int64), ("epsilon", ctypes.c_float),
        ("kind", ctypes.c_int32), ("dtype", ctypes.c_int32), ("scale_dtype", ctypes.c_int32),
        ("batch_invariant", ctypes.c_int32), ("workspace", ctypes.c_void_p), ("workspace_bytes", ctypes.c_size_t),
    ]


PLUGIN_LIBRARY = "libln_deploy_trt_plugin.so"


def _install_dirs() -> list[Path]:
    """Where ``cmake --install plugins/build --prefix P`` puts the libraries (P/lib) for the usual P:
    this Python environment's prefix, then /usr/local."""
    import sys

    dirs = []
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix, "/usr/local")):
        dirs += [Path(prefix) / "lib", Path(prefix) / "lib64"]
    return dirs


def library_path(name: str = "libln_kernels.so") -> Path | None:
    """Where a native library is: ``$LN_DEPLOY_KERNELS_DIR`` (or ``$LN_DEPLOY_KERNELS_LIB`` for
    libln_kernels.so itself), else plugins/build/ of this checkout, else an installed copy
    (``<prefix>/lib`` of this environment or /usr/local). None when absent."""
    if name == "libln_kernels.so" and os.environ.get("LN_DEPLOY_KERNELS_LIB"):
        p = Path(os.environ["LN_DEPLOY_KERNELS_LIB"])
        return p if p.is_file() else None
    for d in (os.environ.get("LN_DEPLOY_KERNELS_DIR"), DEFAULT_BUILD_DIR, *_install_dirs()):
        if d and (Path(d) / name).is_file():
            return Path(d) / name
    return None


def plugin_library() -> Path | None:
    """ln_deploy's TensorRT plugin library (one self-contained file), found like :func:`library_path`:
    ``$LN_DEPLOY_PLUGIN_LIB`` (the file itself), ``$LN_DEPLOY_KERNELS_DIR``, plugins/build/ of this
    checkout, then an installed copy. None when none is there. ``build``, ``check`` and ``package``
    use it when the model needs the plugin and none was passed."""
    if os.environ.get("LN_DEPLOY_PLUGIN_LIB"):
        p = Path(os.environ["LN_DEPLOY_PLUGIN_LIB"])
        return p if p.is_file() else None
    return library_path(PLUGIN_LIBRARY)


_LIBS: dict[str, ctypes.CDLL] = {}
# name -> the handle found by library_path(): after the first call a launch costs no file-system
# lookup (the search is ~100 us of Python, more than a small kernel). Set the environment first.
_DEFAULT_LIBS: dict[str, ctypes.CDLL] = {}


def _load(name: str, path: str | Path | None, setup) -> ctypes.CDLL:
    if path is None and name in _DEFAULT_LIBS:
        return _DEFAULT_LIBS[name]
    p = Path(path) if path else library_path(name)
    if p is None or not p.is_file():
        raise MissingDependencyError(name, "build it with scripts/build_plugins.sh (needs nvcc; see docs/kernels.md)")
    key = str(p.resolve())
    if key not in _LIBS:
        try:
            lib = ctypes.CDLL(key)
        except OSError as e:
            raise MissingDependencyError(name, f"{key} did not load: {e}") from None
        setup(lib)
        _LIBS[key] = lib
    if path is None:
        _DEFAULT_LIBS[name] = _LIBS[key]
    return _LIBS[key]


def _setup_kernels(lib: ctypes.CDLL) -> None:
    lib.ln_abi_version.restype = ctypes.c_int
    if lib.ln_abi_version() != ABI_VERSION:
        raise MissingDependencyError("a matching libln_kernels.so", "rebuild with scripts/build_plugins.sh")
    lib.ln_select_strategy.argtypes = [ctypes.c_int64, ctypes.c_int32, ctypes.c_int64, ctypes.c_int32,
                                       ctypes.c_int32, ctypes.POINTER(_Strategy)]
    lib.ln_workspace_bytes.argtypes = [ctypes.c_int32]
    lib.ln_workspace_bytes.restype = ctypes.c_size_t
    lib.ln_norm_forward.argtypes = [ctypes.POINTER(_NormArgs), ctypes.c_void_p]
    lib.ln_error_name.restype = ctypes.c_char_p
    lib.ln_error_string.restype = ctypes.c_char_p


def _setup_host(lib: ctypes.CDLL) -> None:
    lib.ln_host_select_strategy.argtypes = [ctypes.c_int64, ctypes.c_int32, ctypes.c_int64, ctypes.c_int32,
                                            ctypes.c_int32, ctypes.POINTER(_Strategy)]
    lib.ln_host_norm_forward.argtypes = [ctypes.POINTER(_NormArgs), ctypes.c_int32]


def load_library(path: str | Path | None = None) -> ctypes.CDLL:
    """libln_kernels.so (the CUDA kernels); MissingDependencyError when it was not built."""
    return _load("libln_kernels.so", path, _setup_kernels)


def load_host_library(path: str | Path | None = None) -> ctypes.CDLL:
    """libln_norm_host.so: the same numerics compiled for the CPU (bit-exact model of the device)."""
    return _load("libln_norm_host.so", path, _setup_host)


_ERROR_NAMES = {-1: "LN_ERR_INVALID_ARGUMENT", -2: "LN_ERR_UNSUPPORTED_DTYPE", -3: "LN_ERR_HIDDEN_RANGE",
                -4: "LN_ERR_WORKSPACE", -5: "LN_ERR_NO_DEVICE"}


def _check(rc: int, where: str, lib: ctypes.CDLL | None = None) -> None:
    if rc == 0:
        return
    if lib is not None and hasattr(lib, "ln_error_name"):
        raise KernelError(where, rc, lib.ln_error_name(rc).decode(), lib.ln_error_string(rc).decode())
    raise KernelError(where, rc, _ERROR_NAMES.get(rc, "LN_ERR_UNKNOWN"), "see plugins/common/lnKernels.h")


def _dtype_code(dtype: Any) -> int:
    name = str(dtype).replace("torch.", "")
    if name not in DTYPES:
        raise BadInputError(f"unsupported dtype {dtype}: the kernels take float32, float16 or bfloat16")
    return DTYPES[name]


def select_strategy(hidden: int, dtype: Any, rows: int, batch_invariant: bool = True,
                    sm_count: int = DEFAULT_SM_COUNT, *, host: bool = False) -> dict:
    """The launch strategy the kernels use (a pure function; no GPU needed).

    In the default mode the result depends only on (hidden, dtype): that is what makes a row's
    bits independent of its batch. ``host=True`` asks libln_norm_host.so instead of libln_kernels.so.
    """
    lib = load_host_library() if host else load_library()
    fn = lib.ln_host_select_strategy if host else lib.ln_select_strategy
    s = _Strategy()
    _check(fn(int(hidden), _dtype_code(dtype), int(rows), int(bool(batch_invariant)), int(sm_count),
              ctypes.byref(s)), "ln_select_strategy", None if host else lib)
    out = {name: getattr(s, name) for name, _ in _Strategy._fields_}
    out["kernel"] = KERNELS[s.kernel]
    return out


def workspace_bytes(batch_invariant: bool = True) -> int:
    return int(load_library().ln_workspace_bytes(int(bool(batch_invariant))))


def _norm_args(x, scale, bias, residual, y, sum_out, hidden: int, kind: str, eps: float,
               batch_invariant: bool, workspace=None) -> _NormArgs:
    if kind not in KINDS:
        raise BadInputError(f"kind must be one of {sorted(KINDS)}, not {kind!r}")
    a = _NormArgs()
    a.x, a.scale, a.y = x.data_ptr(), scale.data_ptr(), y.data_ptr()
    a.bias = bias.data_ptr() if bias is not None else None
    a.residual = residual.data_ptr() if residual is not None else None
    a.sum_out = sum_out.data_ptr() if sum_out is not None else None
    a.rows, a.hidden = x.numel() // hidden if hidden else 0, hidden
    a.epsilon, a.kind = float(eps), KINDS[kind]
    a.dtype, a.scale_dtype = _dtype_code(x.dtype), _dtype_code(scale.dtype)
    a.batch_invariant = int(bool(batch_invariant))
    if workspace is not None:
        a.workspace, a.workspace_bytes = workspace.data_ptr(), workspace.numel()
    return a


def _byte_span(t) -> tuple[int, int]:
    start = t.data_ptr()
    return start, start + t.numel() * t.element_size()


def _check_operands(x, scale, bias, residual, device_kind: str, out=None, sum_out=None,
                    return_sum: bool = False) -> int:
    """Every check the launcher cannot make on raw pointers: device, contiguity, shapes and dtypes
    of inputs and outputs, and no output overlapping any operand (the kernels read x, residual,
    scale and bias while they write y and the sum). Raises BadInputError naming the tensor."""
    hidden = scale.numel()
    if hidden == 0 or x.numel() % hidden:
        raise BadInputError(f"x ({tuple(x.shape)}) is not a whole number of rows of scale's size {hidden}")
    named = (("x", x), ("scale", scale), ("bias", bias), ("residual", residual), ("out", out), ("sum_out", sum_out))
    for name, t in named:
        if t is None:
            continue
        if t.device.type != device_kind or (name != "x" and t.device != x.device):
            raise BadInputError(f"{name} is on {t.device}, expected a {device_kind} tensor on x's device {x.device}")
        if not t.is_contiguous():
            raise BadInputError(f"{name} must be contiguous")
    if scale.dtype != x.dtype and str(scale.dtype) != "torch.float32":
        raise BadInputError(f"scale must be x's dtype ({x.dtype}) or float32, got {scale.dtype}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise BadInputError("residual must have x's shape and dtype")
    if bias is not None and (bias.dtype != scale.dtype or bias.numel() != hidden):
        raise BadInputError("bias must have scale's dtype and size")
    if sum_out is not None and not return_sum:
        raise BadInputError("sum_out is given but return_sum is False: the sum would not be written")
    for name, t in (("out", out), ("sum_out", sum_out)):
        if t is not None and (t.shape != x.shape or t.dtype != x.dtype):
            raise BadInputError(f"{name} must have x's shape {tuple(x.shape)} and dtype {x.dtype}, "
                                f"got {tuple(t.shape)} {t.dtype}")
    written = [(n, t) for n, t in (("out", out), ("sum_out", sum_out)) if t is not None]
    operands = [(n, t) for n, t in named[:4] if t is not None] + written
    for wname, w in written:
        w0, w1 = _byte_span(w)
        for oname, o in operands:
            o0, o1 = _byte_span(o)
            if oname != wname and w0 < o1 and o0 < w1:
                raise BadInputError(f"{wname} overlaps {oname} in memory: the kernels read {oname} while writing "
                                    f"{wname} (and write each output once); pass a separate tensor")
    return hidden


def norm(x, scale, bias=None, *, residual=None, kind: str = "layer_norm", eps: float = 1e-5,
         return_sum: bool = False, batch_invariant: bool = True, out=None, sum_out=None):
    """Normalize the rows of CUDA tensor ``x`` (last dims of ``scale.numel()`` elements).

    ``residual``: normalize ``s = x + residual`` (rounded to x's dtype, as PyTorch's ``x + r``);
    ``return_sum``: also return ``s``. ``batch_invariant=False`` allows the row-count-dependent
    split kernel for few long rows (faster, but a row's bits then depend on the batch size).
    ``out``/``sum_out``: write y / s there (x's shape, dtype and device, contiguous, overlapping
    no operand: checked, BadInputError naming the tensor otherwise).
    Runs on the current stream of x's device. Returns ``y`` or ``(y, s)``.
    """
    import torch

    if not torch.cuda.is_available():
        raise MissingDependencyError("a CUDA GPU", "ln_deploy.kernels.norm runs the CUDA kernels")
    if return_sum and residual is None:
        raise BadInputError("return_sum needs a residual")
    hidden = _check_operands(x, scale, bias, residual, "cuda", out, sum_out, return_sum)
    lib = load_library()
    y = out if out is not None else torch.empty_like(x)
    s = None
    if return_sum:
        s = sum_out if sum_out is not None else torch.empty_like(x)
    ws = None
    if not batch_invariant:
        ws = torch.empty(int(lib.ln_workspace_bytes(0)), dtype=torch.uint8, device=x.device)
    a = _norm_args(x, scale, bias, residual, y, s, hidden, kind, eps, batch_invariant, ws)
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream(x.device).cuda_stream
        _check(lib.ln_norm_forward(ctypes.byref(a), ctypes.c_void_p(stream)), "ln_norm_forward", lib)
    return (y, s) if return_sum else y


def host_norm(x, scale, bias=None, *, residual=None, kind: str = "layer_norm", eps: float = 1e-5,
              return_sum: bool = False, batch_invariant: bool = True, sm_count: int = DEFAULT_SM_COUNT,
              out=None, sum_out=None):
    """The device computation emulated bit for bit on the CPU (CPU torch tensors in, out); the
    same operand checks as :func:`norm`."""
    import torch

    if return_sum and residual is None:
        raise BadInputError("return_sum needs a residual")
    hidden = _check_operands(x, scale, bias, residual, "cpu", out, sum_out, return_sum)
    lib = load_host_library()
    y = out.fill_(float("nan")) if out is not None else torch.full_like(x, float("nan"))
    s = None
    if return_sum:
        s = sum_out.fill_(float("nan")) if sum_out is not None else torch.full_like(x, float("nan"))
    a = _norm_args(x, scale, bias, residual, y, s, hidden, kind, eps, batch_invariant)
    _check(lib.ln_host_norm_forward(ctypes.byref(a), int(sm_count)), "ln_host_norm_forward")
    return (y, s) if return_sum else y


def _differing_bits(a, b) -> tuple[int, int]:
    """(elements whose bits differ, total differing bits) between two same-dtype tensors."""
    import torch

    as_int = {2: torch.int16, 4: torch.int32}[a.element_size()]
    xor = torch.bitwise_xor(a.contiguous().view(as_int), b.contiguous().view(as_int))
    if as_int == torch.int16:
        xor = xor.to(torch.int32) & 0xFFFF
    bits = torch.zeros_like(xor, dtype=torch.int64)
    v = xor.to(torch.int64) & 0xFFFFFFFF
    while bool(v.any()):
        bits += v & 1
        v = v >> 1
    return int((xor != 0).sum()), int(bits.sum())


def bitwise_batch_invariance(kind: str, hidden: int, dtype: Any, batch_sizes=(3, 1000, 100000), *,
                             residual: bool = False, bias: bool = True, batch_invariant: bool = True,
                             eps: float = 1e-5, seed: int = 0, device: str = "cuda",
                             max_bytes: int = 64 << 30) -> dict:
    """Is a row's output bitwise the same alone and inside batches? (needs a GPU)

    A random sample row is normalized alone, then placed at the first, middle and last position
    of a random batch of each size; differing elements and bits of y (and of the residual sum)
    are counted. When x, y, residual and sum of the largest batch would exceed ``max_bytes``,
    the residual is x itself, alone and in the batch (recorded as ``residual_aliases_x``).
    Returns ``{"invariant": bool, "differing_bits": int, "cases": [...], ...}``.
    """
    import torch

    if not torch.cuda.is_available():
        raise MissingDependencyError("a CUDA GPU", "the batch-invariance check runs the CUDA kernels")
    tdtype = getattr(torch, str(dtype).replace("torch.", ""))
    g = torch.Generator(device=device).manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g, device=device, dtype=torch.float32).to(tdtype)  # noqa: E731
    # x, y, residual and sum of the largest batch must fit in max_bytes, else residual = x
    largest = max(batch_sizes) * hidden * torch.finfo(tdtype).bits // 8
    alias = residual and largest * 4 > max_bytes
    scale = randn(hidden)
    b = randn(hidden) if bias else None
    sample = randn(1, hidden)
    sample_r = (sample if alias else randn(1, hidden)) if residual else None
    run = lambda x, r: norm(x, scale, b, residual=r, kind=kind, eps=eps, return_sum=residual,  # noqa: E731
                            batch_invariant=batch_invariant)
    alone_y, alone_s = run(sample, sample_r) if residual else (run(sample, None), None)
    cases, total_bits = [], 0
    for rows in batch_sizes:
        x = randn(rows, hidden)
        r = (x if alias else randn(rows, hidden)) if residual else None
        positions = {"first": 0, "middle": rows // 2, "last": rows - 1}
        for p in positions.values():
            x[p] = sample[0]
            if residual and not alias:
                r[p] = sample_r[0]
        y, s = run(x, r) if residual else (run(x, None), None)
        for pos, p in positions.items():
            elems, bits = _differing_bits(y[p], alone_y[0])
            if s is not None:
                e2, b2 = _differing_bits(s[p], alone_s[0])
                elems, bits = elems + e2, bits + b2
            total_bits += bits
            cases.append({"batch": rows, "position": pos, "row": p, "differing_elements": elems,
                          "differing_bits": bits})
        del x, r, y, s
    return {"kind": kind, "hidden": hidden, "dtype": str(tdtype).replace("torch.", ""), "residual": residual,
            "residual_aliases_x": bool(alias), "bias": bias, "batch_invariant": batch_invariant, "cases": cases, "differing_bits": total_bits,
            "invariant": total_bits == 0}


# ---- ptxas report ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class PtxasEntry:
    kernel: str  # demangled-ish short name with template arguments
    arch: str
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    smem: int
    source: str


_FUNC = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def _short_kernel_name(mangled: str) -> str:
    """normRegisterKernel<half,float,4,vec16> from its mangled name (only ln_deploy's own kernels)."""
    m = re.search(r"kernels\d+(\w+?)I(.*)EEvNS0_12KernelParamsE", mangled)
    if not m:
        return mangled
    names = {"f": "float", "6__half": "half", "13__nv_bfloat16": "bf16"}
    args = []
    for tok in re.findall(r"Li(\d+)E|Lb([01])E|(13__nv_bfloat16|6__half|f|S\d*_)", m.group(2) + "E"):
        num, flag, typ = tok
        if flag:
            args.append("vec16" if flag == "1" else "anyalign")
        else:
            args.append(num if num else names.get(typ, args[0] if args else typ))
    return f"{m.group(1)}<{','.join(args)}>"


def ptxas_report(build_dir: str | Path = DEFAULT_BUILD_DIR) -> list[PtxasEntry]:
    """Registers/spills of every kernel from the ``*.ptxas.log`` files a build leaves behind."""
    entries = []
    root = Path(build_dir)
    # the kernels' object library (a build folder of an older layout may still hold stale logs)
    if (root / "CMakeFiles" / "ln_kernels_obj.dir").is_dir():
        root = root / "CMakeFiles" / "ln_kernels_obj.dir"
    for log in sorted(root.rglob("*.ptxas.log")):
        current = None
        spill = None
        for line in log.read_text(errors="replace").splitlines():
            if m := _FUNC.search(line):
                current, spill = (m.group(1), m.group(2)), None
            elif current and (m := _SPILL.search(line)):
                spill = tuple(int(v) for v in m.groups())
            elif current and spill and (m := _USED.search(line)):
                entries.append(PtxasEntry(_short_kernel_name(current[0]), current[1], int(m.group(1)), spill[1],
                                          spill[2], spill[0], int(m.group(2) or 0), log.name))
                current = spill = None
    return entries


def format_ptxas_table(entries: list[PtxasEntry]) -> str:
    rows = [("kernel", "arch", "regs", "spill st", "spill ld", "stack", "smem")]
    rows += [(e.kernel, e.arch, str(e.registers), str(e.spill_stores), str(e.spill_loads), str(e.stack), str(e.smem))
             for e in sorted(entries, key=lambda e: (e.kernel, e.arch))]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


if __name__ == "__main__":
    import sys

    if len(sys.argv) >= 2 and sys.argv[1] == "--ptxas-report":
        print(format_ptxas_table(ptxas_report(sys.argv[2] if len(sys.argv) > 2 else DEFAULT_BUILD_DIR)))
    else:
        print("usage: python -m ln_deploy.kernels --ptxas-report [build_dir]", file=sys.stderr)
        sys.exit(2)
