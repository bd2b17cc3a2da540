"""``check_model``: does the deployed model compute what the trained model computes, and if not, where
does it first go wrong?

Runners (Polygraphy's comparator): PyTorch fp32 (the reference, ``TorchRunner``), ONNX Runtime (CPU
provider; CUDA provider when present), TensorRT (Polygraphy's runner, when an engine is given and
TensorRT and a GPU are present; otherwise reported as skipped with the reason). Every deployed runtime is
compared with the reference, never with another deployed runtime.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from .. import progress
from ..errors import BadInputError
from ..onnx_graph import all_nodes
from ..fileio import load_onnx
from .inputs import (InputGenerator, cast_feed, check_report_dir, load_npz, onnx_output_names,
                     validate_model_pair)
from .invariance import (Backend, InvarianceResult, batch_independence, batch_statistics_modules,
                         kernel_bitwise_invariance, padding_leak, sequence_independence, train_eval)
from .options import CheckOptions
from .report import CheckReport
from .tolerances import compare_funcs, describe_error, evaluate, make_profile

log = logging.getLogger(__name__)

REFERENCE = "pytorch-fp32"


def detect_precision(model) -> str:
    """fp16/bf16 when most floating-point initializer elements are stored in that type, else fp32.

    Initializers of Scan/Loop/If bodies count too: a recurrent model exported in scan mode keeps every
    weight in its Scan body."""
    from .localise import subgraphs

    def initializers(graph):
        yield from graph.initializer
        for node in graph.node:
            for _, sub in subgraphs(node):
                yield from initializers(sub)

    declared = {p.key: p.value for p in model.metadata_props}.get("ln_deploy.precision")
    if declared in ("fp16", "bf16"):  # what `ln-deploy convert` made it (a bf16 ort-cpu graph keeps
        return declared               # fp32 weights where ORT's CPU provider has no bf16 kernel)
    counts = {"fp32": 0, "fp16": 0, "bf16": 0}
    for t in initializers(model.graph):
        n = 1
        for d in t.dims:
            n *= d
        key = {1: "fp32", 10: "fp16", 16: "bf16"}.get(t.data_type)
        if key:
            counts[key] += n
    return max(counts, key=counts.get) if any(counts.values()) else "fp32"


class _Timer:
    def __init__(self):
        self.t: dict = {}

    def add(self, runner, phase, seconds):
        self.t.setdefault(runner, {}).setdefault(phase, 0.0)
        self.t[runner][phase] += seconds

    def run(self, runner, phase, fn, *a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            self.add(runner, phase, time.perf_counter() - t0)

    def rounded(self):
        return {r: {p: round(s, 3) for p, s in ph.items()} for r, ph in self.t.items()}


@dataclass
class CheckRun:
    """One check in progress: what every step reads (the models, the settings, the tolerance profile,
    the input generator, the runners) and what they fill (the report, the timer)."""

    options: CheckOptions
    loaded: object  # ln_deploy.spec.LoadedModel
    model: object  # the onnx.ModelProto ONNX Runtime runs (plugin nodes expanded)
    out_names: list
    profile: object  # tolerances.ToleranceProfile
    report: CheckReport
    gen: InputGenerator
    timer: _Timer
    plugins: tuple = ()  # the options' plugins, or ln_deploy's own library found for a plugin engine
    reference: object = None  # the TorchRunner
    deployed: list = field(default_factory=list)  # runners.DeployedRuntime, in report order

    @property
    def runners(self) -> list:
        """The reference then every deployed runtime's Polygraphy runner."""
        return [self.reference] + [d.runner for d in self.deployed]


def check_model(spec, onnx_path, *, options: CheckOptions | None = None, **kwargs) -> CheckReport:
    """Check an exported model against its PyTorch original.

    Args:
        spec: a SPEC string (``path/file.py:NAME``) or a ``LoadedModel``.
        onnx_path: the deployed ONNX model (exported, fused and/or converted).
        options: a ``CheckOptions`` (every setting; see its docstring), or None.
        **kwargs: ``CheckOptions`` fields, applied over ``options``: ``checkpoint``, ``engine`` (a TensorRT
            engine built from the model, run where TensorRT and a GPU are present), ``plugins``,
            ``precision`` ("auto" reads it from the model; selects the tolerance profile), ``report_dir``
            (report.json, report.md, error plots, run_results.json), ``inputs`` (None: the example inputs
            and one seeded random batch; "example", "random", or a .npz of real inputs, one array per input
            name or ``NAME__i`` for several feeds), ``seed``, ``tolerances`` (``{"atol": 1e-3 | {"": 1e-3,
            "output_1": 1e-2}, "rtol": ...}``), ``localise``, ``invariance``, ``batch_size``, ``threads``,
            ``plots``, ``torch_device``, ``max_batch`` (also verify the batch axis at this size; every shape
            run is in ``report.shapes``).

    Returns a ``CheckReport``; ``report.passed`` is the verdict (the CLI turns False into exit 1).
    Raises ``BadInputError`` for unusable input (mismatched SPEC/ONNX, unreadable files, bad options).
    """
    t_start = time.perf_counter()
    opts = CheckOptions.from_call(options, kwargs)
    report_path = check_report_dir(opts.report_dir)
    timer = _Timer()

    from polygraphy.logger import G_LOGGER

    old_severity = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.ERROR + 10  # ln_deploy reports; Polygraphy's own log stays quiet
    try:
        with progress.step("loading the PyTorch model and the ONNX model"):
            from ..spec import LoadedModel, load_spec

            loaded = spec if isinstance(spec, LoadedModel) else load_spec(spec, opts.checkpoint)
            model = load_onnx(onnx_path)
            onnx_ins = validate_model_pair(loaded, model, onnx_path)
            _same_weights(loaded, model, onnx_path)
            model, expanded = _expand_plugin_nodes(model)
        precision = detect_precision(model) if opts.precision == "auto" else opts.precision
        profile = make_profile(precision, opts.tolerances)
        out_names = onnx_output_names(model)
        engine, plugins = opts.engine, opts.plugins
        _validate_paths_and_overrides(engine, plugins, profile, out_names)
        report = CheckReport(spec=loaded.spec, onnx=str(onnx_path), precision=precision, reference=REFERENCE,
                             engine=str(engine) if engine else None, tolerances=profile.to_dict())
        if engine and expanded and not plugins:
            from ..kernels import plugin_library

            found = plugin_library()  # the engine holds ln_deploy plugin layers: a built or installed copy
            if found is not None:
                plugins = (str(found),)
                report.notes.append(f"loaded ln_deploy's TensorRT plugin {found} (ln_deploy.kernels.plugin_library; "
                                    "--plugin chooses another)")

        if expanded:
            report.notes.append(
                f"the model holds {expanded} ln_deploy TensorRT plugin node(s), which ONNX Runtime cannot run: it ran "
                "their standard-op reference (fp32 statistics) instead, so this checks the fused graph; the plugin's "
                "kernels are checked with --engine")
        recorded = {p.key: p.value for p in model.metadata_props}.get("ln_deploy.spec")
        if recorded and recorded.rpartition(":")[2] != loaded.spec.rpartition(":")[2]:
            report.notes.append(f"the ONNX model records that it was exported from {recorded}, not {loaded.spec}")
        gen = InputGenerator(loaded, opts.seed, onnx_ins)
        feeds, source = _feeds(opts.inputs, gen, loaded, onnx_ins)
        report.inputs = {"source": source, "feeds": len(feeds), "seed": opts.seed,
                         "shapes": {k: list(v.shape) for k, v in feeds[0].items()}}

        run = CheckRun(opts, loaded, model, out_names, profile, report, gen, timer, plugins=plugins)
        _make_runners(run)
        from polygraphy.comparator import Comparator, RunResults

        results = RunResults()
        for runner in run.runners:
            with progress.step(f"running {runner.name} on {len(feeds)} feed(s)"):
                rr = timer.run(runner.name, "compare", Comparator.run, [runner], data_loader=feeds)
            for name, iters in rr.items():
                results.append((name, iters))
        _compare(run, results)

        with progress.step("running every shape the graph's dynamic axes claim"):
            _shape_sweep(run)
        norm_shapes = None
        if opts.localise:
            with progress.step("localising: comparing every normalization's output"):
                norm_shapes = _localise(run, feeds[0])
        if opts.invariance:
            with progress.step("invariance checks (train/eval, batch, sequence, padding)"):
                _invariance(run, norm_shapes)

        report.failures += [f"{c['runner']}: output {o!r} differs from PyTorch fp32 beyond tolerance "
                            f"(max abs {c['outputs'][o]['stats'].get('max_abs', float('nan')):.3g})"
                            for c in report.comparisons for o in c["outputs"] if not c["outputs"][o]["passed"]]
        if report.first_divergence:
            fd = report.first_divergence
            report.failures.append(f"{fd['runner']}: first diverging normalization is {fd['module_path']} "
                                   f"({fd['module_class']}), max abs error {fd['stats'].get('max_abs', 0):.3g}")
        report.failures += [f"{r['check']} FAILED on {r['runtime']}: {r['message']}"
                            for r in report.invariance if r["status"] == "failed"]
        report.passed = not report.failures
        report.timings_s = timer.rounded()
        report.total_s = time.perf_counter() - t_start
        if report_path is not None:
            with progress.step(f"writing the report to {report_path}"):
                report.write(report_path, results, plots=opts.plots)
        return report
    finally:
        G_LOGGER.module_severity = old_severity


def _feeds(inputs, gen, loaded, onnx_ins):
    if inputs is None:
        return [gen.example_feed(), gen.feed()], "example inputs + seeded random"
    if inputs == "example":
        return [gen.example_feed()], "example inputs"
    if inputs == "random":
        return [gen.feed()], "seeded random"
    feeds = load_npz(inputs, onnx_ins)
    return [cast_feed(f, loaded) for f in feeds], f"file {inputs}"


def _validate_paths_and_overrides(engine, plugins, profile, out_names) -> None:
    """Files named on the command line exist even where TensorRT is skipped, and per-output
    tolerances name real outputs (a typo would otherwise be ignored silently)."""
    for what, p in [("engine", engine), *(("plugin library", q) for q in plugins or ())]:
        if p is not None and not Path(p).is_file():
            raise BadInputError(f"{what} not found: {p}")
    for key in ("atol", "rtol"):
        unknown = sorted(set(getattr(profile, f"{key}_overrides")) - set(out_names))
        if unknown:
            raise BadInputError(f"--{key} names output(s) {', '.join(unknown)} the model does not have "
                                f"(outputs: {', '.join(out_names)})")


def _same_weights(loaded, model, onnx_path) -> None:
    """Refuse a pair whose weights differ from the exported ones (recorded by `ln-deploy export`):
    the comparison would fail everywhere and blame the first normalization."""
    from ..spec import weights_fingerprint

    meta = {p.key: p.value for p in model.metadata_props}
    recorded = meta.get("ln_deploy.weights_sha256")
    if recorded and recorded != weights_fingerprint(loaded.module):
        source = meta.get("ln_deploy.spec", "another model")
        raise BadInputError(
            f"{onnx_path} was exported (from {source}) with other weights than {loaded.spec} has now (weights "
            "fingerprint differs): pass the --checkpoint used at export, or make the factory build the same weights")


def _expand_plugin_nodes(model):
    """``(model, 0)``, or for a ``fuse --target tensorrt`` model the copy ORT can run and the count."""
    from ..plugin_spec import is_plugin_node

    if not any(is_plugin_node(n) for n in all_nodes(model.graph)):
        return model, 0
    from ..plugin_reference import expand_plugin_nodes

    return expand_plugin_nodes(model)


def _make_runners(run: CheckRun) -> None:
    """The PyTorch reference and every deployed runtime of ``runners.DEPLOYED_RUNTIMES``, each with its
    row in the report (a runtime that cannot run here is a skipped row, with why)."""
    from .inputs import onnx_inputs
    from .runners import RuntimeSetup, Skipped, TorchRunner, deployed_runtimes

    ins = onnx_inputs(run.model)
    dynamic = {i.name: {a: d for a, d in enumerate(i.shape) if not isinstance(d, int)} for i in ins}
    device = run.options.torch_device
    run.reference = TorchRunner(run.loaded, output_names=run.out_names, name=REFERENCE, device=device,
                                dynamic_axes={k: {a: (d or f"dim{a}") for a, d in v.items()}
                                              for k, v in dynamic.items()})
    run.report.runners.append({"name": REFERENCE, "role": "reference", "status": "ran", "device": device})
    setup = RuntimeSetup(run.model.SerializeToString(), ins, engine=run.options.engine, plugins=run.plugins,
                         threads=run.options.threads, timed=run.timer.run)
    for rt in deployed_runtimes(setup):
        if isinstance(rt, Skipped):
            run.report.runners.append({"name": rt.name, "role": "deployed", "status": "skipped", "reason": rt.reason})
            if rt.note:
                run.report.notes.append(rt.note)
            continue
        run.deployed.append(rt)
        run.report.runners.append(rt.report_entry)


def _compare(run: CheckRun, results) -> None:
    """Polygraphy's verdicts (one compare function per statistic), with ln_deploy's error statistics."""
    from polygraphy.comparator import Comparator

    runners, profile, out_names, report = run.runners, run.profile, run.out_names, run.report
    funcs = compare_funcs(profile, out_names)
    pairs = [(i, 0) for i in range(1, len(runners))]
    if not pairs:
        return
    acc = Comparator.compare_accuracy(results, compare_func=funcs, comparisons=pairs)
    ref_iters = results[runners[0].name]
    for i, _ in pairs:
        name = runners[i].name
        comp = {"runner": name, "reference": runners[0].name, "passed": True, "outputs": OrderedDict()}
        iters = results[name]
        for out in out_names:
            verdicts_by_check = []
            for k, fn_result in enumerate(acc):
                per_iter = fn_result[(name, runners[0].name)]
                ok = all(bool(it[out]) if out in it else False for it in per_iter)
                c = profile.checks_for(out)[k]
                verdicts_by_check.append({"stat": c.label, "atol": c.atol, "rtol": c.rtol, "passed": ok})
            worst_stats, worst_err = None, None
            for it_dep, it_ref in zip(iters, ref_iters):
                if out not in it_dep or out not in it_ref:
                    continue
                _, stats, _ = evaluate(it_dep[out], it_ref[out], profile, out)
                if worst_stats is None or stats.get("max_abs", float("inf")) >= worst_stats.get("max_abs", -1):
                    worst_stats = stats
                import numpy as np

                a = np.asarray(it_dep[out], dtype=np.float64)
                b = np.asarray(it_ref[out], dtype=np.float64)
                if a.shape == b.shape:
                    e = np.abs(a - b).ravel()
                    worst_err = e if worst_err is None else np.concatenate([worst_err, e])
            passed = all(v["passed"] for v in verdicts_by_check) and worst_stats is not None
            comp["outputs"][out] = {"passed": passed, "stats": worst_stats or {"missing": True},
                                    "checks": verdicts_by_check, "iterations": len(iters)}
            comp["passed"] &= passed
            if worst_err is not None:
                report._errors.setdefault(out, {})[name] = worst_err
        report.comparisons.append(comp)


def _localise(run: CheckRun, feed):
    """Every normalization's output, PyTorch against each deployed runtime that can expose it; the first
    that diverges is ``report.first_divergence``. Returns the (kind, hidden size) of the compared norms."""
    from .localise import (NormRecorder, computes_norm, find_norm_calls, graph_norm_modules, norm_modules,
                           with_extra_outputs)

    loaded, model, ref_runner, profile, report, timer = (run.loaded, run.model, run.reference, run.profile,
                                                         run.report, run.timer)
    deployed = run.deployed

    # Normalizations by what the graph computes (module paths on fused ops and decomposed chains), plus
    # torch's normalization classes; see localise.py.
    graph_norms = graph_norm_modules(model, loaded.module)
    by_type = norm_modules(loaded.module)
    paths = list(norm_modules(loaded.module, graph_norms))
    if not paths:
        why = ("localisation compared nothing: the graph computes no normalization that module-path metadata ties "
               "to a module, and the PyTorch model has no normalization module")
        report.notes.append(why)
        for r in deployed:
            report.localisation[r.name] = {"norms": [], "notes": [why]}
        return {}
    with ref_runner:
        with NormRecorder(ref_runner.module, paths) as rec:
            timer.run(ref_runner.name, "localise", ref_runner.infer, feed, check_inputs=False)
    counts: dict[str, int] = {}
    for k in rec.outputs:
        counts[k.partition("#")[0]] = counts.get(k.partition("#")[0], 0) + 1
    calls, notes = find_norm_calls(model, paths, counts)
    # A module known only from the graph is a normalization when its output is the norm's (a block calling
    # F.layer_norm halfway through its forward() is not: its output is something else).
    inner = sorted({c.path for c in calls if c.path not in by_type and not c.loops and c.path in graph_norms
                    and graph_norms[c.path].outputs
                    and not computes_norm(model.graph, c.value, graph_norms[c.path])})
    if inner:
        calls = [c for c in calls if c.path not in inner]
        notes.append(f"{len(inner)} module(s) compute a normalization inside forward() but return something else "
                     f"(not compared as normalizations): {', '.join(inner[:3])}")
    kinds = {p: (graph_norms[p].kind if p in graph_norms else _kind_by_class(rec.classes.get(p, "")))
             for p in paths}
    by_key = {c.key: c for c in calls}
    order = [k for k in rec.outputs if k in by_key]  # PyTorch finishing order
    unmatched = [k for k in rec.outputs if k not in by_key]
    if unmatched and not notes:
        notes.append(f"{len(unmatched)} normalization call(s) not found in the ONNX graph "
                     f"(e.g. {', '.join(unmatched[:3])})")
    if not order:
        notes.insert(0, f"localisation compared nothing: none of the {len(paths)} normalization module(s) "
                        "could be aligned with the ONNX graph")
        for r in deployed:
            report.localisation[r.name] = {"norms": [], "notes": notes}
        return {}
    marked, exposed = with_extra_outputs(model, [by_key[k].exposed for k in order])
    marked_bytes = marked.SerializeToString()
    for runner in deployed:
        if runner.not_localised:
            report.localisation[runner.name] = {"norms": [], "notes": [runner.not_localised]}
            continue
        try:
            marked_runner = timer.run(runner.name, "localise", runner.localisation_runner, marked_bytes,
                                      run.options.threads)
            with marked_runner as r:
                outs = timer.run(runner.name, "localise", r.infer, feed)
        except Exception as e:  # e.g. a loop body value whose shape varies per iteration cannot be stacked
            if not any(by_key[k].loops for k in order):
                raise
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            report.localisation[runner.name] = {"norms": [], "notes": notes + [
                f"not localised: the copy exposing the normalization outputs (Scan/Loop body values included) "
                f"failed to run: {msg}"]}
            continue
        norms = []
        run_notes = list(notes)
        for key in order:
            call = by_key[key]
            ref = rec.outputs[key]
            got = outs[exposed[call.exposed]]
            where = {}
            if call.loops:
                # The stacked scan output: one leading axis per enclosing loop, flattened in iteration order.
                got = got.reshape((-1,) + got.shape[len(call.loops):])
                if got.shape[0] != call.iterations:
                    msg = (f"{call.path}: the ONNX loop {' > '.join(call.loop_names)} ran {got.shape[0]} iteration(s) "
                           f"but PyTorch's calls imply {call.iterations}: not compared")
                    if msg not in run_notes:
                        run_notes.append(msg)
                    continue
                got = got[call.iteration]
                where = {"onnx_loop": list(call.loop_names), "iteration": call.iteration}
            if got.shape != ref.shape and got.size == ref.size:
                got = got.reshape(ref.shape)
            passed, stats, checks = evaluate(got, ref, profile, "norm")
            norms.append({"key": key, "module_path": call.path, "call": int(key.partition("#")[2] or 0),
                          "module_class": rec.classes.get(call.path, "?"), "onnx_value": call.value, **where,
                          "onnx_ops": call.op_types, "passed": passed, "stats": stats, "checks": checks})
        report.localisation[runner.name] = {"norms": norms, "notes": run_notes}
        if not norms:
            run_notes.insert(0, "localisation compared nothing on this runtime (see the notes)")
        first = next((n for n in norms if not n["passed"]), None)
        if first is not None and report.first_divergence is None:
            report.first_divergence = {"runner": runner.name, **{k: first[k] for k in (
                "module_path", "call", "module_class", "onnx_value", "onnx_loop", "iteration", "stats", "checks")
                if k in first}}
    # (kind, hidden size) per compared normalization: the kernels the batch-invariance check runs
    return {(kinds[k.partition("#")[0]], int(rec.outputs[k].shape[-1])) for k in order
            if kinds.get(k.partition("#")[0]) and rec.outputs[k].ndim}


def _kind_by_class(cls: str) -> str | None:
    return "rms_norm" if "RMS" in cls else "layer_norm" if "LayerNorm" in cls else None


def _shape_sweep(run: CheckRun) -> None:
    """Every dynamic axis of the graph at the sweep sizes (shape_sweep.plan), PyTorch against each deployed
    runtime that sweeps shapes (ONNX Runtime): a wrong output shape, a run-time failure or values beyond
    tolerance at any claimed shape fails the check, naming the axis and the size. Every shape run is listed
    in the report."""
    from ..shape_sweep import dynamic_dims, plan

    loaded, model, ref_runner, gen, profile, report, timer = (run.loaded, run.model, run.reference, run.gen,
                                                              run.profile, run.report, run.timer)
    max_batch = run.options.max_batch

    example = {n: list(t.shape) for n, t in zip(loaded.input_names, loaded.example_inputs)}
    places = dynamic_dims(model)
    worst = [o["stats"].get("max_abs") for c in report.comparisons for o in c["outputs"].values()]
    with ref_runner:
        ex_out = timer.run(ref_runner.name, "shapes", ref_runner.infer, gen.example_feed(), check_inputs=False)
    report.shapes.append({"case": "example (" + ", ".join(f"{n}{s}" for n, s in example.items()) + ")",
                          "label": "", "size": None, "runner": "all",
                          "passed": all(c["passed"] for c in report.comparisons) if report.comparisons else None,
                          "max_abs": max((w for w in worst if w is not None), default=None), "problem": "",
                          "note": "compared above (output parity)", "inputs": example,
                          "outputs": {k: list(v.shape) for k, v in ex_out.items()}})
    extra = {lab: [max_batch] for lab, ps in places.items() if max_batch and any(k == 0 for _, k in ps)}
    cases = plan(model, example, extra)
    sweeping = [r for r in run.deployed if r.sweeps_shapes]
    if not cases or not sweeping:
        return
    refs = []
    with ref_runner:
        for case in cases:
            feed = gen.feed(shapes=case.shapes)
            try:
                refs.append((feed, timer.run(ref_runner.name, "shapes", ref_runner.infer, feed, check_inputs=False)))
            except BadInputError as e:  # the PyTorch model itself refuses the size the graph claims
                refs.append((feed, f"PyTorch's forward() raises at this size ({str(e).split(': ', 1)[-1]})"))
    for rt in sweeping:
        runner = rt.runner
        with runner:
            for case, (feed, ref) in zip(cases, refs):
                entry = {"case": case.describe(), "label": case.label, "size": case.size, "runner": runner.name,
                         "passed": True, "max_abs": 0.0, "problem": "", "inputs": case.shapes,
                         "outputs": {k: list(v.shape) for k, v in ref.items()} if not isinstance(ref, str) else {}}
                report.shapes.append(entry)
                if isinstance(ref, str):
                    entry["problem"] = ref
                else:
                    try:
                        got = timer.run(runner.name, "shapes", runner.infer, feed, check_inputs=False)
                    except Exception as e:  # noqa: BLE001 - the runtime refusing a shape its graph claims
                        got = None
                        entry["problem"] = f"{rt.label} fails: {str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}"
                    for out, r in (ref.items() if got is not None else ()):
                        o = got.get(out)
                        if o is None or o.shape != r.shape:
                            entry["problem"] = (f"output {out!r} has shape {list(o.shape) if o is not None else None}, "
                                                f"PyTorch gives {list(r.shape)}")
                            break
                        ok, stats, _ = evaluate(o, r, profile, out)
                        entry["max_abs"] = max(entry["max_abs"], float(stats.get("max_abs", 0.0)))
                        if not ok:
                            entry["problem"] = f"output {out!r} differs beyond tolerance ({describe_error(stats)})"
                            break
                entry["passed"] = not entry["problem"]
                if isinstance(ref, str):  # outside the model's own domain: not the graph's fault...
                    entry["passed"], entry["note"] = None, f"skipped: {ref}"
                    ex = next((c.size for c in cases if c.label == case.label and c.shapes == example), None)
                    if ex is None or case.size < 2 * ex:
                        continue
                    entry["passed"] = False  # ...unless the model refuses twice the example: the axis does not scale
                    entry["problem"] = "the PyTorch model refuses twice the example's size on this axis: " + ref
                if entry["problem"]:
                    axes = ", ".join(f"{n}[{k}]" for n, k in places.get(case.label, []))
                    report.failures.append(f"{runner.name}: the graph claims axis {axes} ({case.label}) is dynamic, "
                                           f"but at {case.label}={case.size} ({case.describe().split(' (', 1)[1]} "
                                           f"{entry['problem']}")


def _invariance(run: CheckRun, norm_shapes=None) -> None:
    """Train/eval on PyTorch; batch, sequence and padding invariance on PyTorch and every deployed
    runtime; the kernels' bitwise batch invariance for the model's normalization shapes."""
    import numpy as np

    from .localise import norm_modules

    loaded, ref_runner, gen, profile, report, timer = (run.loaded, run.reference, run.gen, run.profile,
                                                       run.report, run.timer)
    batch_size = run.options.batch_size

    results: list[InvarianceResult] = []
    atol, rtol = profile.invariance_atol, profile.invariance_rtol
    ref_atol, ref_rtol = 1e-5, 1e-4  # the reference is fp32 whatever the deployed precision
    seq_model = bool(getattr(loaded.module, "causal", False)) or loaded.is_recurrent
    mask_name = getattr(loaded.module, "padding_mask_input", None)
    seq_inputs = {n for n in loaded.input_names if gen.has_seq_axis(n)}
    batch_feed = gen.feed(batch=batch_size)
    seq_feed = gen.feed(batch=2)
    pad_feed = gen.feed(batch=batch_size, padded=True) if mask_name else None
    batch_stats = batch_statistics_modules(loaded.module)
    batch_inputs = {n for n in loaded.input_names if (n, 0) not in gen.static} or None

    def run_all(backend, a, r):
        name = backend.name
        results.extend(timer.run(name, "invariance", batch_independence, backend, batch_feed, a, r, batch_stats,
                                 batch_inputs))
        if seq_model and seq_inputs:
            results.append(timer.run(name, "invariance", sequence_independence, backend, seq_feed, seq_inputs, a, r))
        if mask_name:
            rng = np.random.default_rng(12345)
            results.append(timer.run(name, "invariance", padding_leak, backend, pad_feed, mask_name, seq_inputs,
                                     rng, a, r))

    with ref_runner:
        results.append(timer.run(ref_runner.name, "invariance", train_eval, ref_runner, batch_feed, ref_atol, ref_rtol))
        run_all(Backend(ref_runner.name, ref_runner, is_torch=True), ref_atol, ref_rtol)
    for rt in run.deployed:
        ins, runner = rt.inputs, rt.runner
        dtypes = {i.name: np.dtype(i.dtype) for i in ins if i.dtype in ("float16", "float32", "float64")}
        backend = Backend(rt.name, runner, dynamic_batch=not ins[0].is_static(0),
                          dynamic_seq=not (ins[0].rank >= 2 and ins[0].is_static(1)), input_dtypes=dtypes,
                          require_bitwise=rt.require_bitwise)
        with runner:
            run_all(backend, atol, rtol)
    shapes = set(norm_shapes or ())  # from localisation: the norms the graph computes, by what they compute
    for path, m in norm_modules(loaded.module).items():
        cls = type(m).__name__
        shape = getattr(m, "normalized_shape", None) or ([m.weight.shape[0]] if getattr(m, "weight", None) is not None
                                                           else None)
        if shape and ("RMS" in cls or "LayerNorm" in cls):
            shapes.add(("rms_norm" if "RMS" in cls else "layer_norm", int(shape[-1])))
    results += kernel_bitwise_invariance(shapes)
    report.invariance = [r.to_dict() for r in results]


def parity_summary(spec, onnx_path, **kwargs) -> tuple[bool, str]:
    """For ``ln-deploy demo``: check one exported model quietly and return (passed, one-line summary).

    Bad input still raises ``BadInputError``; everything else is in the line."""
    quiet = progress._quiet
    progress.set_quiet(True)
    try:
        report = check_model(spec, onnx_path, **kwargs)
    finally:
        progress.set_quiet(quiet)
    return report.passed, report.summary_line()
