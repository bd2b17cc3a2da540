"""Inputs for a check: validation of the ONNX model against the SPEC, a seeded generator that
respects what each input means (0/1 masks, integer ids in range), example inputs, and user .npz files.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInputError

_ONNX_TO_NUMPY = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64", 6: "int32", 7: "int64", 9: "bool",
                  2: "uint8", 3: "int8"}


@dataclass
class OnnxInput:
    name: str
    dtype: str  # numpy-style name; "bfloat16" for BF16
    shape: list  # ints for static dims, str (dim_param) or None for dynamic ones

    @property
    def rank(self) -> int:
        return len(self.shape)

    def is_static(self, axis: int) -> bool:
        return axis < len(self.shape) and isinstance(self.shape[axis], int)


def onnx_inputs(model) -> list[OnnxInput]:
    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                shape.append(d.dim_param)
            else:
                shape.append(None)
        out.append(OnnxInput(vi.name, _ONNX_TO_NUMPY.get(tt.elem_type, f"onnx-type-{tt.elem_type}"), shape))
    return out


def onnx_output_names(model) -> list[str]:
    return [o.name for o in model.graph.output]


def validate_model_pair(loaded, model, onnx_path) -> list[OnnxInput]:
    """Refuse an ONNX model whose inputs do not match the SPEC's forward() (names, count, ranks,
    static dims, dtype family). Returns the ONNX inputs."""
    meta = {p.key: p.value for p in model.metadata_props}
    ins = onnx_inputs(model)
    names = [i.name for i in ins]
    if meta.get("ln_deploy.rnn_mode") == "step" or (loaded.is_recurrent and len(ins) > len(loaded.input_names)
                                                    and names[:1] != loaded.input_names[:1]):
        raise BadInputError(f"{onnx_path} was exported in step mode (inputs {names}); check runs whole "
                            "sequences: export with --rnn-mode scan (default) or unroll")
    if names != list(loaded.input_names):
        raise BadInputError(f"{onnx_path} has inputs {names} but {loaded.spec}'s forward() takes "
                            f"{list(loaded.input_names)}: is this the model exported from that SPEC?")
    for inp, ex in zip(ins, loaded.example_inputs):
        if inp.rank != ex.dim():
            raise BadInputError(f"{onnx_path}: input {inp.name!r} has rank {inp.rank} ({_fmt(inp.shape)}) but the "
                                f"SPEC's example input has rank {ex.dim()} {list(ex.shape)}")
        for axis, (d, e) in enumerate(zip(inp.shape, ex.shape)):
            if isinstance(d, int) and d != int(e):
                raise BadInputError(f"{onnx_path}: input {inp.name!r} has static size {d} on axis {axis} "
                                    f"({_fmt(inp.shape)}) but the SPEC's example input is {list(ex.shape)}")
        ex_float = ex.is_floating_point()
        onnx_float = inp.dtype in ("float32", "float16", "bfloat16", "float64")
        if ex_float != onnx_float and not (inp.dtype == "bool" and not ex_float):
            raise BadInputError(f"{onnx_path}: input {inp.name!r} is {inp.dtype} but the SPEC's example input "
                                f"is {str(ex.dtype).replace('torch.', '')}")
    return ins


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


def _is_binary(t) -> bool:
    import torch

    return t.numel() > 0 and bool(torch.all((t == 0) | (t == 1)))


class InputGenerator:
    """Seeded inputs shaped like the example inputs (with batch/sequence sizes changeable).

    Rules, so random data is meaningful: a float input named by the model's ``padding_mask_input`` or whose
    example values are all 0/1 is a mask (1 = real token): each row gets a random real length >= 1 and
    zeros after it; integer inputs draw from the example's value range (token ids stay in the vocabulary
    the example uses); bool inputs are random; other float inputs are standard normal.
    """

    def __init__(self, loaded, seed: int = 0, onnx_ins=None):
        import numpy as np

        self.loaded = loaded
        # Axes the ONNX graph fixes keep the example's size when a batch or sequence size is asked for
        # (a [16] bias passed as a keyword argument has no batch axis).
        self.static = {(i.name, a) for i in (onnx_ins or ()) for a in range(i.rank) if i.is_static(a)}
        self.rng = np.random.default_rng(seed)
        mask_name = getattr(loaded.module, "padding_mask_input", None)
        self.kinds = {}
        for name, ex in zip(loaded.input_names, loaded.example_inputs):
            if ex.dtype.is_floating_point:
                kind = "mask" if name == mask_name or (_is_binary(ex) and ex.dim() == 2) else "float"
            elif str(ex.dtype) == "torch.bool":
                kind = "bool"
            else:
                kind = "int"
            self.kinds[name] = kind
        self.mask_name = next((n for n, k in self.kinds.items() if k == "mask"), None)

    def example_feed(self) -> OrderedDict:
        return OrderedDict((n, t.detach().cpu().numpy()) for n, t in zip(self.loaded.input_names,
                                                                          self.loaded.example_inputs))

    def feed(self, batch: int | None = None, seq: int | None = None, padded: bool = False,
             shapes: dict | None = None) -> OrderedDict:
        """``shapes`` (input name -> shape) sets the inputs' shapes outright (the shape sweep)."""
        import numpy as np

        from ..loaders import check_allocation

        out = OrderedDict()
        for name, ex in zip(self.loaded.input_names, self.loaded.example_inputs):
            shape = list(shapes[name]) if shapes and name in shapes else list(ex.shape)
            if not shapes and batch is not None and shape and (name, 0) not in self.static:
                shape[0] = batch
            if not shapes and seq is not None and len(shape) > 1 and self.has_seq_axis(name) \
                    and (name, 1) not in self.static:
                shape[1] = seq
            kind = self.kinds[name]
            dtype = ex.detach().cpu().numpy().dtype
            # bounded before numpy allocates (--batch-size 1000000000 asked for 238 GiB); draws are float64
            check_allocation(shape, 8, f"random input {name!r} (batch {shape[0] if shape else 1})")
            if kind == "mask":
                out[name] = self.mask(shape, padded).astype(dtype)
            elif kind == "int":
                lo, hi = int(ex.min()), int(ex.max())
                out[name] = self.rng.integers(lo, hi + 1, size=shape).astype(dtype)
            elif kind == "bool":
                out[name] = self.rng.random(shape) < 0.5
            else:
                out[name] = self.rng.standard_normal(shape).astype(dtype)
        return out

    def mask(self, shape, padded: bool):
        import numpy as np

        m = np.ones(shape, dtype=np.float32)
        if len(shape) != 2 or shape[1] < 2:
            return m
        b, t = shape
        for i in range(b):
            if padded or self.rng.random() < 0.5:
                # Row 0 keeps its full length so the batch always has an unpadded sample.
                length = t if (i == 0 and b > 1) else int(self.rng.integers(1, t))
                m[i, length:] = 0
        return m

    def has_seq_axis(self, name: str) -> bool:
        """Inputs whose axis 1 is the sequence: rank >= 2 and the same axis-1 size as the first input."""
        ex = dict(zip(self.loaded.input_names, self.loaded.example_inputs))
        first = self.loaded.example_inputs[0]
        t = ex[name]
        return first.dim() >= 2 and t.dim() >= 2 and t.shape[1] == first.shape[1] and \
            self.kinds.get(name) != "other" and _seq_model(self.loaded)

    def random_like(self, arr):
        import numpy as np

        return self.rng.standard_normal(arr.shape).astype(arr.dtype)


def _seq_model(loaded) -> bool:
    # Images (rank 4 NCHW) have no sequence axis; [batch, seq, feat] and [batch, seq] inputs do.
    return loaded.example_inputs[0].dim() == 3 or bool(getattr(loaded.module, "causal", False)) \
        or loaded.is_recurrent


def load_npz(path, onnx_ins: list[OnnxInput]) -> list[OrderedDict]:
    """Real inputs from a .npz file: one array per input name (one feed), or ``NAME__i`` keys for several
    feeds (``x__0``, ``mask__0``, ``x__1``, ...). Loaded with ``allow_pickle=False``."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"inputs file not found: {p}")
    from ..loaders import load_npz as load_arrays  # bounded: headers and sizes checked before inflating

    arrays = load_arrays(p)
    names = [i.name for i in onnx_ins]
    feeds: dict[int, OrderedDict] = {}
    for key, arr in arrays.items():
        base, sep, idx = key.rpartition("__")
        if sep and idx.isdigit():
            name, i = base, int(idx)
        else:
            name, i = key, 0
        if name not in names:
            raise BadInputError(f"{p}: array {key!r} names no input of the model (inputs: {names})")
        if not isinstance(arr, np.ndarray):  # np.load hands back a member that is not .npy as raw bytes
            raise BadInputError(f"{p}: member {key!r} is not a NumPy array")
        feeds.setdefault(i, OrderedDict())[name] = arr
    if not feeds:
        raise BadInputError(f"{p} holds no arrays")
    result = []
    for i in sorted(feeds):
        feed = feeds[i]
        missing = [n for n in names if n not in feed]
        if missing:
            raise BadInputError(f"{p}: feed {i} is missing input(s) {missing}")
        ordered = OrderedDict()
        for inp in onnx_ins:
            arr = feed[inp.name]
            if arr.ndim != inp.rank:
                raise BadInputError(f"{p}: {inp.name!r} has shape {list(arr.shape)}, the model expects "
                                    f"rank {inp.rank} {_fmt(inp.shape)}")
            for axis, d in enumerate(inp.shape):
                if isinstance(d, int) and arr.shape[axis] != d:
                    raise BadInputError(f"{p}: {inp.name!r} has shape {list(arr.shape)}, the model expects "
                                        f"{_fmt(inp.shape)}")
            if arr.dtype.kind not in "fiub":
                raise BadInputError(f"{p}: {inp.name!r} has dtype {arr.dtype}, not a numeric array")
            if arr.size == 0:
                raise BadInputError(f"{p}: {inp.name!r} is empty (shape {list(arr.shape)}): nothing to compare")
            ordered[inp.name] = arr
        result.append(ordered)
    return result


def cast_feed(feed, loaded):
    """Cast a feed to the SPEC's example dtypes (what the PyTorch reference and ONNX inputs expect)."""
    import numpy as np

    out = OrderedDict()
    for name, ex in zip(loaded.input_names, loaded.example_inputs):
        want = ex.detach().cpu().numpy().dtype
        arr = np.asarray(feed[name])
        out[name] = arr.astype(want) if arr.dtype != want else arr
    return out


def check_report_dir(report_dir) -> Path | None:
    """The report directory, validated before any work: it exists as a directory or can be created, and a
    file can really be created where the report is assembled (its parent), which ``os.access`` alone
    does not prove (root, read-only mounts, /proc)."""
    import shutil
    import tempfile

    if report_dir is None:
        return None
    p = Path(report_dir)
    if p.exists() and not p.is_dir():
        raise BadInputError(f"report dir is not a directory: {p}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise BadInputError(f"report dir's parent does not exist: {parent}")
    if not parent.is_dir():
        raise BadInputError(f"report dir's parent is not a directory: {parent}")
    for where in ([p] if p.exists() else []) + [parent]:
        try:
            probe = tempfile.mkdtemp(prefix=".ln_deploy_probe.", dir=where)
            with open(os.path.join(probe, "x"), "w") as f:
                f.write("x")
            shutil.rmtree(probe, ignore_errors=True)
        except OSError as e:
            raise BadInputError(f"report dir {p} cannot be written ({where}: {e.strerror or type(e).__name__})") from None
    return p
