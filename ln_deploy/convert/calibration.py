"""Calibration inputs (a user's .npz, a SPEC's example inputs, or seeded random ones) and ORT runs that
expose intermediate values."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from ..errors import BadInputError
from ..onnx_graph import BFLOAT16, FLOAT, FLOAT16

_NP = {1: "float32", 10: "float16", 11: "float64", 6: "int32", 7: "int64", 9: "bool", 2: "uint8", 3: "int8"}
DEFAULT_DIM = {"batch": 2}
DEFAULT_OTHER_DIM = 8
MAX_RANDOM_ELEMENTS = 1 << 27  # per input: 1 GiB while NumPy draws it in float64


def _np_dtype(elem_type: int):
    import numpy as np

    if elem_type == BFLOAT16:
        import ml_dtypes

        return ml_dtypes.bfloat16
    if elem_type not in _NP:
        raise BadInputError(f"input element type {elem_type} is not supported for calibration")
    return np.dtype(_NP[elem_type])


def graph_inputs(model) -> list:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def load_calibration(calibration, model, *, spec: str | None = None, seed: int = 0, scale: float = 1.0) -> dict:
    """Feeds for ``model``: ``calibration`` (path to .npz or dict) wins, then ``spec``'s example inputs,
    then seeded standard-normal inputs with symbolic dims from ``DEFAULT_DIM`` (8 otherwise).
    ``scale`` multiplies float inputs (large-magnitude calibration: scale=1000)."""
    import numpy as np

    ins = graph_inputs(model)
    names = [i.name for i in ins]
    if calibration is not None and spec is not None:
        raise BadInputError("give calibration inputs or a spec, not both")
    if isinstance(calibration, (str, os.PathLike)):
        feeds = read_npz(calibration)
        where = str(calibration)
    elif isinstance(calibration, dict):
        feeds, where = {k: np.asarray(v) for k, v in calibration.items()}, "calibration dict"
    elif calibration is None and spec is not None:
        from ..spec import load_spec

        loaded = load_spec(spec)
        arrays = [t.detach().cpu().numpy() for t in loaded.example_inputs]
        if len(arrays) != len(names):
            raise BadInputError(f"{spec} has {len(arrays)} example inputs but the model has {len(names)} inputs")
        feeds, where = dict(zip(names, arrays)), f"{spec} example inputs"
    elif calibration is None:
        rng = np.random.default_rng(seed)
        sizes = _symbolic_sizes(model)
        feeds = {}
        for i in ins:
            shape = [d.dim_value if d.dim_value > 0 else sizes.get(d.dim_param, DEFAULT_DIM.get(d.dim_param, DEFAULT_OTHER_DIM))
                     for d in i.type.tensor_type.shape.dim]
            if any(d.HasField("dim_value") and d.dim_value == 0 for d in i.type.tensor_type.shape.dim):
                raise BadInputError(f"input {i.name!r} has a static size 0: random calibration data would be empty "
                                    "and measure nothing")
            if int(np.prod(shape, dtype=np.float64)) > MAX_RANDOM_ELEMENTS:
                raise BadInputError(f"input {i.name!r} of shape {shape} is too large for random calibration data "
                                    f"(over {MAX_RANDOM_ELEMENTS} elements): give calibration inputs (.npz)")
            t = i.type.tensor_type.elem_type
            if t in (FLOAT, FLOAT16, BFLOAT16, 11):
                feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
            elif t == 9:
                feeds[i.name] = np.ones(shape, dtype=bool)
            else:
                feeds[i.name] = np.zeros(shape, dtype=_np_dtype(t))
        where = "random inputs"
    else:
        raise BadInputError(f"calibration must be a .npz path or a dict, not {type(calibration).__name__}")
    missing = [n for n in names if n not in feeds]
    extra = [k for k in feeds if k not in names]
    if missing or extra:
        raise BadInputError(f"{where}: inputs do not match the model (model: {', '.join(names)}; "
                            f"missing: {', '.join(missing) or '-'}; unknown: {', '.join(extra) or '-'})")
    out = {}
    for i in ins:
        a = np.asarray(feeds[i.name])
        if a.dtype.kind not in "fiub" and str(a.dtype) != "bfloat16":
            raise BadInputError(f"{where}: input {i.name!r} has dtype {a.dtype}, not a real numeric array")
        rank = len(i.type.tensor_type.shape.dim)
        if i.type.tensor_type.HasField("shape") and a.ndim != rank:
            raise BadInputError(f"{where}: input {i.name!r} has rank {a.ndim}, the model wants rank {rank}")
        if a.size == 0:
            raise BadInputError(f"{where}: input {i.name!r} is empty (shape {list(a.shape)}): nothing to measure")
        static = [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
        if any(d is not None and d != n for d, n in zip(static, a.shape)):
            raise BadInputError(f"{where}: input {i.name!r} has shape {list(a.shape)}, the model wants "
                                f"[{', '.join('?' if d is None else str(d) for d in static)}]")
        t = i.type.tensor_type.elem_type
        if t in (FLOAT, FLOAT16, BFLOAT16) and not np.issubdtype(a.dtype, np.floating) and a.dtype.kind not in "V":
            a = a.astype(np.float32)
        if t in (FLOAT, FLOAT16, BFLOAT16) and scale != 1.0:
            a = a.astype(np.float32) * scale
        out[i.name] = a.astype(_np_dtype(t)) if t != BFLOAT16 else a
    return out


def _symbolic_sizes(model) -> dict:
    """Symbolic dims named in the exporter's metadata keep the defaults; nothing else to learn here."""
    for p in model.metadata_props:
        if p.key == "ln_deploy.example_shapes":
            try:
                sizes = json.loads(p.value)
            except ValueError:
                return {}
            # the model file is untrusted: keep only positive integer sizes
            return {k: v for k, v in sizes.items() if type(v) is int and v > 0} if isinstance(sizes, dict) else {}
    return {}


def read_npz(path) -> dict:
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"no such calibration file: {p}")
    from ..loaders import load_npz  # bounded: headers and sizes checked before anything is inflated

    arrays = load_npz(p)
    for k, v in arrays.items():
        if not isinstance(v, np.ndarray):  # np.load hands back a member that is not .npy as raw bytes
            raise BadInputError(f"{p}: member {k!r} is not a NumPy array")
    return arrays


def _session(model):
    from ..ort import UNOPTIMIZED, open_session

    # No graph rewrites: the values must be the ones each node computes, in the declared types.
    return open_session(model, UNOPTIMIZED)


@contextlib.contextmanager
def ort_errors_as_bad_input(source: str | None):
    """ONNX Runtime failing on the user's own model (not on one ln_deploy made) is bad input:
    one line naming ``source``. With ``source`` None errors pass through (they would be our bug)."""
    try:
        yield
    except Exception as e:
        if source is None or not type(e).__module__.startswith("onnxruntime"):
            raise
        lines = str(e).strip().splitlines()
        raise BadInputError(f"ONNX Runtime cannot run {source}: {lines[0][:300] if lines else type(e).__name__}") from None


def require_ort_loads(model, source: str) -> None:
    """Refuse a model that ONNX Runtime's CPU provider cannot load (custom ops, type errors...)."""
    with ort_errors_as_bad_input(source):
        _session(model)


def _cast_feeds(model, feeds):
    import numpy as np

    out = {}
    for i in graph_inputs(model):
        a = feeds[i.name if i.name in feeds else i.name[: -len("__fp32_feed")]]
        t = i.type.tensor_type.elem_type
        out[i.name] = np.asarray(a).astype(_np_dtype(t))
    return out


def run_with_values(model, feeds: dict, names: list[str], types_from=None, source: str | None = None) -> dict:
    """Run ``model`` in ORT on the CPU returning the named intermediate values (as float64 arrays).
    ``source``: the user's model is run (its ORT errors are bad input, see ``ort_errors_as_bad_input``)."""
    import copy

    import numpy as np
    from onnx import helper

    from ..onnx_graph import infer_types

    m = copy.deepcopy(model)
    types = infer_types(m)
    existing = {o.name for o in m.graph.output}
    for n in names:
        if n not in existing and types.get(n):
            m.graph.output.append(helper.make_tensor_value_info(n, types[n], None))
    m, rename = _bridge_bf16(m)
    with ort_errors_as_bad_input(source):
        sess = _session(m)
        wanted = set(names)
        outs = [o.name for o in sess.get_outputs() if rename.get(o.name, o.name) in wanted]
        vals = sess.run(outs, _cast_feeds(m, feeds))
    return {rename.get(n, n): _to64(v) for n, v in zip(outs, vals)}


def run_outputs(model, feeds: dict, source: str | None = None) -> dict:
    m, rename = _bridge_bf16(model)
    with ort_errors_as_bad_input(source):
        sess = _session(m)
        names = [o.name for o in sess.get_outputs()]
        vals = sess.run(names, _cast_feeds(m, feeds))
    return {rename.get(n, n): _to64(v) for n, v in zip(names, vals)}


def _bridge_bf16(model):
    """ORT's Python API cannot feed or return bfloat16 arrays: bridge bf16 graph I/O through fp32 (exact)."""
    import copy

    from onnx import helper

    if not any(v.type.tensor_type.elem_type == BFLOAT16 for v in list(model.graph.input) + list(model.graph.output)):
        return model, {}
    m = copy.deepcopy(model)
    rename = {}
    pre = []
    for i in m.graph.input:
        if i.type.tensor_type.elem_type == BFLOAT16:
            outer = i.name + "__fp32_feed"
            pre.append(helper.make_node("Cast", [outer], [i.name], to=BFLOAT16))
            i.name = outer
            i.type.tensor_type.elem_type = FLOAT
            rename[outer] = outer[: -len("__fp32_feed")]
    for o in m.graph.output:
        if o.type.tensor_type.elem_type == BFLOAT16:
            outer = o.name + "__fp32_fetch"
            m.graph.node.append(helper.make_node("Cast", [o.name], [outer], to=FLOAT))
            rename[outer] = o.name
            o.name = outer
            o.type.tensor_type.elem_type = FLOAT
    nodes = pre + list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m, rename


def _to64(v):
    import numpy as np

    a = np.asarray(v)
    if a.dtype.kind in "fV" or str(a.dtype) == "bfloat16":
        return a.astype(np.float32).astype(np.float64)
    return a
