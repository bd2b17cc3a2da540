"""``fuse_model`` / ``fuse_file``: recognise normalization in any ONNX graph and fuse it.

Pipeline: topological sort (when the file is out of order) → the ONNX checker → shape inference →
onnx_ir → the exact canonical forms (``canonical``: constant folding, shape no-ops, common
subexpressions) → canonical Cast chains → the rule families (``rules/``) until nothing changes →
lowering to the target (``lower``) → dead-node removal → the safety check in ONNX Runtime
(``verify``), bisected to one rewrite when it fails. The input model is never modified.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field

from ..errors import BadInputError, CheckFailedError

TARGETS = ("onnx", "tensorrt")


@dataclass
class FuseReport:
    """What ``fuse_model`` did; ``to_dict()`` (the ``--report`` JSON) holds every field by its name:
    ``target``; ``fused`` ({op: count}); ``rejected`` (``Rejection.to_dict()`` per near-miss, with its
    reason); ``nodes_before``/``nodes_after``; ``opset_before``/``opset_after``; ``channels_first`` (norms
    fused through a Transpose); ``notes``; ``verified`` (checked in ONNX Runtime) and
    ``max_relative_error`` (its worst error, or None); ``seconds``; ``rewrites`` ({rule, nodes} per
    rewrite, in order); ``canonicalised`` ({what the canonical forms changed: count})."""

    target: str
    fused: dict
    rejected: list
    nodes_before: int
    nodes_after: int
    opset_before: int
    opset_after: int
    channels_first: int = 0
    notes: list = field(default_factory=list)
    verified: bool = False
    max_relative_error: float | None = None
    seconds: float = 0.0
    rewrites: list = field(default_factory=list)
    canonicalised: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Every field by its name (``seconds`` rounded to ms)."""
        return {
            "target": self.target,
            "fused": self.fused,
            "rejected": self.rejected,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "opset_before": self.opset_before,
            "opset_after": self.opset_after,
            "channels_first": self.channels_first,
            "notes": self.notes,
            "verified": self.verified,
            "max_relative_error": self.max_relative_error,
            "seconds": round(self.seconds, 3),
            "canonicalised": self.canonicalised,
            "rewrites": self.rewrites,
        }

    @property
    def total_fused(self) -> int:
        return self.fused["LayerNormalization"] + self.fused["RMSNormalization"]

    def summary(self) -> str:
        f = self.fused
        lines = [
            f"fused ({self.target}): {f['LayerNormalization']} LayerNorm, {f['RMSNormalization']} RMSNorm"
            + (f", {f['SkipLayerNormalization']} with the residual add (SkipNorm)" if self.target == "tensorrt" else "")
            + (f" ({self.channels_first} channels-first, via Transpose)" if self.channels_first else ""),
            f"nodes: {self.nodes_before} -> {self.nodes_after}"
            + (f"; opset {self.opset_before} -> {self.opset_after}" if self.opset_after != self.opset_before else ""),
        ]
        if self.verified:
            lines.append(f"checked in ONNX Runtime: max relative error {self.max_relative_error:.2g}")
        for n in self.notes:
            lines.append(f"note: {n}")
        if self.rejected:
            lines.append(f"left as is ({len(self.rejected)}):")
            for r in self.rejected:
                nodes = ", ".join(r["nodes"][:4]) + (", ..." if len(r["nodes"]) > 4 else "")
                lines.append(f"  - {r['reason']} [{nodes}]")
        return "\n".join(lines)


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


_RULESETS: dict = {}


def _rule_sets(extra):
    from . import rules as R

    key = tuple(id(r) for r in extra or ())
    if key not in _RULESETS:
        core = list(extra or []) + R.CORE_RULES
        _RULESETS[key] = (R.rule_set(R.CANONICAL_RULES), R.rule_set(core + R.FOLD_RULES))
    return _RULESETS[key]


def _run(proto, target: str, limit: int | None = None, extra_rules=None):
    """One fusion pass over a copy of ``proto``: (fused ModelProto, context, counts)."""
    import onnx
    import onnx_ir as ir
    import onnx_ir.passes.common as passes

    from ._common import FuseContext, fuse_context
    from .canonical import canonicalise
    from .lower import lower

    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # noqa: BLE001 - fusion still works where shapes are known from elsewhere
        inferred = proto
    model = ir.from_proto(inferred)
    seen = Counter()
    for node in model.graph:
        if not node.name:
            seen[node.op_type] += 1
            node.name = f"{node.op_type}_{seen[node.op_type]}"
    ctx = FuseContext(target=target, opset=_opset(proto), limit=limit)
    ctx.canonicalised = dict(canonicalise(model))
    canonical, main = _rule_sets(extra_rules)
    with fuse_context(ctx):
        ctx.new_pass()
        if canonical.apply_to_model(model):
            passes.IdentityEliminationPass()(model)
        for _ in range(8):
            ctx.new_pass()
            if not main.apply_to_model(model):
                break
        counts = lower(model, target)
    passes.RemoveUnusedNodesPass()(model)
    passes.RemoveUnusedOpsetsPass()(model) if hasattr(passes, "RemoveUnusedOpsetsPass") else None
    model.graph.opset_imports.setdefault("", ctx.opset)
    return ir.to_proto(model), ctx, counts


def _checkable(fused, target):
    """The model ONNX Runtime runs for the check: plugin nodes expanded for the tensorrt target."""
    if target != "tensorrt":
        return fused
    from ..plugin_reference import expand_plugin_nodes

    return expand_plugin_nodes(fused)[0]


def _restore_node_metadata(before, after) -> None:
    """The version converter drops every node's metadata_props (the module paths localisation
    reads); it keeps node names, so copy them back by name (subgraphs included)."""
    from ..onnx_graph import all_nodes

    props = {n.name: n.metadata_props for n in all_nodes(before.graph) if n.name and n.metadata_props}
    for n in all_nodes(after.graph):
        if not n.metadata_props and n.name in props:
            n.metadata_props.extend(props[n.name])


def _upgrade(proto, want: int, notes: list):
    import onnx
    from onnx import version_converter

    have = _opset(proto)
    if want <= have:
        return proto
    try:
        new = version_converter.convert_version(proto, want)
        onnx.checker.check_model(new)
        _restore_node_metadata(proto, new)
        notes.append(f"opset raised from {have} to {want} with the ONNX version converter")
        return new
    except Exception as e:  # noqa: BLE001 - the converter fails in many ways; fusion goes on at the old opset
        notes.append(f"could not raise opset {have} to {want} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                     "normalizations that need it are left as they are")
        return proto


def fuse_model(model, target: str = "onnx", *, opset: int | None = None, verify: bool = True,
               seed: int = 0, extra_rules=None):
    """Fuse normalization patterns in ``model`` (an ``onnx.ModelProto`` or a path).

    target: ``"onnx"`` (standard LayerNormalization/RMSNormalization) or ``"tensorrt"``
    (LnDeployNorm/LnDeploySkipNorm plugin nodes). ``opset``: raise the model to at least this opset
    first (e.g. 23 for RMSNormalization); models below 17 are raised to 17 for the onnx target.
    ``verify``: run the safety check (raises CheckFailedError naming the rewrite at fault).
    ``extra_rules``: more onnxscript rules tried before the built-in ones (tests use this).
    Returns ``(fused ModelProto, FuseReport)``.
    """
    import onnx

    from .. import progress

    if target not in TARGETS:
        raise BadInputError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if opset is not None and not 1 <= opset <= onnx.defs.onnx_opset_version():
        raise BadInputError(f"opset {opset} is not one the installed onnx knows (1..{onnx.defs.onnx_opset_version()})")
    t0 = time.perf_counter()
    notes: list[str] = []
    if isinstance(model, (str, os.PathLike)):
        model = _load(model, notes)
    if not isinstance(model, onnx.ModelProto):
        raise BadInputError(f"expected an onnx.ModelProto or a path, got {type(model).__name__}")
    model = _sorted(model, notes)
    original = model
    opset_before = _opset(original)
    want = max(opset or 0, 17 if target == "onnx" else 0)
    work = _upgrade(original, want, notes) if want > opset_before else original

    with progress.step(f"fusing normalization ({target} target)"):
        fused, ctx, counts = _run(work, target, extra_rules=extra_rules)
    n_fused = counts["LayerNormalization"] + counts["RMSNormalization"]
    if n_fused == 0 and work is not original:
        notes = [n for n in notes if not n.startswith("opset raised")] + ["nothing fused; the model is unchanged"]
        fused, ctx, counts = _run(original, target, extra_rules=extra_rules)
    report = FuseReport(
        target=target,
        fused={"LayerNormalization": counts["LayerNormalization"], "RMSNormalization": counts["RMSNormalization"],
               "SkipLayerNormalization": counts["SkipLayerNormalization"]},
        rejected=[r.to_dict() for r in ctx.rejections],
        nodes_before=len(original.graph.node),
        nodes_after=len(fused.graph.node),
        opset_before=opset_before,
        opset_after=_opset(fused),
        channels_first=counts["channels_first"],
        notes=notes + ctx.notes,
        rewrites=[{"rule": a.rule, "nodes": a.nodes} for a in ctx.applied],
        canonicalised=ctx.canonicalised,
    )
    if any(r["rule"].startswith("RMSNorm") and "opset" in r["reason"] for r in report.rejected):
        report.notes.append("RMS normalization needs opset 23 for the onnx target; pass opset=23 (--opset 23) "
                            "or use the tensorrt target")
    if verify and ctx.applied:
        from .verify import compare

        with progress.step("checking the fused model against the original in ONNX Runtime"):
            mismatches, worst = compare(original, _checkable(fused, target), seed,
                                        float32_compute=target == "tensorrt")
        if mismatches:
            culprit = _bisect(original, work, target, len(ctx.applied), extra_rules, seed)
            where = f"; first bad rewrite: {culprit['rule']} on nodes {', '.join(culprit['nodes'])}" if culprit else ""
            raise CheckFailedError(f"fused model differs from the original: {mismatches[0]}{where}; nothing written")
        report.verified, report.max_relative_error = True, worst
    report.seconds = time.perf_counter() - t0
    return fused, report


def _bisect(original, work, target, n, extra_rules, seed):
    """The first rewrite whose inclusion makes the check fail (rewrites are applied in a fixed order)."""
    from .verify import compare

    _, ctx, _ = _run(work, target, extra_rules=extra_rules)
    lo, hi = 0, n  # limit=hi fails; limit=lo is assumed to pass
    while hi - lo > 1:
        mid = (lo + hi) // 2
        fused, _, _ = _run(work, target, limit=mid, extra_rules=extra_rules)
        bad, _ = compare(original, _checkable(fused, target), seed, float32_compute=target == "tensorrt")
        if bad:
            hi = mid
        else:
            lo = mid
    a = ctx.applied[hi - 1] if hi - 1 < len(ctx.applied) else None
    return {"rule": a.rule, "nodes": a.nodes} if a else None


def _sort_note(moved: int) -> str:
    return (f"the nodes were not in topological order ({moved} moved); sorted first "
            "(ONNX requires the order, ONNX Runtime does not)")


def _sorted(model, notes: list):
    """The model in topological order (a sorted copy when it was not), with a note."""
    from .canonical import sort_proto

    model, moved = sort_proto(model)
    if moved:
        notes.append(_sort_note(moved))
    return model


def _load(path, notes: list):
    """Load an untrusted model file as ``fileio.load_onnx`` does, except that a graph whose only
    defect is node order is sorted (with a note) before the ONNX checker runs."""
    import onnx

    from ..fileio import load_onnx
    from .canonical import sort_proto

    model = load_onnx(path, check=False)
    model, moved = sort_proto(model)
    if moved:
        notes.append(_sort_note(moved))
    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInputError(f"{path} fails the ONNX checker: {first[:300]}") from None
    except ValueError:  # > 2 GB in memory: the checker reads the file instead
        if not moved:
            load_onnx(path, load_external_data=False)
    return model


def fuse_file(in_path, out_path, target: str = "onnx", *, report_path=None, **kwargs) -> FuseReport:
    """Load an untrusted model file, fuse it, check it, and write it (and the report) atomically."""
    from ..fileio import check_output_path, save_onnx_atomic, write_text_atomic

    check_output_path(out_path)
    if report_path is not None:
        check_output_path(report_path)
    fused, report = fuse_model(in_path, target, **kwargs)
    save_onnx_atomic(fused, out_path)
    if report_path is not None:
        write_text_atomic(report_path, json.dumps(report.to_dict(), indent=2) + "\n")
    return report
