"""Optimization profiles from an ONNX model's dynamic axes, and ``NAME:min/opt/max`` shape specs.

Pure Python (onnx only): everything here is tested without TensorRT.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import BadInputError

# Defaults per symbolic dimension name: (min, opt, max). "batch" is the exporter's name for axis 0,
# "seq" for axis 1; anything else (height, width, ...) gets the generic range.
DEFAULT_RANGES = {
    "batch": (1, 8, 32),
    "seq": (1, 128, 512),
}
GENERIC_RANGE = (1, 64, 256)


@dataclass(frozen=True)
class InputDims:
    name: str
    dims: tuple  # int for static, str for a symbolic (dynamic) dim


@dataclass(frozen=True)
class Profile:
    """min/opt/max shapes per input name."""

    shapes: dict  # name -> (min tuple, opt tuple, max tuple)

    def to_dict(self) -> dict:
        """``{input: {"min": [...], "opt": [...], "max": [...]}}``: ``shapes`` itself, as the engine sidecar
        and TensorRT's optimisation profile name it (keyed by input, not by the field)."""
        return {k: {"min": list(v[0]), "opt": list(v[1]), "max": list(v[2])} for k, v in self.shapes.items()}


def model_inputs(model) -> list[InputDims]:
    """Inputs with their dims; a dim is an int (static) or the symbolic name of a dynamic axis.
    ``ln_deploy.dynamic_axes`` metadata names axes the graph left anonymous."""
    meta = {}
    for p in model.metadata_props:
        if p.key == "ln_deploy.dynamic_axes":
            try:
                meta = json.loads(p.value)
            except ValueError:
                meta = {}
    inits = {t.name for t in model.graph.initializer}
    out = []
    for i in model.graph.input:
        if i.name in inits:
            continue
        dims = []
        for k, d in enumerate(i.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or str(meta.get(i.name, {}).get(str(k), f"{i.name}_dim{k}")))
        out.append(InputDims(i.name, tuple(dims)))
    return out


MAX_DIM = 2**31 - 1


def parse_shape(text: str, what: str) -> tuple:
    parts = text.lower().replace(",", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise BadInputError(f"{what}: {text!r} is not a shape like 1x8x64") from None
    if any(d <= 0 for d in dims):
        raise BadInputError(f"{what}: every dimension must be positive, got {text!r}")
    if any(d > MAX_DIM for d in dims):
        raise BadInputError(f"{what}: a dimension above {MAX_DIM} in {text!r}")
    return dims


def parse_shape_specs(specs) -> dict:
    """``["x:1x8x64/4x128x64/32x512x64", ...]`` → ``{"x": (min, opt, max)}``; a single shape means
    min = opt = max."""
    out: dict = {}
    for spec in specs or []:
        name, sep, rest = str(spec).rpartition(":")
        if not sep or not name:
            raise BadInputError(f"--shapes {spec!r}: expected NAME:MIN/OPT/MAX (e.g. x:1x8x64/4x128x64/32x512x64)")
        parts = rest.split("/")
        if len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3:
            raise BadInputError(f"--shapes {spec!r}: expected three shapes MIN/OPT/MAX, got {len(parts)}")
        if name in out:
            raise BadInputError(f"--shapes: input {name!r} given twice")
        out[name] = tuple(parse_shape(p, f"--shapes {name}") for p in parts)
    return out


def derive_profile(model, overrides: dict | None = None) -> Profile:
    """One profile covering every input: overrides (validated against the model) win; a symbolic dim
    set by an override applies to every input sharing it; the rest get ``DEFAULT_RANGES``."""
    inputs = model_inputs(model)
    by_name = {i.name: i for i in inputs}
    overrides = dict(overrides or {})
    unknown = [n for n in overrides if n not in by_name]
    if unknown:
        raise BadInputError(f"--shapes names {', '.join(map(repr, unknown))}, not an input of the model "
                            f"(inputs: {', '.join(by_name) or 'none'})")
    sym: dict[str, tuple] = {}  # symbolic dim -> (min, opt, max) fixed by an override
    for name, (mn, op, mx) in overrides.items():
        dims = by_name[name].dims
        for label, shape in (("min", mn), ("opt", op), ("max", mx)):
            if len(shape) != len(dims):
                raise BadInputError(f"--shapes {name}: {label} shape has rank {len(shape)}, "
                                    f"the model's input has rank {len(dims)} ({_show(dims)})")
        for k, d in enumerate(dims):
            trio = (mn[k], op[k], mx[k])
            if isinstance(d, int):
                if trio != (d, d, d):
                    raise BadInputError(f"--shapes {name}: axis {k} is static ({d}) in the model, "
                                        f"got {trio[0]}/{trio[1]}/{trio[2]}")
                continue
            if not trio[0] <= trio[1] <= trio[2]:
                raise BadInputError(f"--shapes {name}: axis {k} needs min <= opt <= max, got "
                                    f"{trio[0]}/{trio[1]}/{trio[2]}")
            if d in sym and sym[d] != trio:
                raise BadInputError(f"--shapes: dimension {d!r} is shared by several inputs but given "
                                    f"different ranges ({_trio(sym[d])} and {_trio(trio)})")
            sym[d] = trio
    shapes = {}
    for i in inputs:
        if i.name in overrides:
            shapes[i.name] = overrides[i.name]
            continue
        trios = [(d, d, d) if isinstance(d, int) else sym.get(d, DEFAULT_RANGES.get(d, GENERIC_RANGE)) for d in i.dims]
        shapes[i.name] = tuple(tuple(t[j] for t in trios) for j in range(3))
    return Profile(shapes)


def _show(dims) -> str:
    return "x".join(str(d) for d in dims) if dims else "scalar"


def _trio(t) -> str:
    return "/".join(map(str, t))
