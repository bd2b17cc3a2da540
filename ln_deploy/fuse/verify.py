"""The safety net: run the original and the fused model in ONNX Runtime on the same inputs.

Three input sets: standard normal; large magnitude (×1e4 for float32, ×30 for float16 so the
original's own arithmetic stays finite); and standard normal with the first batch item constant
(zero variance rows). A ``tensorrt``-target model is run with its plugin nodes expanded back into
standard ops (``reference.expand_plugins``), i.e. with the plugin's documented semantics.
Graph optimizations are off in both sessions: ORT's own fusions must not judge ln_deploy's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

# error allowed, relative to max(1, max |reference|) of each output
TOLERANCE = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-9,
             np.dtype(np.float16): 1e-2}
DEFAULT_TOLERANCE = 2e-2  # bfloat16 and anything else


@dataclass
class Mismatch:
    inputs: str  # which input set
    output: str
    error: float
    tolerance: float

    def __str__(self):
        return f"output {self.output!r} moved by {self.error:.3g} (allowed {self.tolerance:.3g}) on {self.inputs} inputs"


def _session(model: onnx.ModelProto):
    from ..ort import SessionConfig, open_session

    # no ORT rewrites: the fused graph's own nodes are what is verified
    return open_session(model, SessionConfig(level="disable", threads=2))


_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
       "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
       "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def input_sets(sess, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    base, large, const_row = {}, {}, {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 2 for d in i.shape]
        t = _NP.get(i.type)
        if t is None:
            raise ValueError(f"input {i.name!r} has unsupported type {i.type}")
        if np.issubdtype(t, np.floating):
            a = rng.standard_normal(shape).astype(np.float32)
            big = 30.0 if t == np.float16 else 1e4
            c = a.copy()
            if c.ndim:
                c[0] = 1.5
            base[i.name], large[i.name], const_row[i.name] = a.astype(t), (a * big).astype(t), c.astype(t)
        else:
            hi = 2 if "mask" in i.name.lower() or t == np.bool_ else 10
            a = rng.integers(0, hi, shape).astype(t)
            if "mask" in i.name.lower() and a.ndim:
                a[..., 0] = 1  # at least one real token per row
            base[i.name] = large[i.name] = const_row[i.name] = a
    return {"random": base, "large-magnitude": large, "constant-row": const_row}


def _first_line(e: BaseException) -> str:
    import re

    text = str(e).strip()
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)  # ORT's status prefix says nothing
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _open(model: onnx.ModelProto, whose: str):
    """A session, or one line: ONNX Runtime refusing the user's model is bad input (a type error
    such as a float epsilon added to a double variance); refusing ours is ln_deploy's bug."""
    from ..errors import BadInputError, InternalError, LnDeployError

    try:
        return _session(model)
    except LnDeployError:
        raise
    except Exception as e:  # noqa: BLE001 - ORT's own exception types vary by version
        if whose == "original":
            raise BadInputError(f"ONNX Runtime cannot load the input model: {_first_line(e)}") from None
        raise InternalError(f"ONNX Runtime cannot load the fused model ({_first_line(e)})") from None


def _run(sess, names, feeds, whose: str):
    from ..errors import BadInputError, InternalError

    try:
        return sess.run(names, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})
    except Exception as e:  # noqa: BLE001
        if whose == "original":
            raise BadInputError(f"the safety check cannot run the input model on random inputs "
                                f"({_first_line(e)}); --no-check skips it") from None
        raise InternalError(f"the fused model fails in ONNX Runtime where the original runs ({_first_line(e)})") from None


def compare(original: onnx.ModelProto, fused: onnx.ModelProto, seed: int = 0, *,
            float32_compute: bool = False) -> tuple[list[Mismatch], float]:
    """Mismatches beyond rounding, and the largest relative error seen.

    ``float32_compute``: the fused model is meant for an engine without float64 (TensorRT): its
    float64 outputs are held to float32's tolerance. Failures that are not a mismatch are one-line
    errors: BadInputError when ONNX Runtime cannot load or run the original, InternalError when only
    the fused model fails."""
    ref_sess, new_sess = _open(original, "original"), _open(fused, "fused")
    out_names = [o.name for o in ref_sess.get_outputs()]
    mismatches, worst = [], 0.0
    try:
        sets = input_sets(ref_sess, seed)
    except ValueError as e:
        from ..errors import BadInputError

        raise BadInputError(f"the safety check cannot feed the input model: {e}; --no-check skips it") from None
    for label, feeds in sets.items():
        ref = _run(ref_sess, out_names, feeds, "original")
        new = _run(new_sess, out_names, feeds, "fused")
        for name, r, n in zip(out_names, ref, new):
            r, n = np.asarray(r), np.asarray(n)
            if r.shape != n.shape:
                mismatches.append(Mismatch(label, name, float("inf"), 0.0))
                continue
            if not np.issubdtype(r.dtype, np.floating):
                if not np.array_equal(r, n):
                    mismatches.append(Mismatch(label, name, float("inf"), 0.0))
                continue
            rf, nf = r.astype(np.float64), n.astype(np.float64)
            both_nan = np.isnan(rf) & np.isnan(nf)
            same_inf = np.isinf(rf) & (rf == nf)
            ok = both_nan | same_inf
            finite = np.isfinite(rf)
            scale = max(1.0, float(np.max(np.abs(rf[finite])))) if finite.any() else 1.0
            diff = np.where(ok, 0.0, np.abs(rf - nf))
            diff = np.where(np.isnan(diff), np.inf, diff)
            err = float(diff.max()) / scale if diff.size else 0.0
            tol = TOLERANCE.get(np.dtype(np.float32) if float32_compute and r.dtype == np.float64 else r.dtype,
                                DEFAULT_TOLERANCE)
            worst = max(worst, err)
            if err > tol:
                mismatches.append(Mismatch(label, name, err, tol))
    return mismatches, worst
