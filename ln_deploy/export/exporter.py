"""PyTorch → ONNX on torch.onnx's dynamo exporter, verified in ONNX Runtime before it is kept."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import interrupts, progress
from ..errors import BadInputError, CheckFailedError
from ..fileio import check_output_path, save_onnx_atomic
from ..shape_sweep import RANGES_KEY
from ..spec import LoadedModel, is_recurrent, load_spec, weights_fingerprint

log = logging.getLogger(__name__)

RNN_MODES = ("scan", "step", "unroll")
MIN_OPSET = 17  # LayerNormalization
NORM_OPS = {"LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization",
            "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "LnDeployNorm", "LnDeploySkipNorm",
            "GroupNormalization", "InstanceNormalization", "BatchNormalization"}


@dataclass
class ExportResult:
    """What ``export_model`` wrote; ``to_dict()`` (export.json) holds every field by its name: ``path``,
    ``input_names``, ``output_names``, ``dynamic_axes`` ({input: {axis: label}}), ``opset``, ``node_count``,
    ``norm_count``, ``max_abs_error`` (against PyTorch), ``rnn_mode``, ``exporter`` (dynamo | legacy),
    ``state``, ``axes`` (``AxisDecision.to_dict()`` each), ``verified`` ({case, max_abs} per shape run),
    ``notes``."""

    path: str
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    opset: int
    node_count: int
    norm_count: int
    max_abs_error: float
    rnn_mode: str | None = None
    exporter: str = "dynamo"
    state: list[dict] = field(default_factory=list)
    axes: list[dict] = field(default_factory=list)  # AxisDecision.to_dict(): dynamic or fixed, and why
    verified: list[dict] = field(default_factory=list)  # every shape run against PyTorch: {case, max_abs}
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Every field by its name."""
        return asdict(self)


def default_dynamic_axes(loaded: LoadedModel, rnn_mode: str | None) -> dict[str, dict[int, str]]:
    """The candidate dynamic axes (see ``axes.candidate_axes``); torch.export keeps those the model allows."""
    from .axes import candidate_axes

    return candidate_axes(loaded.input_names, loaded.example_inputs, rnn_mode)


def parse_dynamic_axes(items: list[str] | None) -> dict[str, dict[int, str]] | None:
    """``NAME:0=batch,1=seq`` (or ``NAME:static``) per input, from the command line."""
    if not items:
        return None
    out = {}
    for item in items:
        name, sep, rest = item.partition(":")
        if not sep or not name:
            raise BadInputError(f"--dynamic-axes {item!r}: expected NAME:AXIS=LABEL[,AXIS=LABEL] or NAME:static")
        if rest == "static":
            out[name] = {}
            continue
        axes = {}
        for part in rest.split(","):
            k, eq, label = part.partition("=")
            if not eq or not k.strip().lstrip("-").isdigit() or not label.strip().isidentifier():
                raise BadInputError(f"--dynamic-axes {item!r}: bad entry {part!r} (expected AXIS=LABEL)")
            axes[int(k)] = label.strip()
        out[name] = axes
    return out


def export_model(spec, output, *, checkpoint=None, opset: int | None = None, rnn_mode: str | None = None,
                 dynamic_axes: dict | None = None, verify: bool = True, exporter: str = "auto",
                 atol: float = 1e-4) -> ExportResult:
    """Export ``spec`` (a SPEC string or a LoadedModel) to ``output``, written only if ORT agrees with PyTorch.

    rnn_mode: for recurrent models, ``scan`` (default: one graph for any sequence length), ``step``
    (the cell with explicit state inputs/outputs) or ``unroll`` (the plain trace, fixed length).
    exporter: ``dynamo`` (torch.onnx's default), ``legacy`` (TorchScript), or ``auto`` (dynamo, then
    legacy if dynamo fails, as it does on some Hugging Face models).
    """
    out = check_output_path(output)
    # A failed export writes nothing and removes nothing: whatever is at the output path may not be
    # ours (a SPEC file, a checkpoint), and the exit code already says this run produced no model.
    return _export_model(spec, out, checkpoint, opset, rnn_mode, dynamic_axes, verify, exporter, atol)


def _export_model(spec, out, checkpoint, opset, rnn_mode, dynamic_axes, verify, exporter, atol):
    if opset is not None and opset < MIN_OPSET:
        raise BadInputError(f"opset {opset} is below {MIN_OPSET}, the first with LayerNormalization")
    if opset is not None and opset > _max_opset():
        raise BadInputError(f"opset {opset} is above {_max_opset()}, the newest torch.onnx exports")
    if not (isinstance(atol, (int, float)) and math.isfinite(atol) and atol >= 0):
        raise BadInputError(f"atol must be a finite number >= 0, got {atol}")
    if exporter not in ("auto", "dynamo", "legacy"):
        raise BadInputError(f"unknown exporter {exporter!r} (auto, dynamo, legacy)")
    loaded = spec if isinstance(spec, LoadedModel) else load_spec(spec, checkpoint)
    recurrent = is_recurrent(loaded.module)
    if rnn_mode is not None and rnn_mode not in RNN_MODES:
        raise BadInputError(f"unknown --rnn-mode {rnn_mode!r} (choose from {', '.join(RNN_MODES)})")
    if rnn_mode in ("scan", "step") and not recurrent:
        raise BadInputError(f"--rnn-mode {rnn_mode} needs a recurrent model (methods step() and initial_state()); "
                            f"{loaded.spec} has none")
    if recurrent and rnn_mode is None:
        rnn_mode = "scan"
    mode = rnn_mode if recurrent else None

    import torch

    notes: list[str] = []
    decisions: list = []
    runs: list = []  # the shapes the sweep ran (non-recurrent models)
    with progress.step(f"exporting {loaded.spec}" + (f" (rnn mode {mode})" if mode else "")):
        if mode in ("scan", "step"):
            model, names, state_meta, used, verify_fn = _export_recurrent(loaded, mode, opset, exporter)
        else:
            if dynamic_axes is not None:
                _check_axes(loaded, dynamic_axes)
            out_names = _output_names(loaded)
            model, used, decisions, runs = _export_module(loaded, out_names, dynamic_axes or {}, opset, exporter,
                                                          mode, notes, atol)
            names, state_meta = (loaded.input_names, out_names), []
            verify_fn = None
    input_names, output_names = names
    err, verified = 0.0, []
    if verify:
        with progress.step("verifying the ONNX model in ONNX Runtime against PyTorch at every claimed shape"):
            if verify_fn:
                err = verify_fn(model)
            else:
                err, verified = _verify_claimed_shapes(model, loaded, input_names, output_names, decisions, runs)
            if err > atol:
                raise CheckFailedError(f"exported model disagrees with PyTorch: max abs error {err:.3g} > {atol:g}; "
                                       "nothing written")
    dyn = _graph_dynamic_axes(model)
    n_nodes, n_norm = count_nodes(model)
    opset_used = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    meta = {
        "ln_deploy.spec": loaded.spec,
        "ln_deploy.weights_sha256": weights_fingerprint(loaded.module),
        "ln_deploy.torch_version": torch.__version__,
        "ln_deploy.opset": str(opset_used),
        "ln_deploy.dynamic_axes": json.dumps(dyn),
        "ln_deploy.norm_count": str(n_norm),
        "ln_deploy.exporter": used,
    }
    examples = {n: list(t.shape) for n, t in zip(loaded.input_names, loaded.example_inputs)
                if n in input_names and hasattr(t, "shape")}
    if examples:  # sizes the model is known to accept: fuse's safety check feeds these (fuse/verify.py)
        from ..onnx_graph import META_EXAMPLE_SHAPES

        meta[META_EXAMPLE_SHAPES] = json.dumps({n: [int(d) for d in s] for n, s in examples.items()})
    if decisions:
        meta["ln_deploy.axes"] = json.dumps([d.to_dict() for d in decisions])
        meta[RANGES_KEY] = json.dumps(_ranges(model, decisions))
    if verified:
        meta["ln_deploy.verified_shapes"] = json.dumps([v["case"] for v in verified])
    if mode:
        meta["ln_deploy.rnn_mode"] = mode
    if state_meta:
        meta["ln_deploy.rnn_state"] = json.dumps([{k: v for k, v in s.items() if k != "onnx_dtype"}
                                                  for s in state_meta])
    set_metadata(model, meta)
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise CheckFailedError(f"the exported model fails the ONNX checker: {str(e).splitlines()[0]}") from None
    save_onnx_atomic(model, out)
    return ExportResult(path=str(out), input_names=list(input_names), output_names=list(output_names),
                        dynamic_axes=dyn, opset=opset_used, node_count=n_nodes, norm_count=n_norm,
                        max_abs_error=err, rnn_mode=mode, exporter=used, state=[
                            {k: v for k, v in s.items() if k != "onnx_dtype"} for s in state_meta],
                        axes=[d.to_dict() for d in decisions], verified=verified, notes=notes)


def _ranges(model, decisions) -> dict:
    """dim_param -> [min, max] (max None: unbounded) from torch.export's range constraints."""
    out = {}
    for vi in model.graph.input:
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            dec = next((x for x in decisions if x.input == vi.name and x.axis == k and x.dynamic), None)
            if d.dim_param and dec is not None and d.dim_param not in out:
                out[d.dim_param] = [dec.min or 1, dec.max]
    return out


def _max_opset() -> int:
    from torch.onnx import _constants

    return getattr(_constants, "ONNX_MAX_OPSET", 23)


def _output_names(loaded: LoadedModel) -> list[str]:
    import torch

    from ..spec import attributes_restored, flatten_output, output_names_of

    try:
        with torch.no_grad():
            args, kwargs = loaded.arguments(loaded.example_inputs)
            with attributes_restored(loaded.module):
                y = loaded.module(*args, **kwargs)
    except Exception as e:  # the user's forward(): one line, not a traceback
        raise BadInputError(f"{loaded.spec}: forward() on the example inputs raised {type(e).__name__}: "
                            f"{_first_line(e)}") from None
    if not flatten_output(y):
        got = type(y).__name__ if not isinstance(y, (tuple, list)) else \
            f"{type(y).__name__} of {', '.join(type(o).__name__ for o in y) or 'nothing'}"
        raise BadInputError(f"{loaded.spec}: forward() returned {got}, which holds no tensor; export needs a tensor, "
                            "a tuple/list/dict of tensors or a ModelOutput/dataclass with tensor fields")
    return output_names_of(y)


def _check_axes(loaded: LoadedModel, axes: dict) -> None:
    for name, a in axes.items():
        if name not in loaded.input_names:
            raise BadInputError(f"dynamic axes name {name!r} is not an input of the model "
                                f"(inputs: {', '.join(loaded.input_names)})")
        rank = loaded.example_inputs[loaded.input_names.index(name)].dim()
        for k in a:
            if not -rank <= k < rank:
                raise BadInputError(f"dynamic axis {k} of input {name!r} is out of range for rank {rank}")


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx prints a page of progress and warnings per export; keep them for --debug."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    debug = logging.getLogger().level <= logging.DEBUG
    for lg in loggers:
        lg.setLevel(logging.DEBUG if debug else logging.ERROR)
    with warnings.catch_warnings():
        if not debug:
            warnings.simplefilter("ignore")
        try:
            if debug:
                yield
            else:
                with contextlib.redirect_stdout(_Sink()), _fd1_to_devnull():
                    yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)


@contextlib.contextmanager
def _fd1_to_devnull():
    """torch's C++ side writes to file descriptor 1 directly (the legacy exporter dumps its whole IR
    graph there when it fails: torch's setup_onnx_logging always enables that log)."""
    import os
    import sys

    try:
        for stream in (sys.stdout, sys.__stdout__):
            if stream is not None:
                stream.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no real fd 1 (embedded, closed): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class _Sink:
    def write(self, s):
        return len(s)

    def flush(self):
        pass


LEGACY_LOSES = ("the legacy graph carries no module-path metadata, so `check` cannot localise normalizations and "
                "`advise` cannot name modules")


def _export_module(loaded, out_names, requested, opset, exporter, mode, notes, atol):
    """Export a (non-recurrent) LoadedModel of any forward() signature.

    Then every claimed dynamic axis is run at the sweep sizes (``_sweep``): an axis torch.export kept
    symbolic but the graph does not honour (a ViT whose position table ties H*W to 16 passes torch.export
    as a runtime assert) or one the legacy exporter claimed blindly is fixed, with the failing size as
    the reason, and the model exported again without it; an axis the user asked for is an error naming
    the axis and the size. Returns (model, exporter used, decisions, shapes run)."""
    from .axes import candidate_axes
    from .signature import flat_module, parameter_names

    params = parameter_names(loaded.input_names)
    flat = flat_module(loaded, params)
    cands = candidate_axes(loaded.input_names, loaded.example_inputs, mode)
    # (input, axis) -> decision fixed before torch.export (the model refuses to vary it) or by the sweep
    probed: dict = _axes_the_model_refuses(loaded, cands, requested)
    for name, k in probed:
        cands[name].pop(k, None)
    first = True
    while True:
        model, used, decisions = _export_flat(flat, loaded.example_inputs, params, loaded.input_names, out_names,
                                              cands, requested, opset, exporter, notes if first else [])
        first = False
        exporter = used  # a second round never retries an exporter that failed
        decisions = [probed.get((d.input, d.axis), d) for d in decisions]
        decisions += [d for k, d in probed.items() if all((x.input, x.axis) != k for x in decisions)]
        set_metadata(model, {RANGES_KEY: json.dumps(_ranges(model, decisions))})  # the sweep stays in range
        runs = _sweep(model, loaded, loaded.input_names, out_names, atol=atol)
        at_example = next((r for r in runs if r["problem"] and r["example"]), None)
        if at_example is not None:  # not a shape question: the graph is wrong at the example itself
            raise CheckFailedError(f"exported model disagrees with PyTorch at the example shape: {at_example['problem']}; "
                                   "nothing written")
        bad = _graph_failures(runs)
        if not bad:
            _narrow_to_model_domain(model, decisions, runs)
            return model, used, decisions, [r for r in runs if not r["problem"]]
        for label, r in bad.items():
            hit = [d for d in decisions if d.dynamic and _label_of(model, d) == label]
            if not hit:
                raise CheckFailedError(f"the exported graph fails at {r['case']}: {r['problem']}; nothing written")
            for d in hit:
                if d.requested:
                    raise CheckFailedError(
                        f"--dynamic-axes {d.input}:{d.axis}={d.label}: the exported graph ({used} exporter) does not "
                        f"honour it: at {r['case']} {r['problem']}; nothing written. Fix: drop that axis (e.g. "
                        f"{d.input}:static)" + (", or a model dynamo can export (--exporter dynamo shows why it "
                                                "cannot)" if used == "legacy" else ""))
                d.dynamic = False
                d.why = f"the {used} graph does not honour it: at {r['case']} {r['problem']}"
                probed[(d.input, d.axis)] = d
                cands.get(d.input, {}).pop(d.axis, None)


def _axes_the_model_refuses(loaded, cands, requested) -> dict:
    """Candidate axes along which the PyTorch model itself refuses every size but the example's:
    (input, axis) -> a fixed AxisDecision, decided before torch.export sees them.

    torch.export would specialise such an axis, or the sweep would fix it afterwards, but its symbolic
    reasoning about it first can take minutes: torchvision's MaxViT (its window partitions reshape H and
    W by a grid fixed at construction) spent over 5 minutes in sympy at 32x32 with H and W as
    ``Dim.AUTO``, against 14 s with them fixed. Each label (split as the sweep splits them,
    ``_distinct_labels``) is run in eager PyTorch at twice the example's size, the prime above it and
    half the example (not 1: a conv stem refusing height 1 says nothing; not one below: a stride-2 stem
    maps 31 and 32 to the same size), the other axes at the example's. An axis is fixed only when all of
    them raise, so one with any range (a position table longer than the example, or as long as it) still
    goes to torch.export and the sweep. Requested axes are not probed."""
    import traceback

    import numpy as np
    import torch

    from ..shape_sweep import ShapeCase, random_feed, sweep_sizes
    from .axes import AxisDecision, _user_frame

    names, args = loaded.input_names, loaded.example_inputs
    probe = {n: a for n, a in cands.items() if n not in requested and a}
    groups: dict = {}  # label -> [(input, axis)]
    for name, a in _distinct_labels(probe, args, names).items():
        for k, label in a.items():
            groups.setdefault(label, []).append((name, k))
    examples = {n: t.detach().cpu().numpy() for n, t in zip(names, args)}
    rng = np.random.default_rng(0)
    out = {}
    for label, places in groups.items():
        ex = int(args[names.index(places[0][0])].shape[places[0][1]])
        refused, first = [], None  # sizes PyTorch raised at; (case, error, model line) of the first
        for size in dict.fromkeys(s for s in sweep_sizes(ex) + [ex // 2] if s >= 2 and s != ex):
            shapes = {n: list(a.shape) for n, a in examples.items()}
            for n, k in places:
                shapes[n][k] = size
            feed = random_feed(examples, shapes, rng)
            try:
                with torch.no_grad():
                    loaded.call(*(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names))
            except Exception as e:  # noqa: BLE001 - the model refusing this size is the answer sought
                interrupts.raise_if_interrupted(e)
                refused.append(size)
                first = first or (ShapeCase(label, size, shapes).describe(),
                                  f"{type(e).__name__}: {_first_line(e)[:200]}",
                                  _user_frame(traceback.extract_tb(e.__traceback__)))
                continue
            break
        else:  # every size raised (there is always one to try: 2x the example is >= 2)
            case, err, where = first
            why = (f"the model requires size {ex} (PyTorch's forward() refuses {', '.join(map(str, refused))}; "
                   f"at {case}: {err}" + (f"; raised at {where})" if where else ")"))
            for n, k in places:
                out[(n, k)] = AxisDecision(n, k, label, False, why)
    return out


def _export_flat(module, args, params, input_names, output_names, candidates, requested, opset, exporter, notes):
    """torch.export (Dim.AUTO candidates, Dim.DYNAMIC requested axes) then torch.onnx; the legacy
    TorchScript exporter only when dynamo cannot export the model at all (``exporter="auto"``)."""
    import onnx
    import torch

    from .axes import AxisContradiction, AxisDecision, export_program

    decisions = None
    dynamo_error = None
    if exporter in ("auto", "dynamo"):
        try:
            with _quiet_exporter():
                ep, decisions = export_program(module, args, params, input_names, candidates, requested)
                with tempfile.TemporaryDirectory() as td:
                    path = Path(td) / "model.onnx"
                    torch.onnx.export(ep, tuple(args), str(path), dynamo=True, opset_version=opset,
                                      input_names=list(input_names), output_names=list(output_names),
                                      external_data=False)
                    model = onnx.load_model(str(path))
            labels = _distinct_labels(_labels(decisions), args, input_names)
            _pin_static_dims(model, input_names, args, labels)
            _rename_symbols(model, input_names, labels)
            _relabel(decisions, labels)
            return model, "dynamo", decisions
        except AxisContradiction as e:
            log.debug("dynamo refused a requested dynamic axis: %s", e)
            raise BadInputError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - the dynamo exporter's failures are many and varied
            interrupts.raise_if_interrupted(e)  # Ctrl-C caught as an error: no fallback to legacy
            dynamo_error = e
            log.debug("dynamo could not export the model; its full error:\n%s", _full_text(e))
            if exporter == "dynamo":
                raise BadInputError(f"torch.onnx (dynamo) could not export the model: {type(e).__name__}: "
                                    f"{_first_line(e)}; fix: --exporter auto (falls back to the legacy exporter), or "
                                    "a wrapper module whose forward() dynamo can trace (--debug shows dynamo's full "
                                    "error)") from None
    # Legacy: claim the axes torch.export allowed when it got that far, else the candidates and requested
    # ones; _export_module then runs every claimed axis at the sweep sizes before anything is kept.
    if decisions is not None:
        axes = {n: {} for n in input_names}
        for d in decisions:
            if d.dynamic:
                axes[d.input][d.axis] = d.label
        decisions = [d for d in decisions]
    else:
        axes = {n: ({k % args[i].dim(): v for k, v in requested[n].items()} if n in requested
                    else dict(candidates.get(n, {}))) for i, n in enumerate(input_names)}
        decisions = [AxisDecision(n, k, lab, True, "claimed by the legacy exporter; verified across sizes",
                                  n in requested) for n, a in axes.items() for k, lab in a.items()]
    axes = _distinct_labels(axes, args, input_names)
    _relabel(decisions, axes)
    try:
        model = _legacy_export(module, args, input_names, output_names, axes, opset)
    except Exception as e:  # noqa: BLE001
        interrupts.raise_if_interrupted(e)
        why = [f"legacy: {type(e).__name__}: {_first_line(e)}"]
        if dynamo_error is not None:
            why.insert(0, f"dynamo: {type(dynamo_error).__name__}: {_first_line(dynamo_error)}")
        raise BadInputError("torch.onnx could not export the model (" + "; ".join(why) + "); fix: a wrapper "
                            "module whose forward() takes and returns tensors (--debug shows dynamo's full "
                            "error)") from None
    if dynamo_error is not None:  # only now: when legacy fails too, the error above names both and is the one line
        msg = (f"dynamo could not export the model, so the legacy TorchScript exporter was used; {LEGACY_LOSES}. "
               f"dynamo's error, in full: {type(dynamo_error).__name__}: {_full_reason(dynamo_error)}")
        log.warning("%s", msg)
        notes.append(msg)
    return model, "legacy", decisions


def _pin_static_dims(model, input_names, args, dynamic) -> None:
    """Input dims torch.export fixed are written as their size: torch.onnx can leave a symbol on a dim
    the program specialised, and the graph would then claim an axis it does not honour."""
    for vi in model.graph.input:
        if vi.name not in input_names:
            continue
        t = args[input_names.index(vi.name)]
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            if k not in dynamic.get(vi.name, {}) and k < t.dim():
                d.Clear()
                d.dim_value = int(t.shape[k])


def _labels(decisions) -> dict[str, dict[int, str]]:
    out: dict = {}
    for d in decisions:
        if d.dynamic:
            out.setdefault(d.input, {})[d.axis] = d.label
    return out


def _legacy_export(module, args, input_names, output_names, axes, opset):
    import onnx
    import torch

    from ..spec import attributes_restored

    with _quiet_exporter(), tempfile.TemporaryDirectory() as td, attributes_restored(module):
        path = Path(td) / "model.onnx"
        torch.onnx.export(module, tuple(args), str(path), dynamo=False, opset_version=opset or 18,
                          input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes={n: {k % args[i].dim(): v for k, v in axes.get(n, {}).items()}
                                        for i, n in enumerate(input_names)})
        return onnx.load_model(str(path))


def _graph_failures(runs) -> dict:
    """label -> the first run where the graph is wrong. PyTorch itself refusing a size (a conv stem at
    height 1) says nothing about the graph, unless the model refuses every size but the example's: then
    the axis does not scale and is not dynamic at all (a ViT whose position table fixes H and W refuses
    twice the example's size)."""
    bad: dict = {}
    by_label: dict = {}
    for r in runs:
        by_label.setdefault(r["label"], []).append(r)
    for label, rs in by_label.items():
        graph = next((r for r in rs if r["problem"] and not r["model_refused"]), None)
        ex = next((r["size"] for r in rs if r["example"]), None)
        if graph is None and ex is not None:  # the model refusing twice the example: not a dynamic axis
            graph = next((r for r in rs if r["model_refused"] and r["size"] >= 2 * ex), None)
        if graph is not None:
            bad[label] = graph
    return bad


def _narrow_to_model_domain(model, decisions, runs) -> None:
    """Sizes PyTorch itself refuses (below the ones it accepts) are outside the model's domain: the
    axis's recorded minimum moves above them (check starts its sweep there) and the reason says so."""
    for d in decisions:
        label = _label_of(model, d) if d.dynamic else None
        ex = next((r["size"] for r in runs if label and r["label"] == label and r["example"]), None)
        refused = [r for r in runs if label and r["label"] == label and r["model_refused"]
                   and ex is not None and r["size"] < ex]
        if refused:
            d.min = max(d.min or 1, max(r["size"] for r in refused) + 1)
            d.why = (f"torch.export keeps it symbolic; from {d.min} on: the PyTorch model itself refuses "
                     f"{refused[0]['case']} ({refused[0]['problem']})")


def _label_of(model, decision) -> str | None:
    for vi in model.graph.input:
        if vi.name == decision.input:
            dims = vi.type.tensor_type.shape.dim
            if decision.axis < len(dims) and dims[decision.axis].dim_param:
                return dims[decision.axis].dim_param
    return None


def _sweep(model, loaded, input_names, output_names, call=None, atol=None) -> list[dict]:
    """Run the graph and PyTorch at every shape its dynamic axes claim (``shape_sweep.plan``): one
    entry per shape with the worst |ONNX Runtime - PyTorch| and the problem (a wrong output shape,
    a run-time failure, values beyond ``atol``), if any."""
    import numpy as np
    import torch

    from ..shape_sweep import plan, random_feed

    examples = {n: t.detach().cpu().numpy() for n, t in zip(input_names, loaded.example_inputs)}
    cases = plan(model, {n: list(a.shape) for n, a in examples.items()})
    if not cases:
        return []
    sess = _session(model)
    call = call or loaded.call
    rng = np.random.default_rng(0)
    runs = []
    for case in cases:
        feed = random_feed(examples, case.shapes, rng)
        entry = {"case": case.describe(), "label": case.label, "size": case.size, "max_abs": 0.0, "problem": "",
                 "example": all(list(a.shape) == case.shapes[n] for n, a in examples.items()),
                 "model_refused": False}
        runs.append(entry)
        try:
            with torch.no_grad():
                refs = call(*(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in input_names))
        except Exception as e:  # noqa: BLE001 - the model itself refuses this size
            entry["problem"] = f"PyTorch's forward() raises {type(e).__name__}: {_first_line(e)[:200]}"
            entry["model_refused"] = True
            continue
        try:
            outs = sess.run(None, feed)
        except Exception as e:  # noqa: BLE001 - ORT refusing a shape the graph claims
            entry["problem"] = f"ONNX Runtime fails: {_first_line(e)[:200]}"
            continue
        for name, o, r in zip(output_names, outs, refs):
            r = r.float().numpy() if r.dtype in (torch.float16, torch.bfloat16) else r.numpy()
            if o.shape != r.shape:
                entry["problem"] = f"output {name!r} has shape {list(o.shape)}, PyTorch gives {list(r.shape)}"
                break
            err = _max_abs(o, r)
            entry["max_abs"] = max(entry["max_abs"], err)
        if not entry["problem"] and atol is not None and entry["max_abs"] > atol:
            entry["problem"] = f"max abs error {entry['max_abs']:.3g} > {atol:g}"
    return runs


def _max_abs(o, r) -> float:
    import numpy as np

    if not o.size:
        return 0.0
    o64, r64 = o.astype(np.float64), np.asarray(r, dtype=np.float64)
    if (np.isnan(o64) != np.isnan(r64)).any():
        return float("inf")  # NaN on one side only is a disagreement (nanmax used to skip it)
    d = np.abs(o64 - r64)
    return float(d[~np.isnan(d)].max(initial=0.0))  # NaN here: both NaN, or equal infs


def _verify_claimed_shapes(model, loaded, input_names, output_names, decisions, runs):
    """ORT against PyTorch at the example shape and along every dynamic axis (the sweep ``_export_module``
    already ran and passed); (worst error, shapes run)."""
    err = _verify(model, loaded, input_names)
    if not runs:  # no dynamic axis: the example shape alone
        return err, [{"case": "example (" + ", ".join(f"{n}{list(t.shape)}" for n, t in
                                                     zip(input_names, loaded.example_inputs)) + ")",
                      "label": "", "size": 0, "max_abs": err, "problem": ""}]
    return max([err] + [r["max_abs"] for r in runs]), runs


def _distinct_labels(axes, args, input_names) -> dict[str, dict[int, str]]:
    """{input: {axis: label}} where axes that share a label but differ in size in the example get
    their own labels: the example itself shows they are independent (BART's encoder and decoder ids,
    nn.TransformerDecoder's target and memory). The first input keeps the plain label, the others take
    ``<label>_<input>``. Axes of equal example size keep one label (an attention mask's batch is the
    ids' batch even where broadcasting let torch.export keep two symbols)."""
    sizes: dict[str, dict[int, list]] = {}  # label -> example size -> [(input, axis)]
    for name, a in axes.items():
        if name not in input_names:
            continue
        t = args[input_names.index(name)]
        for k, label in a.items():
            if hasattr(t, "shape") and -t.dim() <= k < t.dim():
                sizes.setdefault(label, {}).setdefault(int(t.shape[k]), []).append((name, k))
    out = {n: dict(a) for n, a in axes.items()}
    taken = {lab for a in axes.values() for lab in a.values()}
    for label, by_size in sizes.items():
        for group in list(by_size.values())[1:]:
            new = label + "_" + re.sub(r"\W", "_", group[0][0])
            while new in taken:
                new += "_"
            taken.add(new)
            for name, k in group:
                out[name][k] = new
    return out


def _relabel(decisions, labels) -> None:
    for d in decisions or []:
        if d.dynamic and d.axis in labels.get(d.input, {}):
            d.label = labels[d.input][d.axis]


def _rename_symbols(model, input_names, axes) -> None:
    """Name the exporter's shape symbols (s77, s27, ...) after the axes they stand for (batch, seq)."""
    mapping = {}
    for vi in model.graph.input:
        if vi.name not in input_names:
            continue
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            label = axes.get(vi.name, {}).get(k) or axes.get(vi.name, {}).get(k - len(vi.type.tensor_type.shape.dim))
            # One label, one name, even where torch.export kept two symbols (the batch of input_ids and of
            # attention_mask): they are meant to be equal, and the shape sweep moves them together.
            # Independent axes need their own labels (--dynamic-axes src:1=src_seq tgt:1=tgt_seq).
            if d.dim_param and label and d.dim_param not in mapping:
                mapping[d.dim_param] = label
    if not mapping:
        return
    pat = re.compile(r"\b(" + "|".join(re.escape(s) for s in mapping) + r")\b")

    def fix(vis):
        for vi in vis:
            if not vi.type.HasField("tensor_type"):
                continue
            for d in vi.type.tensor_type.shape.dim:
                if d.dim_param:
                    d.dim_param = pat.sub(lambda m: mapping[m.group(1)], d.dim_param)

    fix(model.graph.input)
    fix(model.graph.output)
    fix(model.graph.value_info)


def _export_recurrent(loaded: LoadedModel, mode: str, opset, exporter):
    import numpy as np
    import onnx
    import torch

    from . import rnn  # imports torch: only when a recurrent model is exported

    model = loaded.module
    x = loaded.example_inputs[0]
    if len(loaded.example_inputs) != 1 or x.dim() < 2:
        raise BadInputError(f"{loaded.spec}: recurrent export expects one batch-first input [batch, seq, ...]")
    step_args = rnn.step_example(model, x)
    n_state = len(step_args) - 1
    s_in, s_out = rnn.state_names(n_state)
    state_meta = [{"name": s_in[i], "output": s_out[i], "shape": list(t.shape[1:]), "dtype": str(t.dtype).replace("torch.", ""),
                   "onnx_dtype": _onnx_dtype(t)} for i, t in enumerate(step_args[1:])]
    axes = {n: {0: "batch"} for n in [rnn.STEP_INPUT, *s_in]}
    step_names = [rnn.STEP_INPUT, *s_in]
    step_model, used, _ = _export_flat(rnn.StepModule(model, n_state), step_args, step_names, step_names,
                                       [rnn.STEP_OUTPUT, *s_out], axes, {}, opset, exporter, [])
    if mode == "step":
        def verify_step(m):  # drive the graph step by step and compare every step with PyTorch
            sess = _session(m)
            state = [t.numpy() for t in step_args[1:]]
            worst = 0.0
            with torch.no_grad():
                ref_state = step_args[1:]
                for t in range(x.shape[1]):
                    feeds = {rnn.STEP_INPUT: x[:, t].numpy(), **dict(zip(s_in, state))}
                    y, *state = sess.run(None, feeds)
                    ref_y, *ref_state = model.step(x[:, t], *ref_state)
                    worst = max(worst, float(np.abs(y - ref_y.numpy()).max()))
            return worst

        return step_model, ([rnn.STEP_INPUT, *s_in], [rnn.STEP_OUTPUT, *s_out]), state_meta, used, verify_step
    in_name = loaded.input_names[0]
    scan = rnn.build_scan_model(step_model, in_name, "output", state_meta)
    onnx.checker.check_model(scan)

    def verify_scan(m):  # every batch and sequence length the Scan graph claims, as for any export
        runs = _sweep(m, loaded, [in_name], ["output"])
        bad = next(iter(_graph_failures(runs).values()), None)
        if bad is not None:
            raise CheckFailedError(f"the scan graph fails at {bad['case']}: {bad['problem']}; nothing written")
        return max([r["max_abs"] for r in runs] + [_verify(m, loaded, [in_name])])

    return scan, ([in_name], ["output"]), state_meta, used, verify_scan


def _onnx_dtype(t) -> int:
    import onnx
    import torch

    return {torch.float32: onnx.TensorProto.FLOAT, torch.float16: onnx.TensorProto.FLOAT16,
            torch.bfloat16: onnx.TensorProto.BFLOAT16, torch.float64: onnx.TensorProto.DOUBLE}[t.dtype]


def _session(model):
    from ..ort import open_session

    return open_session(model)  # ORT_ENABLE_ALL, as deployed; fp16/bf16 graphs probed in a child first


def _verify(model, loaded, input_names) -> float:
    """Worst |ONNX Runtime - PyTorch| at the example inputs (a wrong output shape is a CheckFailedError)."""
    import torch

    sess = _session(model)
    with torch.no_grad():
        refs = loaded.call(*loaded.example_inputs)
    outs = sess.run(None, {n: a.numpy() for n, a in zip(input_names, loaded.example_inputs)})
    worst = 0.0
    for o, r in zip(outs, refs):
        r = r.float().numpy() if r.dtype in (torch.float16, torch.bfloat16) else r.numpy()
        if o.shape != r.shape:
            raise CheckFailedError(f"exported output has shape {o.shape}, PyTorch gives {r.shape}")
        worst = max(worst, _max_abs(o, r))
    return worst


def _graph_dynamic_axes(model) -> dict[str, dict[int, str]]:
    init = {i.name for i in model.graph.initializer}
    out = {}
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.name in init:
            continue
        out[vi.name] = {k: d.dim_param for k, d in enumerate(vi.type.tensor_type.shape.dim) if d.dim_param}
    return out


def count_nodes(model) -> tuple[int, int]:
    """(nodes, normalization ops), subgraphs (Scan/Loop/If bodies) and local functions included."""
    nodes = norms = 0

    def walk(graph):
        nonlocal nodes, norms
        for n in graph.node:
            nodes += 1
            norms += n.op_type in NORM_OPS
            for a in n.attribute:
                if a.type == a.GRAPH:
                    walk(a.g)
                for g in a.graphs:
                    walk(g)

    walk(model.graph)
    for f in model.functions:  # a function's nodes are counted where it is called, once per definition
        for n in f.node:
            norms += n.op_type in NORM_OPS
    return nodes, norms


def set_metadata(model, props: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for k, v in props.items():
        if k in existing:
            existing[k].value = v
        else:
            model.metadata_props.add(key=k, value=v)


def read_metadata(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _first_line(e: BaseException) -> str:
    """The line of an error message that says what went wrong, without terminal colour codes. torch.onnx's
    dynamo errors open with generic advice and name the real failure under "## Exception summary"."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if "## Exception summary" in lines:
        rest = lines[lines.index("## Exception summary") + 1:]
        if rest:
            return re.sub(r"^<class '(?:[\w.]+\.)?(\w+)'>", r"\1", rest[0])[:300]
    return lines[0][:300] if lines else type(e).__name__


_ADVICE = ("The error above occurred when calling", "For more information", "(Refer to the full stack trace",
           "If you would like to view some more information", "Set TORCHDYNAMO", "You can suppress this")


def _full_text(e: BaseException) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip() or type(e).__name__


def _full_reason(e: BaseException) -> str:
    """The whole of dynamo's failure (no truncation), without its generic advice, as one line."""
    lines = [ln.strip() for ln in _full_text(e).splitlines() if ln.strip()]
    if "## Exception summary" in lines:
        lines = lines[lines.index("## Exception summary") + 1:]
    lines = [ln for ln in lines if not ln.startswith(_ADVICE)]
    return " / ".join(lines) or type(e).__name__
