"""Which input axes are really dynamic: candidates proposed, torch.export decides.

Candidates (``candidate_axes``): axis 0 (batch) of every input; axis 1 (seq) of rank-2/3 inputs;
axes 2, 3 (height, width) of rank-4 inputs. They are exported with ``Dim.AUTO``: torch.export keeps
the axes the model lets vary and specialises the others (a fixed-length loop, a position-embedding
table added to the sequence, an image size baked into a reshape). Each decision is reported with its
reason: the guard that specialised the axis and the line of the model that raised it, captured from
torch's symbolic-shapes log (the handler runs inside the guard, so the Python stack is the model's).

torch.export is called here, not through torch.onnx: torch.onnx exports with
``prefer_deferred_runtime_asserts_over_guards``, which turns a specialisation into a runtime assert
and leaves the ONNX input claiming a dynamic axis the graph does not honour.

Axes the user names (``--dynamic-axes``) are exported with ``Dim.DYNAMIC``: a model that contradicts
one is an ``AxisContradiction`` naming the axis and dynamo's reason, never a silent specialisation.
"""

from __future__ import annotations

import contextlib
import logging
import re
import traceback
from dataclasses import asdict, dataclass

CANDIDATE_LABELS = {2: {1: "seq"}, 3: {1: "seq"}, 4: {2: "height", 3: "width"}}
_SOURCE = re.compile(r"L\['(\w+)'\]\.size\(\)\[(\d+)\]")


@dataclass
class AxisDecision:
    """Whether one input axis is exported dynamic, and why; ``to_dict()`` holds every field by its name:
    ``input``, ``axis``, ``label``, ``dynamic``, ``why``, ``requested``, ``min``, ``max``."""

    input: str
    axis: int
    label: str
    dynamic: bool
    why: str
    requested: bool = False  # named by the user (--dynamic-axes), not a candidate
    min: int | None = None
    max: int | None = None  # None: unbounded

    def to_dict(self) -> dict:
        """Every field by its name."""
        return asdict(self)

    def line(self) -> str:
        where = f"{self.input}[{self.axis}] ({self.label})"
        if self.dynamic:
            lo = self.min if self.min and self.min > 1 else None
            bound = (f"{lo}..{self.max}" if lo and self.max is not None else f">= {lo}" if lo else
                     f"<= {self.max}" if self.max is not None else "any size")
            return f"{where}: dynamic, {bound}"
        return f"{where}: fixed: {self.why}"


class AxisContradiction(Exception):
    """The model does not allow an axis the user asked to be dynamic."""

    def __init__(self, input_name, axis, label, reason):
        self.input, self.axis, self.label, self.reason = input_name, axis, label, reason
        super().__init__(f"--dynamic-axes {input_name}:{axis}={label}: the model does not allow axis {axis} of "
                         f"{input_name!r} to vary ({reason}); drop it (e.g. {input_name}:static) or make the model "
                         "accept any size there")


def candidate_axes(names, tensors, rnn_mode=None) -> dict[str, dict[int, str]]:
    """The axes proposed as dynamic (torch.export keeps those the model allows)."""
    out = {}
    for name, t in zip(names, tensors):
        a = {0: "batch"} if t.dim() >= 1 else {}
        for k, label in CANDIDATE_LABELS.get(t.dim(), {}).items():
            if label == "seq" and rnn_mode in ("unroll", "step"):
                continue  # a Python loop over time is unrolled: its length is baked in
            a[k] = label
        out[name] = a
    return out


class _GuardLog(logging.Filter):
    """Collects torch's symbolic-shapes records: which symbol stands for which input axis, and each
    guard with the model's source line that raised it. A filter on the logger, not a handler: it sees
    every record and lets none through (torch's own handlers would print them) unless ``passthrough``."""

    def __init__(self, passthrough=False):
        super().__init__()
        self.passthrough = passthrough
        self.symbols: dict[str, tuple[str, int]] = {}  # s27 -> (parameter, axis)
        self.guards: list[tuple[str, str]] = []  # (message, model source line)

    def filter(self, record):
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a log filter must never raise into the tracer
            return self.passthrough
        m = re.match(r"create_symbol (\w+) = \S+ for " + _SOURCE.pattern, msg)
        if m:
            self.symbols[m.group(1)] = (m.group(2), int(m.group(3)))
        elif msg.startswith(("eval ", "runtime_assert ", "set_replacement ")):
            self.guards.append((msg.split(", for more info")[0], _user_frame()))
        return self.passthrough

    def reason(self, sym: str, value: int) -> str | None:
        """Why ``sym`` was fixed at ``value``: the first guard pinning it, and where it came from."""
        pat = re.compile(rf"\b{re.escape(sym)}\b")
        for msg, where in self.guards:
            if pat.search(msg) and (f"Eq({sym}, {value})" in msg or f"{sym} = {value}" in msg
                                    or f"Eq({value}, {sym})" in msg):
                expr = pat.sub("size", re.sub(r"\s*\[guard added\].*", "", msg))
                return f"the model requires size {value} ({expr.split(' ', 1)[-1]}" + (f" at {where})" if where else ")")
        return None


def _user_frame(frames=None) -> str:
    """The innermost frame of the user's code (not torch, not ln_deploy, not the standard library), in
    ``frames`` (an exception's ``traceback.extract_tb``) or else the current stack."""
    for fr in reversed(traceback.extract_stack()[:-3] if frames is None else frames):
        f = fr.filename.replace("\\", "/")
        if ("/torch/" in f or "/ln_deploy/" in f or f.startswith("<") or "/logging/" in f
                or "/python3." in f and "site-packages" not in f):
            continue
        line = (fr.line or "").strip()
        return f"{f.rsplit('/', 1)[-1]}:{fr.lineno} in {fr.name}" + (f": {line[:120]}" if line else "")
    return ""


@contextlib.contextmanager
def _capture_guards():
    log = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    glog = _GuardLog(passthrough=logging.getLogger().level <= logging.DEBUG)  # --debug still shows them
    level = log.level
    log.addFilter(glog)
    log.setLevel(logging.INFO)
    try:
        yield glog
    finally:
        log.removeFilter(glog)
        log.setLevel(level)


def export_program(module, args, params, input_names, candidates, requested):
    """torch.export with Dim.AUTO on candidate axes and Dim.DYNAMIC on requested ones.

    ``candidates``/``requested``: {input name: {axis: label}}; an input present in ``requested`` takes
    only its requested axes (``{}``: all static). Returns (ExportedProgram, [AxisDecision]).
    Raises AxisContradiction, or the exporter's own exception when the model cannot be exported."""
    import torch
    from torch.export import Dim

    from ..spec import attributes_restored

    axes = []  # (input, axis, label, requested)
    for name, t in zip(input_names, args):
        if name in requested:
            axes += [(name, k % t.dim(), lab, True) for k, lab in requested[name].items()]
        else:
            axes += [(name, k, lab, False) for k, lab in candidates.get(name, {}).items()]
    shapes = []
    for name, t in zip(input_names, args):
        mine = {k: (Dim.DYNAMIC if req else Dim.AUTO) for n, k, _, req in axes if n == name}
        shapes.append(mine or None)
    with _capture_guards() as glog:
        try:
            with attributes_restored(module):  # tracing runs forward() on the real module
                ep = torch.export.export(module, tuple(args), dynamic_shapes=tuple(shapes), strict=False)
        except Exception as e:  # noqa: BLE001 - sorted below: a contradiction, or dynamo cannot export
            _raise_contradiction(e, axes, params, input_names, glog)
            raise
    return ep, _decisions(ep, axes, params, input_names, args, glog)


def _raise_contradiction(e, axes, params, input_names, glog) -> None:
    text = str(e)
    if "Constraints violated" not in text and "marked" not in text:
        return
    by_param = dict(zip(params, input_names))
    for pname, k in ((m.group(1), int(m.group(2))) for m in _SOURCE.finditer(text)):
        name = by_param.get(pname)
        hit = next(((n, a, lab) for n, a, lab, req in axes if req and n == name and a == k), None)
        if hit is None:
            continue
        why = next((ln.strip(" -") for ln in text.splitlines() if f"L['{pname}'].size()[{k}]" in ln
                    and ln.strip().startswith("-")), "")
        why = re.sub(r"\. If you're using .*", "", why)
        const = re.search(r"constant \((\d+)\)", why)
        where = glog.reason(next((s for s, v in glog.symbols.items() if v == (pname, k)), ""),
                            int(const.group(1))) if const else None
        raise AxisContradiction(hit[0], hit[1], hit[2], (why or "torch.export refused it").replace(
            f"L['{pname}']", hit[0]) + (f"; {where}" if where else "")) from None


def _decisions(ep, axes, params, input_names, args, glog) -> list[AxisDecision]:
    import torch

    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    user = list(ep.graph_signature.user_inputs)
    shapes = {}
    for pname, name in zip(params, input_names):
        node = placeholders.get(user[params.index(pname)]) if len(user) == len(params) else None
        val = node.meta.get("val") if node is not None else None
        shapes[name] = list(val.shape) if val is not None else None
    ranges = {str(k): v for k, v in ep.range_constraints.items()}
    out = []
    for name, k, label, req in axes:
        t = args[input_names.index(name)]
        size = int(t.shape[k])
        shape = shapes.get(name)
        d = shape[k] if shape is not None else None
        if isinstance(d, torch.SymInt) and d.node.expr.free_symbols:  # a SymInt can wrap a constant
            sym = str(d.node.expr)
            r = ranges.get(sym)
            upper, lower = None, 1
            if r is not None and getattr(r.upper, "is_Integer", False):  # int_oo (unbounded) is not
                upper = int(r.upper)
            # torch.export's own floor is 2 (it assumes sizes 0/1 are special); a higher one is the model's
            if r is not None and getattr(r.lower, "is_Integer", False) and int(r.lower) > 2:
                lower = int(r.lower)
            out.append(AxisDecision(name, k, label, True, "torch.export keeps it symbolic", req, lower, upper))
            continue
        pname = params[input_names.index(name)]
        sym = next((s for s, v in glog.symbols.items() if v == (pname, k)), None)
        why = glog.reason(sym, size) if sym else None
        if why is None:
            why = (f"the example has size {size} there, and torch.export specialises sizes 0 and 1: give an "
                   f"example with size >= 2 to keep it dynamic" if size <= 1 else
                   f"torch.export specialised it to the example's size {size}")
        out.append(AxisDecision(name, k, label, False, why, req))
    return out
