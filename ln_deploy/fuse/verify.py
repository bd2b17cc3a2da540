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


FALLBACK_SIZES = (2, 8, 32, 64)  # dynamic sizes tried in turn when the model records none it accepts


def _recorded(model) -> tuple[dict, dict]:
    """The example shapes and the dynamic-axis ranges export recorded in the model (empty if none)."""
    import json

    from ..onnx_graph import META_DYNAMIC_RANGES, META_EXAMPLE_SHAPES  # written by export

    meta = {p.key: p.value for p in getattr(model, "metadata_props", [])}
    out = []
    for key in (META_EXAMPLE_SHAPES, META_DYNAMIC_RANGES):
        try:
            v = json.loads(meta.get(key, "{}"))
        except ValueError:
            v = {}
        out.append(v if isinstance(v, dict) else {})
    return out[0], out[1]


def feed_shapes(sess, model=None, fallback: int = 2) -> dict[str, list[int]]:
    """One concrete shape per input. A dynamic dimension takes the size of the example export recorded
    (the SPEC's example inputs: a size the model is known to accept; a convnet stem refuses 2x2), else
    the recorded minimum of its axis when that is above ``fallback``, else ``fallback``."""
    examples, ranges = _recorded(model) if model is not None else ({}, {})
    shapes = {}
    for i in sess.get_inputs():
        ex = examples.get(i.name)
        ok = (isinstance(ex, list) and len(ex) == len(i.shape)
              and all(isinstance(e, int) and e > 0 for e in ex)
              and all(not (isinstance(d, int) and d > 0) or d == e for d, e in zip(i.shape, ex)))
        shape = []
        for k, d in enumerate(i.shape):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif ok:
                shape.append(ex[k])
            else:
                r = ranges.get(d) if isinstance(d, str) else None
                lo = r[0] if isinstance(r, list) and r and isinstance(r[0], int) else None
                hi = r[1] if isinstance(r, list) and len(r) > 1 and isinstance(r[1], int) else None
                size = max(fallback, lo or 0)
                shape.append(min(size, hi) if hi else size)
        shapes[i.name] = shape
    return shapes


def input_sets(sess, seed: int = 0, shapes: dict[str, list[int]] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """The three input sets at ``shapes`` (``feed_shapes``; default: every dynamic size 2)."""
    rng = np.random.default_rng(seed)
    base, large, const_row = {}, {}, {}
    shapes = shapes if shapes is not None else feed_shapes(sess)
    for i in sess.get_inputs():
        shape = shapes[i.name]
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
                                f"({_first_line(e)}); --no-verify skips it") from None
        raise InternalError(f"the fused model fails in ONNX Runtime where the original runs ({_first_line(e)})") from None


def _accepted_sets(original, ref_sess, out_names, seed):
    """Input sets at shapes the original model runs on, and its outputs on the "random" set: the
    recorded example shapes (or recorded minima), then, for a model that records none it accepts,
    each of FALLBACK_SIZES for every dynamic dimension. The original refusing them all is bad input."""
    from ..errors import BadInputError

    tried, first_error = [], None
    candidates = [feed_shapes(ref_sess, original)] + [feed_shapes(ref_sess, original, n) for n in FALLBACK_SIZES]
    for shapes in candidates:
        if shapes in tried:
            continue
        tried.append(shapes)
        try:
            sets = input_sets(ref_sess, seed, shapes)
        except ValueError as e:
            raise BadInputError(f"the safety check cannot feed the input model: {e}; --no-verify skips it") from None
        try:
            return sets, _run(ref_sess, out_names, sets["random"], "original")
        except BadInputError as e:
            first_error = first_error or e
    raise first_error


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
    sets, ref_first = _accepted_sets(original, ref_sess, out_names, seed)
    for label, feeds in sets.items():
        ref = ref_first if label == "random" else _run(ref_sess, out_names, feeds, "original")
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
