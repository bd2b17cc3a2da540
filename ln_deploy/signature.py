"""A model's inputs and outputs (names, data types, shapes) as Triton and KServe v2 see them.

One table maps every data type between its four spellings: KServe v2 (``FP32``), Triton model
config (``TYPE_FP32``), ONNX (``TensorProto.FLOAT``) and NumPy. Shapes use ``-1`` for a dynamic
dimension, as both protocols do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import BadInputError

# kserve name -> (triton config name, onnx TensorProto value, numpy dtype name or None)
# ONNX values are TensorProto.DataType numbers, so this module does not import onnx.
DATATYPES: dict[str, tuple[str, int, str | None]] = {
    "BOOL": ("TYPE_BOOL", 9, "bool"),
    "UINT8": ("TYPE_UINT8", 2, "uint8"),
    "UINT16": ("TYPE_UINT16", 4, "uint16"),
    "UINT32": ("TYPE_UINT32", 12, "uint32"),
    "UINT64": ("TYPE_UINT64", 13, "uint64"),
    "INT8": ("TYPE_INT8", 3, "int8"),
    "INT16": ("TYPE_INT16", 5, "int16"),
    "INT32": ("TYPE_INT32", 6, "int32"),
    "INT64": ("TYPE_INT64", 7, "int64"),
    "FP16": ("TYPE_FP16", 10, "float16"),
    "FP32": ("TYPE_FP32", 1, "float32"),
    "FP64": ("TYPE_FP64", 11, "float64"),
    "BF16": ("TYPE_BF16", 16, None),  # NumPy has no bfloat16: Triton serves it, `ln-deploy serve` does not
    "BYTES": ("TYPE_STRING", 8, None),
}
_FROM_ONNX = {onnx_type: k for k, (_, onnx_type, _) in DATATYPES.items()}
_FROM_TRITON = {t: k for k, (t, _, _) in DATATYPES.items()}
_FROM_NUMPY = {np_name: k for k, (_, _, np_name) in DATATYPES.items() if np_name}
# Spellings an engine sidecar may use (TensorRT's DataType names, with or without "DataType.").
_FROM_TENSORRT = {"FLOAT": "FP32", "HALF": "FP16", "BF16": "BF16", "INT8": "INT8", "INT32": "INT32",
                  "INT64": "INT64", "BOOL": "BOOL", "UINT8": "UINT8", "DOUBLE": "FP64"}


def triton_type(datatype: str) -> str:
    """``FP32`` -> ``TYPE_FP32``."""
    return DATATYPES[datatype][0]


def numpy_dtype(datatype: str):
    """The NumPy dtype of a KServe datatype, or None where NumPy has none (BF16, BYTES)."""
    import numpy as np

    name = DATATYPES[datatype][2]
    return np.dtype(name) if name else None


def from_onnx_type(elem_type: int) -> str:
    try:
        return _FROM_ONNX[elem_type]
    except KeyError:
        raise BadInputError(f"ONNX element type {elem_type} has no Triton equivalent") from None


def from_triton_type(name: str) -> str:
    try:
        return _FROM_TRITON[name]
    except KeyError:
        raise BadInputError(f"unknown Triton data type {name!r}") from None


def normalize_datatype(name: str) -> str:
    """Any common spelling (``FP32``, ``TYPE_FP32``, ``float32``, TensorRT's ``DataType.HALF``) -> KServe."""
    s = str(name).strip()
    if s in DATATYPES:
        return s
    if s in _FROM_TRITON:
        return _FROM_TRITON[s]
    if s.lower() in _FROM_NUMPY:
        return _FROM_NUMPY[s.lower()]
    t = s.upper().removeprefix("DATATYPE.")
    if t in _FROM_TENSORRT:
        return _FROM_TENSORRT[t]
    raise BadInputError(f"unknown data type {name!r}")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # KServe spelling: FP32, INT64, ...
    shape: tuple[int, ...]  # -1 = dynamic

    @property
    def rank(self) -> int:
        return len(self.shape)

    def describe(self) -> str:
        return f"{self.name} {self.datatype}{list(self.shape)}"


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def batch_axis_dynamic(self) -> bool:
        """True when every input and output has a dynamic leading (batch) axis: Triton may batch it."""
        return all(t.rank >= 1 and t.shape[0] == -1 for t in (*self.inputs, *self.outputs))

    def not_batchable_reason(self) -> str | None:
        for t in (*self.inputs, *self.outputs):
            if t.rank == 0:
                return f"{t.name} is a scalar"
            if t.shape[0] != -1:
                return f"{t.name}'s first axis is fixed at {t.shape[0]}, not a dynamic batch axis"
        return None


def onnx_signature(model) -> Signature:
    """The graph inputs (initializers excluded) and outputs of an ``onnx.ModelProto``.

    Output shapes missing from the graph are filled by ONNX shape inference; a rank that stays
    unknown is an error because Triton's config needs one.
    """
    import onnx

    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    outputs = list(graph.output)
    if any(not o.type.tensor_type.HasField("shape") for o in outputs):
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
            outputs = list(inferred.graph.output)
        except Exception:  # noqa: BLE001 - inference is best effort; the rank check below reports
            pass

    def spec(vi) -> TensorSpec:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise BadInputError(f"{vi.name}: only tensor inputs and outputs can be served")
        if not tt.HasField("shape"):
            raise BadInputError(f"{vi.name}: the model does not declare its rank")
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tt.shape.dim)
        return TensorSpec(vi.name, from_onnx_type(tt.elem_type), dims)

    return Signature(
        inputs=tuple(spec(i) for i in graph.input if i.name not in initializers),
        outputs=tuple(spec(o) for o in outputs),
    )


@dataclass(frozen=True)
class EngineInfo:
    """What an engine's JSON sidecar (``ENGINE.plan.json``, written by ``ln-deploy build``) says."""

    signature: Signature
    max_batch_from_profiles: int | None  # the smallest profile max of the batch axis, over inputs
    plugins: tuple[str, ...]  # plugin library names the engine needs, if the sidecar lists them


def sidecar_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def engine_signature(engine_path: str | Path) -> EngineInfo:
    """Read an engine's inputs and outputs from its JSON sidecar.

    TensorRT is not importable on CPU machines, so the engine itself is never opened here. The
    sidecar needs ``inputs`` and ``outputs``: lists of ``{"name", "dtype", "shape"}`` (``shape``
    with -1 for dynamic axes; ``dtype`` in any of NumPy's, KServe's, Triton's or TensorRT's
    spellings; ``dims``/``datatype``/``data_type`` accepted as synonyms). ``profiles`` is optional:
    a list of ``{input_name: {"min": [...], "opt": [...], "max": [...]}}``.
    """
    side = sidecar_path(engine_path)
    if not side.is_file():
        raise BadInputError(
            f"{side} not found: packaging an engine needs the JSON sidecar `ln-deploy build` writes beside it "
            "(TensorRT is not needed here, so the engine's tensors are read from the sidecar)")
    from .loaders import load_json  # bounded in size and nesting: the sidecar is untrusted

    meta = load_json(side)
    if not isinstance(meta, dict):
        raise BadInputError(f"{side}: expected a JSON object")

    def tensors(key: str) -> tuple[TensorSpec, ...]:
        items = meta.get(key)
        if isinstance(items, dict):  # {"x": {...}} form
            items = [{"name": k, **v} for k, v in items.items() if isinstance(v, dict)]
        if not isinstance(items, list) or not items:
            raise BadInputError(f"{side}: '{key}' must be a non-empty list of tensors")
        out = []
        for t in items:
            if not isinstance(t, dict) or "name" not in t:
                raise BadInputError(f"{side}: every entry of '{key}' needs a name")
            dtype = t.get("dtype", t.get("datatype", t.get("data_type")))
            shape = t.get("shape", t.get("dims"))
            if not isinstance(t["name"], str) or not t["name"] or not isinstance(dtype, str) \
                    or not isinstance(shape, list) or not all(_is_int(d) for d in shape):
                raise BadInputError(f"{side}: tensor {str(t['name'])[:100]!r} needs a name, a dtype and a shape "
                                    "of integers")
            out.append(TensorSpec(t["name"], normalize_datatype(dtype), tuple(d if d > 0 else -1 for d in shape)))
        return tuple(out)

    sig = Signature(tensors("inputs"), tensors("outputs"))
    max_batch = None
    profiles = meta.get("profiles") or []
    if isinstance(profiles, list):
        for prof in profiles:
            if not isinstance(prof, dict):
                continue
            for t in sig.inputs:
                rng = prof.get(t.name)
                if isinstance(rng, dict) and isinstance(rng.get("max"), list) and rng["max"]:
                    if not _is_int(rng["max"][0]) or rng["max"][0] < 1:
                        raise BadInputError(f"{side}: profile max of {t.name!r} must be positive integers, "
                                            f"got {str(rng['max'])[:100]}")
                    b = rng["max"][0]
                    max_batch = b if max_batch is None else min(max_batch, b)
    plugins = meta.get("plugins") or []
    # `ln-deploy build` lists {"path", "sha256", ...} objects; plain names are accepted too.
    names = []
    for p in plugins if isinstance(plugins, list) else ():
        if isinstance(p, dict) and isinstance(p.get("path"), str):
            names.append(Path(p["path"]).name)
        elif isinstance(p, str):
            names.append(p)
    for n in names:  # plain file names only: they name files beside the engine
        if not n or n in (".", "..") or "/" in n or "\\" in n or "\0" in n:
            raise BadInputError(f"{side}: plugin {n[:100]!r} is not a plain file name")
    plugins = tuple(names)
    return EngineInfo(sig, max_batch, plugins)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**63
