"""fp32 → fp16/bf16 conversion that keeps normalization statistics in fp32.

The plan gives every node one of three precisions:

* ``low``: its float inputs and outputs are fp16/bf16 (weights converted once, offline);
* ``fp32``: policy or measurement says it needs fp32 (decomposed norms, squares, exponentials,
  values beyond fp16's range, nodes whose error blows up against the fp32 reference);
* ``emulate``: (``target="ort-cpu"`` only) a low-precision compute node made explicit for ONNX
  Runtime's CPU provider: fp32 math between a Cast from and a Cast back to the low type, so every
  tensor is stored (rounded) in the low type as on a GPU engine. ORT's CPU provider has few real
  fp16 and almost no bf16 kernels, and where it lacks one it computes in fp32 and drops the
  rounding between nodes, which would hide overflow.

Casts are inserted per tensor and per type, not per consumer; a Cast is never put around a node
whose neighbours share its precision, and lossless round trips (low → fp32 → low) are removed.
Fused ``LayerNormalization``/``RMSNormalization`` get ``stash_type=1`` (fp32 statistics);
ln_deploy's plugin ops accumulate in fp32 by construction and simply take low-precision tensors.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from ..errors import BadInputError, CheckFailedError, InternalError
from . import norms as norms_mod
from .graph import FLOAT, FLOAT16, all_nodes, ensure_node_names, infer_types
from .measure import absmax, finite_absmax, rel_err
from .node_typing import (DATA_MOVEMENT_OPS, DEFAULT_FP32_OPS, FP16_MAX, PRECISIONS, SUBGRAPH_OPS,  # noqa: F401
                          TARGETS, UNIT_ROUNDOFF, Typer, function_body_types, is_plugin, schema_of)
from .planning import Planner, break_norm_fusion
from .options import ConvertOptions
from .report import ConversionReport, fill_report
from .rewrite import Rewriter, decompose_fused_norms, finish_model, set_int_attr  # noqa: F401

log = logging.getLogger(__name__)


def _load(model_or_path):
    import onnx

    from ..fileio import load_onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return copy.deepcopy(model_or_path)
    if isinstance(model_or_path, (str, Path)):
        return load_onnx(model_or_path)
    raise BadInputError(f"expected an ONNX ModelProto or a path, got {type(model_or_path).__name__}")


def check_precision(precision: str) -> int:
    if precision not in PRECISIONS:
        raise BadInputError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    return PRECISIONS[precision]


def convert_model(model_or_path, precision: str | None = None, *, options: ConvertOptions | None = None,
                  **kwargs):
    """Convert an fp32 ONNX model to fp16/bf16 with fp32 normalization statistics.

    Args:
        model_or_path: an ``onnx.ModelProto`` (not modified) or a path (loaded as untrusted).
        precision: "fp16" or "bf16" (None: the options', fp16 by default).
        options: a ``ConvertOptions`` (every setting; see its docstring), or None.
        **kwargs: ``ConvertOptions`` fields, applied over ``options``:
            keep_io_types: graph inputs and outputs keep their fp32 type (Casts at the edges).
            fp32_ops / fp32_nodes: op types / node names always kept in fp32.
            calibration: inputs for the measured check: a ``.npz`` path, a dict name → array, or None
                (the spec's example inputs when ``spec`` is given, else seeded random inputs).
            force_norm_fp16: compute every normalization's statistics in fp16 (fused norms are
                decomposed into primitive ops): the failure demonstration, never for deployment.
            target: "ort-cpu" (default: the typed graph ONNX Runtime runs; nodes its CPU provider has
                no low-precision kernel for run in fp32) or "tensorrt" (the pure typed graph). Either
                way the measured error is the strict one (``ln_deploy.lowp_emulation``).
            fuse, fuser: fuse decomposed normalizations first with ``fuser`` (to LayerNormalization with
                fp32 statistics); what cannot be fused stays decomposed and in fp32. ``fuser`` is called as
                ``fuse_model(model, target="onnx", opset=..., verify=True)``; the convert stage does not
                import the fuse stage, so callers pass it (``ln_deploy.pipeline_steps.convert_model``
                passes ``ln_deploy.fuse.fuse_model``; None = no fusion).
            measure: run the fp32 model and the candidate in ORT on the calibration inputs; keep in
                fp32 the nodes whose values exceed ``data_max`` (fp16) or whose relative error exceeds
                ``tolerance`` (default 16 unit roundoffs) while their inputs' error is 8x smaller, for at
                most ``max_rounds`` rounds.

    Returns ``(onnx.ModelProto, ConversionReport)``. Raises ``BadInputError`` for bad options or input, and
    ``InternalError`` (exit 3) rather than return an ill-typed graph (see ``validate.py``).
    """
    opts = ConvertOptions.from_call(options, precision, kwargs)
    precision, keep_io_types, target, force_norm_fp16 = (opts.precision, opts.keep_io_types, opts.target,
                                                         opts.force_norm_fp16)
    fp32_nodes, measure = opts.fp32_nodes, opts.measure
    from .emulation import strict_emulation
    from .validate import validate_converted

    low = PRECISIONS[precision]
    model = _load(model_or_path)
    source = str(model_or_path) if isinstance(model_or_path, (str, Path)) else "the input model"
    report = ConversionReport(precision, keep_io_types, target, force_norm_fp16)
    ensure_node_names(model.graph)
    if (measure or target == "ort-cpu") and not any(is_plugin(n) for n in all_nodes(model.graph)):
        from .calibration import require_ort_loads

        require_ort_loads(model, source)
    names = {n.name for n in all_nodes(model.graph)}
    unknown = [n for n in fp32_nodes or () if n not in names]
    if unknown:
        raise BadInputError(f"no node named {', '.join(map(repr, unknown))} in {source} (--fp32-node)")
    opsets = {(o.domain if o.domain != "ai.onnx" else ""): o.version for o in model.opset_import}
    main_opset = opsets.get("", 0)
    if any(n.op_type in SUBGRAPH_OPS for n in model.graph.node) and measure:
        report.notes.append("subgraph bodies (Scan/Loop/If) are converted by policy only; "
                            "the measured check sees the main graph")

    if opts.fuse and not force_norm_fp16:
        model = _fuse_first(model, report, opts.fuser)
        # fusing may have raised the opset (RMSNormalization is opset 23)
        opsets = {(o.domain if o.domain != "ai.onnx" else ""): o.version for o in model.opset_import}
        main_opset = opsets.get("", 0)
    forced: list[str] = []
    if force_norm_fp16:
        forced = decompose_fused_norms(model.graph, main_opset)
        report.notes.append("force_norm_fp16: normalization statistics computed in fp16 "
                            "(fused norms decomposed); expect overflow past |x - mean| > 255.9")
    for node in all_nodes(model.graph):
        if node.op_type in ("LayerNormalization", "RMSNormalization"):
            set_int_attr(node, "stash_type", 1)

    orig = infer_types(model)
    typer = Typer(low, opsets, orig)
    planner = Planner(model, typer, {"fp32_ops": opts.fp32_ops, "fp32_nodes": opts.fp32_nodes}, report)
    sites = norms_mod.find_normalizations(model.graph, model=model)
    if force_norm_fp16:
        planner.forced_low = set(forced) | {n for s in sites if s.form == "decomposed" for n in s.nodes}
    planner.policy(model.graph)

    has_plugins = any(is_plugin(n) for n in all_nodes(model.graph))
    feeds = None
    if measure:
        if has_plugins:
            report.notes.append("the model holds TensorRT plugin ops ORT cannot run: measured check skipped "
                                "(convert before fusing with --target tensorrt, or rely on the policy)")
            measure = False
        else:
            from .calibration import load_calibration

            feeds = load_calibration(opts.calibration, model, spec=opts.spec)

    def build(plan):
        """The converted model for ``plan`` (node key -> low | fp32 | emulate): a new model and report,
        nothing else changed (``model``, the planner and ``plan`` are only read)."""
        m = copy.deepcopy(model)
        rep = ConversionReport(precision, keep_io_types, target, force_norm_fp16)
        Rewriter(typer, dict(plan), rep, target).rewrite(m.graph, "", keep_io_types)
        return m, rep

    measured = {"rounds": 0, "range_fp32": [], "error_fp32": []}
    if measure:
        from .calibration import run_with_values

        float_values = [o for n in model.graph.node for o in n.output if o and orig.get(o) == FLOAT]
        ref = run_with_values(model, feeds, float_values, source=source)
        if low == FLOAT16:
            for node in model.graph.node:
                key = node.name
                vals = [v for v in list(node.input) + list(node.output) if v in ref]
                peak = max((finite_absmax(ref[v]) for v in vals), default=0.0)
                if peak > opts.data_max and planner.plan.get(key) == "low" and key not in planner.forced_low:
                    planner.set(key, "fp32", f"measured: |value| up to {peak:.4g} > data_max {opts.data_max:.4g}")
                    measured["range_fp32"].append(key)
        u = UNIT_ROUNDOFF[low]
        tol = opts.tolerance if opts.tolerance is not None else 16 * u
        prod = {o: n for n in model.graph.node for o in n.output}
        for rnd in range(opts.max_rounds):
            # candidates are measured as the pure typed graph, whatever the target
            typed, _ = build(typed_plan(planner.plan))
            validate_converted(typed, source=model, ort="skip", what=f"the {precision} candidate (measured check)")
            # measured as a strongly typed engine computes it: every op rounded to its declared type
            cand = strict_emulation(typed)
            try:
                got = run_with_values(cand, feeds, [v for v in float_values if v in ref], types_from=cand)
            except Exception as e:
                if not type(e).__module__.startswith("onnxruntime"):
                    raise
                raise InternalError(f"the {precision} candidate (measured check) does not run in ONNX Runtime "
                                    f"and was not written: {str(e).strip().splitlines()[0][:300]}") from None
            err = {v: rel_err(got[v], ref[v]) for v in got}
            culprits = []
            for node in model.graph.node:
                outs = [o for o in node.output if o in err]
                if not outs or node.name in planner.forced_low:
                    continue
                e_out = max(err[o] for o in outs)
                e_in = max([err.get(i, 0.0) for i in node.input if i] + [u])
                if e_out > tol and e_out > 8 * e_in:
                    culprits.append((node, e_out, e_in))
            new = []
            for node, e_out, e_in in culprits:
                if planner.plan.get(node.name) in ("low", "emulate"):
                    new.append(node.name)
                    planner.set(node.name, "fp32", f"measured: relative error {e_out:.3g} vs inputs' {e_in:.3g}")
                else:  # already fp32: the damage was done upstream, by a low-precision producer
                    for i in node.input:
                        p = prod.get(i)
                        if p is not None and planner.plan.get(p.name) in ("low", "emulate") \
                                and p.name not in planner.forced_low and orig.get(i) == FLOAT:
                            new.append(p.name)
                            planner.set(p.name, "fp32", f"measured: its rounding breaks {node.name} "
                                                        f"(relative error {e_out:.3g})")
            measured["rounds"] = rnd + 1
            measured["error_fp32"] += new
            if not new:
                break
        measured["tolerance"] = tol

    if target == "ort-cpu":
        # the CPU provider's kernels decide the last part of the plan: a planning step, before the rewrite
        planner.plan, planner.reason = cpu_plan(planner, model.graph)
        converted, rep = build(planner.plan)
    else:
        converted, rep = build(typed_plan(planner.plan))
    validate_converted(converted, source=model, ort="skip", what=f"the converted {precision} model")
    if target == "ort-cpu":
        converted, rep = _ensure_runs_on_cpu(converted, model, planner, typer, rep, lambda: build(planner.plan))
    rep.notes = report.notes + rep.notes
    rep.measured = measured
    fill_report(rep, model, planner, sites, force_norm_fp16, low)
    if measure and feeds is not None:
        from .calibration import run_outputs

        # whatever the target, the error is the strict one (every op rounded to its declared type):
        # ORT's CPU provider would compute most low-precision ops in fp32 and hide overflow
        measured_form = strict_emulation(converted)
        if target != "ort-cpu":
            validate_converted(measured_form, source=model, what=f"the emulated {precision} model (measured check)")
        ref_out = run_outputs(model, feeds, source=source)
        got_out = run_outputs(measured_form, feeds)
        rep.measured["output_max_abs_error"] = {k: float(absmax(got_out[k].astype("float64") - ref_out[k]))
                                                for k in ref_out}
        rep.measured["output_rel_error"] = {k: rel_err(got_out[k], ref_out[k]) for k in ref_out}
    finish_model(converted, precision, orig)
    # Never hand back an ill-typed graph (a bug here, or a typing rule this module does not know):
    # ORT CPU must load the ort-cpu form (_ensure_runs_on_cpu already made it); the tensorrt form may
    # lack CPU kernels, but nothing else.
    validate_converted(converted, source=model, ort="required" if target == "ort-cpu" else "typing",
                       what=f"the converted {precision} model")
    return converted, rep


def _fuse_first(model, report, fuser):
    """Fuse decomposed normalizations with ``fuser`` (ln_deploy.fuse.fuse_model) when there are any."""
    sites = norms_mod.find_normalizations(model.graph, model=model)
    if not any(s.form == "decomposed" for s in sites):
        return model
    if fuser is None:
        report.notes.append("no fuser given (convert_model(fuser=None)): decomposed normalizations stay in fp32")
        return model
    from ..errors import LnDeployError

    # RMSNorm exists as a standard op (RMSNormalization) from opset 23 only: raise the model to 23
    # when there is one to fuse, whatever its opset, so decoder blocks run in low precision apart
    # from the statistics instead of keeping every decomposed RMSNorm in fp32 (ORT and TensorRT's
    # ONNX parser both take opset 23).
    opset = 23 if any(s.form == "decomposed" and s.kind == "rmsnorm" for s in sites) else None
    try:
        fused, frep = fuser(model, target="onnx", opset=opset, verify=True)
    except LnDeployError as e:
        report.notes.append(f"fusing decomposed normalizations failed ({e}); they stay decomposed, in fp32")
        return model
    n = frep.total_fused
    if n:
        report.notes.append(f"fused {n} decomposed normalization(s) first (ln_deploy.fuse, target onnx): "
                            "they run as one op with fp32 statistics")
        ensure_node_names(fused.graph)
        return fused
    return model


def typed_plan(plan: dict) -> dict:
    """The plan of the pure typed graph (TensorRT, and every measured candidate): a new dict in which
    each ``emulate`` node is ``low``."""
    return {k: ("low" if v == "emulate" else v) for k, v in plan.items()}


def cpu_plan(planner, graph) -> tuple[dict, dict]:
    """(plan, reasons) for the ort-cpu target: the planner's decisions with ``Planner.emulation`` applied
    (nodes ONNX Runtime's CPU provider has no low-precision kernel for go fp32, plugin nodes are
    emulated), as new dicts; ``planner`` is not changed."""
    scratch = copy.copy(planner)  # shares the read-only parts (model, typer, nodes, forced_low)
    scratch.plan, scratch.reason = dict(planner.plan), dict(planner.reason)
    scratch.emulation(graph)
    return scratch.plan, scratch.reason


def _ensure_runs_on_cpu(converted, model, planner, typer, rep, build):
    """Backstop for the per-node probe: emulate any node the CPU session still refuses. ``build()``
    rewrites the model to the planner's current plan."""
    from ..ort import SessionConfig, open_session, parse_error

    if any(is_plugin(n) for n in all_nodes(converted.graph)):
        return converted, rep
    # In this process at ORT_ENABLE_EXTENDED (kernels, type errors, ORT's fusions); the layout
    # optimizers of ORT_ENABLE_ALL, where the known native crashes are, run in the deployment probe.
    for _ in range(50):
        try:
            open_session(converted, SessionConfig(level="extended", log_level=4), probe=False)
            return converted, rep
        except Exception as e:
            msg = str(e)
            name = parse_error(e).node
            if name and "LayerNormFusion" in name:
                # ORT's own LayerNormFusion fuses a decomposed fp32 norm together with the Cast that
                # feeds it and then rejects its own mixed-type node: feed the chain an fp32 tensor.
                if break_norm_fusion(name.split("/")[0], model, planner):
                    converted, rep = build()
                    continue
            key = next((k for k, n in planner.nodes.items() if n.name == name), None) if name else None
            if key is None or planner.plan.get(key) != "low":
                raise InternalError(f"the converted model does not load in ONNX Runtime and was not written: "
                                    f"{msg.strip().splitlines()[0][:300]}") from None
            planner.set(key, "fp32", "ONNX Runtime's CPU provider refuses it in the low type")
            converted, rep = build()
    return converted, rep
