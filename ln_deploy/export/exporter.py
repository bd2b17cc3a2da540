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
from ..spec import LoadedModel, is_recurrent, load_spec, weights_fingerprint

log = logging.getLogger(__name__)

RNN_MODES = ("scan", "step", "unroll")
MIN_OPSET = 17  # LayerNormalization
NORM_OPS = {"LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization",
            "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "LnDeployNorm", "LnDeploySkipNorm",
            "GroupNormalization", "InstanceNormalization", "BatchNormalization"}


@dataclass
class ExportResult:
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

    def to_dict(self) -> dict:
        return asdict(self)


def default_dynamic_axes(loaded: LoadedModel, rnn_mode: str | None) -> dict[str, dict[int, str]]:
    """Batch is axis 0 of every input. Sequence is axis 1 of rank-2 and rank-3 inputs ([batch, seq] tokens
    or masks, [batch, seq, features]); rank-4 inputs (NCHW) get dynamic height and width. Recurrent models
    unrolled in Python cannot have a dynamic sequence; their ``unroll`` export keeps it fixed."""
    axes = {}
    for name, t in zip(loaded.input_names, loaded.example_inputs):
        a = {0: "batch"} if t.dim() >= 1 else {}
        if t.dim() in (2, 3) and not (rnn_mode in ("unroll", "step")):
            a[1] = "seq"
        elif t.dim() == 4:
            a.update({2: "height", 3: "width"})
        axes[name] = a
    return axes


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

    with progress.step(f"exporting {loaded.spec}" + (f" (rnn mode {mode})" if mode else "")):
        if mode in ("scan", "step"):
            model, names, state_meta, used, verify_fn = _export_recurrent(loaded, mode, opset, exporter)
        else:
            axes = dynamic_axes if dynamic_axes is not None else default_dynamic_axes(loaded, mode)
            _check_axes(loaded, axes)
            out_names = _output_names(loaded)
            model, used = _export_module(loaded.module, loaded.example_inputs, loaded.input_names, out_names,
                                         axes, opset, exporter)
            names, state_meta = (loaded.input_names, out_names), []
            verify_fn = None
    input_names, output_names = names
    err = 0.0
    if verify:
        with progress.step("verifying the ONNX model in ONNX Runtime against PyTorch"):
            err = verify_fn(model) if verify_fn else _verify(model, loaded.module, loaded.example_inputs,
                                                            input_names, atol)
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
                            {k: v for k, v in s.items() if k != "onnx_dtype"} for s in state_meta])


def _max_opset() -> int:
    from torch.onnx import _constants

    return getattr(_constants, "ONNX_MAX_OPSET", 23)


def _output_names(loaded: LoadedModel) -> list[str]:
    import torch

    try:
        with torch.no_grad():
            y = loaded.module(*loaded.example_inputs)
    except Exception as e:  # the user's forward(): one line, not a traceback
        raise BadInputError(f"{loaded.spec}: forward() on the example inputs raised {type(e).__name__}: "
                            f"{_first_line(e)}") from None
    outs = y if isinstance(y, (tuple, list)) else (y,)
    if not outs or not all(isinstance(o, torch.Tensor) for o in outs):
        got = type(y).__name__ if not isinstance(y, (tuple, list)) else \
            f"{type(y).__name__} of {', '.join(type(o).__name__ for o in outs) or 'nothing'}"
        raise BadInputError(f"{loaded.spec}: forward() returned {got}; export needs a tensor or a tuple of tensors")
    n = len(outs)
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]


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


def _export_module(module, args, input_names, output_names, axes, opset, exporter):
    """Export with dynamo (Dim.DYNAMIC per dynamic axis, then symbols renamed to the axis labels)."""
    import onnx
    import torch
    from torch.export import Dim

    errors = []
    if exporter in ("auto", "dynamo"):
        dyn = tuple({k % args[i].dim(): Dim.DYNAMIC for k in axes.get(name, {})} or None
                    for i, name in enumerate(input_names))
        try:
            with _quiet_exporter(), tempfile.TemporaryDirectory() as td:
                path = Path(td) / "model.onnx"
                torch.onnx.export(module, tuple(args), str(path), dynamo=True, opset_version=opset,
                                  input_names=list(input_names), output_names=list(output_names),
                                  dynamic_shapes=dyn, external_data=False)
                model = onnx.load_model(str(path))
            _rename_symbols(model, input_names, axes)
            return model, "dynamo"
        except Exception as e:  # the dynamo exporter's failures are many and varied
            interrupts.raise_if_interrupted(e)  # Ctrl-C caught as an error: no fallback to legacy
            errors.append(f"dynamo: {type(e).__name__}: {_first_line(e)}")
            if exporter == "dynamo":
                raise BadInputError(f"torch.onnx (dynamo) could not export the model: {errors[-1]}") from None
            log.debug("dynamo export failed (%s); trying the legacy TorchScript exporter", errors[-1])
    try:
        with _quiet_exporter(), tempfile.TemporaryDirectory() as td:
            path = Path(td) / "model.onnx"
            torch.onnx.export(module, tuple(args), str(path), dynamo=False, opset_version=opset or 18,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes={n: {k % args[i].dim(): v for k, v in axes.get(n, {}).items()}
                                            for i, n in enumerate(input_names)})
            model = onnx.load_model(str(path))
        if errors:  # only now: when legacy fails too, the error below names both and is the one line
            log.warning("dynamo export failed (%s); exported with the legacy TorchScript exporter", errors[-1])
        return model, "legacy"
    except Exception as e:
        interrupts.raise_if_interrupted(e)
        errors.append(f"legacy: {type(e).__name__}: {_first_line(e)}")
        raise BadInputError("torch.onnx could not export the model (" + "; ".join(errors) + ")") from None


def _rename_symbols(model, input_names, axes) -> None:
    """Name the exporter's shape symbols (s77, s27, ...) after the axes they stand for (batch, seq)."""
    mapping = {}
    for vi in model.graph.input:
        if vi.name not in input_names:
            continue
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            label = axes.get(vi.name, {}).get(k) or axes.get(vi.name, {}).get(k - len(vi.type.tensor_type.shape.dim))
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
    step_model, used = _export_module(rnn.StepModule(model, n_state), step_args, [rnn.STEP_INPUT, *s_in],
                                      [rnn.STEP_OUTPUT, *s_out], axes, opset, exporter)
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

    def verify_scan(m):
        return _verify(m, model, loaded.example_inputs, [in_name], 1e-4)

    return scan, ([in_name], ["output"]), state_meta, used, verify_scan


def _onnx_dtype(t) -> int:
    import onnx
    import torch

    return {torch.float32: onnx.TensorProto.FLOAT, torch.float16: onnx.TensorProto.FLOAT16,
            torch.bfloat16: onnx.TensorProto.BFLOAT16, torch.float64: onnx.TensorProto.DOUBLE}[t.dtype]


def _session(model):
    from ..ort import open_session

    return open_session(model)  # ORT_ENABLE_ALL, as deployed; fp16/bf16 graphs probed in a child first


def _verify(model, module, args, input_names, atol) -> float:
    import numpy as np
    import torch

    sess = _session(model)
    with torch.no_grad():
        ref = module(*args)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    outs = sess.run(None, {n: a.numpy() for n, a in zip(input_names, args)})
    worst = 0.0
    for o, r in zip(outs, refs):
        r = r.float().numpy() if r.dtype in (torch.float16, torch.bfloat16) else r.numpy()
        if o.shape != r.shape:
            raise CheckFailedError(f"exported output has shape {o.shape}, PyTorch gives {r.shape}")
        if o.size:
            o64, r64 = o.astype(np.float64), np.asarray(r, dtype=np.float64)
            if (np.isnan(o64) != np.isnan(r64)).any():
                return float("inf")  # NaN on one side only is a disagreement (nanmax used to skip it)
            d = np.abs(o64 - r64)
            worst = max(worst, float(d[~np.isnan(d)].max(initial=0.0)))  # NaN here: both NaN, or equal infs
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
