"""What every fusion rule shares: the internal normalization op, the fusion context, and helpers.

The rules do not write the final operators. Each recognised normalization first becomes one node of
an internal op, ``ln_deploy.internal::Norm`` (and, for a residual sum, ``SkipNorm``), whose meaning
is exactly ONNX's ``LayerNormalization``/``RMSNormalization`` function with ``stash_type=1``:
cast X to float32, normalize over ``axes``, cast the result back to X's type, then multiply by scale
and add bias in X's type. ``lower.py`` turns those nodes into the target's operators. Keeping one
internal op lets small rules build on each other (core → scale → bias → precision) and lets the
target decide what it can express (opset, channels-first axes) in one place.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from ..onnx_graph import replace_value  # noqa: F401  (shared with plugin_reference)

INTERNAL_DOMAIN = "ln_deploy.internal"
KIND_LN, KIND_RMS = 0, 1
KIND_NAMES = {KIND_LN: "LayerNormalization", KIND_RMS: "RMSNormalization"}
FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)
LOW_PRECISION = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


@dataclass
class Rejection:
    """A near-miss a rule did not fuse: ``nodes`` (the candidate's node labels), ``reason``, ``rule``."""

    nodes: list[str]
    reason: str
    rule: str

    def to_dict(self) -> dict:
        """The fields by name."""
        return {"nodes": self.nodes, "reason": self.reason, "rule": self.rule}


@dataclass
class Applied:
    rule: str
    nodes: list[str]


@dataclass
class FuseContext:
    """Settings and records of one fusion run (a contextvar, so rules stay stateless)."""

    target: str = "onnx"  # "onnx" or "tensorrt"
    opset: int = 17
    limit: int | None = None  # apply at most this many rewrites (bisection)
    rejections: list[Rejection] = field(default_factory=list)
    applied: list[Applied] = field(default_factory=list)
    canonicalised: dict = field(default_factory=dict)  # what the exact canonical forms changed
    notes: list[str] = field(default_factory=list)  # said in the report (e.g. an inexact-but-bounded fusion)
    _seen: set = field(default_factory=set)
    _order: dict | None = None

    def new_pass(self) -> None:
        """A rule pass starts: the graph order cached for reports is stale."""
        self._order = None

    def position(self, node: ir.Node, graph) -> int:
        """Where ``node`` sits in ``graph`` (nodes a rewrite of this pass added: after all others),
        from one order computed per pass, not per match."""
        if self._order is None:
            self._order = {n: i for i, n in enumerate(graph)}
        return self._order.get(node, len(self._order))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def reject(self, rule: str, nodes, reason: str, root=None) -> None:
        names = [node_label(n) for n in nodes]
        # one entry per (anchor node, reason): the LayerNorm and RMSNorm families (and commuted
        # variants of one rule) often see the same candidate and give the same reason
        key = (node_label(root) if root is not None else tuple(sorted(names)), reason)
        if key not in self._seen:
            self._seen.add(key)
            self.rejections.append(Rejection(names, reason, rule))

    def may_apply(self) -> bool:
        return self.limit is None or len(self.applied) < self.limit


_CTX: contextvars.ContextVar[FuseContext] = contextvars.ContextVar("ln_deploy_fuse_ctx")


def ctx() -> FuseContext:
    c = _CTX.get(None)
    if c is None:  # rules used outside fuse_model (e.g. by onnxscript tooling): record nowhere
        c = FuseContext()
        _CTX.set(c)
    return c


@contextlib.contextmanager
def fuse_context(c: FuseContext):
    token = _CTX.set(c)
    try:
        yield c
    finally:
        _CTX.reset(token)


_TYPE_NAMES = {ir.DataType.FLOAT: "float32", ir.DataType.DOUBLE: "float64", ir.DataType.FLOAT16: "float16",
               ir.DataType.BFLOAT16: "bfloat16"}


def type_name(dtype) -> str:
    """``float16``/``float32``/``float64``/``bfloat16`` (numpy's names), else ONNX's."""
    if dtype is None:
        return "an unknown type"
    return _TYPE_NAMES.get(dtype, getattr(dtype, "name", str(dtype)).lower())


def node_label(node: ir.Node) -> str:
    return node.name or f"{node.op_type}@{id(node):x}"


# ---------------------------------------------------------------- value helpers

def const(value: ir.Value | None) -> np.ndarray | None:
    """The constant behind a value (initializer or Constant node), or None. Graph inputs with a
    default (initializers that are also inputs) are not constants: the user may override them."""
    if value is None or value.is_graph_input():
        return None
    cv = value.const_value
    if cv is None:
        producer = value.producer()
        if producer is not None and producer.op_type == "Constant" and producer.domain == "":
            attr = producer.attributes.get("value")
            if attr is not None:
                cv = attr.value
    if cv is None:
        return None
    try:
        return cv.numpy()
    except Exception:  # external data not loaded
        return None


def scalar(value: ir.Value | None) -> float | None:
    """The single value of a constant whose elements are all equal, else None."""
    a = const(value)
    if a is None or a.size == 0:
        return None
    flat = a.reshape(-1).astype(np.float64)
    return float(flat[0]) if np.all(flat == flat[0]) else None


def rank(value: ir.Value | None) -> int | None:
    if value is None or value.shape is None:
        return None
    return len(value.shape)


def static_dims(value: ir.Value | None) -> list[int | None] | None:
    if value is None or value.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in value.shape]


def reduce_axes(node: ir.Node, x_rank: int | None) -> tuple[tuple[int, ...] | None, str | None]:
    """The (sorted, non-negative) axes a ReduceMean/ReduceSum node reduces, or (None, reason)."""
    keepdims = node.attributes.get("keepdims")
    if keepdims is not None and keepdims.value == 0:
        return None, f"{node.op_type} uses keepdims=0, so its result does not broadcast back over the row"
    axes = None
    if "axes" in node.attributes:
        axes = list(node.attributes["axes"].value)
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        a = const(node.inputs[1])
        if a is None:
            return None, f"{node.op_type} axes are not a constant"
        axes = [int(v) for v in a.reshape(-1)]
    if not axes:
        noop = node.attributes.get("noop_with_empty_axes")
        if noop is not None and noop.value:
            return None, f"{node.op_type} reduces nothing (noop_with_empty_axes=1)"
        if x_rank is None:
            return None, f"{node.op_type} reduces all axes of a tensor of unknown rank"
        return tuple(range(x_rank)), None
    if x_rank is None:
        if all(a < 0 for a in axes):
            return tuple(sorted(axes)), None  # negative axes: fine without the rank
        return None, "rank of the normalized tensor is unknown"
    return tuple(sorted(a % x_rank for a in axes)), None


def axes_key(axes: tuple[int, ...], x_rank: int | None) -> tuple[int, ...]:
    """Negative form of the axes (comparable whether or not the rank is known)."""
    if x_rank is None:
        return axes
    return tuple(sorted(a - x_rank if a >= 0 else a for a in axes))


def normalized_size(x: ir.Value, axes: tuple[int, ...]) -> int | None:
    dims = static_dims(x)
    if dims is None:
        return None
    n = 1
    for a in axes:
        d = dims[a]
        if d is None:
            return None
        n *= d
    return n


def param_shape_reason(param: ir.Value, x: ir.Value, axes: tuple[int, ...], what: str) -> str | None:
    """Why a scale/bias cannot be folded into a norm over ``axes`` of ``x`` (None if it can).

    It must be a constant that varies only along the normalized axes and does not broadcast the
    result to a bigger shape."""
    a = const(param)
    if a is None:
        return f"{what} is not a constant"
    xr = rank(x)
    if xr is None:
        return f"rank of the normalized tensor is unknown, so the {what} shape cannot be checked"
    if a.ndim > xr:
        return f"{what} of rank {a.ndim} broadcasts the rank-{xr} result to a higher rank"
    dims = static_dims(x)
    for i in range(a.ndim):
        axis = xr - a.ndim + i
        d = a.shape[i]
        if d == 1:
            continue
        if axis not in axes:
            return (f"{what} has shape {list(a.shape)}: it varies along axis {axis}, "
                    f"which is not normalized (normalized axes {list(axes)})")
        if dims[axis] is None or dims[axis] != d:
            return f"{what} shape {list(a.shape)} does not match the normalized dims {[dims[i] for i in axes]}"
    return None


def param_for_axes(param_value: np.ndarray, x_dims: list[int | None], axes: tuple[int, ...]) -> np.ndarray:
    """A scale/bias broadcast to exactly the normalized shape, in ``axes`` order."""
    xr = len(x_dims)
    full = np.broadcast_to(param_value.reshape((1,) * (xr - param_value.ndim) + param_value.shape),
                           [x_dims[i] if i in axes else 1 for i in range(xr)])
    return np.ascontiguousarray(full.reshape([x_dims[i] for i in axes]))


def norm_attrs(node: ir.Node) -> dict:
    """The attributes of an internal Norm/SkipNorm node as plain Python values."""
    a = node.attributes
    return {"kind": a["kind"].value, "axes": tuple(a["axes"].value), "epsilon": a["epsilon"].value}


def is_internal(node: ir.Node | None, op_type: str = "Norm") -> bool:
    return node is not None and node.domain == INTERNAL_DOMAIN and node.op_type == op_type
