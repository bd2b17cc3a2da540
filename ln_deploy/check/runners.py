"""Runners on Polygraphy's runner contract: ln_deploy's PyTorch runner, and the factories for
ONNX Runtime and TensorRT runners that ``check_model`` uses.

``TorchRunner`` follows Polygraphy's template: the public ``activate``/``infer``/``deactivate`` of
``BaseRunner`` do the bookkeeping, this class only overrides the ``*_impl`` methods. Polygraphy's own
``PytRunner`` hard-codes ``.cuda()`` and predates that contract, hence this one.
"""

from __future__ import annotations

import importlib.util
import time
from collections import OrderedDict

from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from ..errors import BadInputError


class LoadTorchModel:
    """Loader (Polygraphy style: the constructor stores settings, calling it does the work) that
    imports a SPEC and returns the ``LoadedModel`` in eval() mode."""

    def __init__(self, spec: str, checkpoint=None):
        self.spec = spec
        self.checkpoint = checkpoint

    def __call__(self):
        from ..spec import load_spec

        return load_spec(self.spec, self.checkpoint)


def default_output_names(n: int) -> list[str]:
    """The exporter's output naming: ``output`` for one output, ``output_0``, ``output_1``... for several."""
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]


def flatten_outputs(out) -> list:
    """Tensors of a forward() result in order (nested tuples/lists/dicts flattened depth-first)."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        flat = []
        for o in out:
            flat.extend(flatten_outputs(o))
        return flat
    return []


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


class TorchRunner(BaseRunner):
    """Runs a PyTorch module on the CPU (or CUDA when asked and present) under ``torch.inference_mode``.

    Args:
        model: a ``LoadedModel`` (``ln_deploy.spec``), an ``nn.Module`` with ``example_inputs`` given,
            or a callable returning either (e.g. ``LoadTorchModel(spec)``).
        input_names: the feed names in forward()'s positional order (default: the LoadedModel's).
        output_names: names for the flattened outputs (default: the exporter's ``output``/``output_i``).
        example_inputs: tensors whose dtypes and shapes ``get_input_metadata`` reports.
        device: "cpu" (default) or "cuda".
        dtype: run the module in this floating dtype (reference runs are always float32).
        dynamic_axes: ``{input: {axis: label}}`` reported as dynamic in the input metadata (e.g. the ONNX
            model's ``batch``/``seq`` axes), so Polygraphy's data loader and shape checks treat them so.
    """

    def __init__(self, model, input_names=None, output_names=None, example_inputs=None, device="cpu",
                 dtype=None, name=None, dynamic_axes=None):
        super().__init__(name=name, prefix="torch-runner")
        self._model = model
        self._input_names = input_names
        self._output_names = output_names
        self._example_inputs = example_inputs
        self.device = device
        self._dtype = dtype
        self._dynamic_axes = dynamic_axes or {}

    def activate_impl(self):
        import torch

        from ..spec import LoadedModel

        model = self._model() if callable(self._model) and not isinstance(self._model, torch.nn.Module) else self._model
        self._invoke = None  # a LoadedModel rebuilds forward()'s argument tree (kwargs, nesting) itself
        if isinstance(model, LoadedModel):
            module, example, names = model.module, model.example_inputs, model.input_names
            self._invoke = model.call  # outputs flattened as the exporter names them
        elif isinstance(model, torch.nn.Module):
            module, example, names = model, self._example_inputs, self._input_names
            if example is None:
                example = getattr(model, "example_inputs", None)
        else:
            raise BadInputError(f"TorchRunner needs an nn.Module or a LoadedModel, not {type(model).__name__}")
        if example is None:
            raise BadInputError("TorchRunner needs example inputs to report input metadata")
        if isinstance(example, torch.Tensor):
            example = (example,)
        self.example_inputs = tuple(example)
        self.input_names = list(self._input_names or names or [f"input_{i}" for i in range(len(example))])
        if len(self.input_names) != len(self.example_inputs):
            raise BadInputError(f"TorchRunner: {len(self.input_names)} input names for "
                                f"{len(self.example_inputs)} example inputs")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise BadInputError("TorchRunner: device 'cuda' requested but torch sees no GPU")
        self.module = module.to(self.device)
        if self._dtype is not None:
            self.module = self.module.to(self._dtype)
        self.module.eval()
        self.output_names = list(self._output_names) if self._output_names else None

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        for name, t in zip(self.input_names, self.example_inputs):
            axes = {int(k): v for k, v in self._dynamic_axes.get(name, {}).items()}
            shape = tuple(axes.get(i, int(d)) for i, d in enumerate(t.shape))
            meta.add(name, dtype=t.dtype, shape=shape)
        return meta

    def to_args(self, feed_dict):
        """forward()'s positional arguments from a feed dict (numpy arrays or tensors)."""
        import numpy as np
        import torch

        missing = [n for n in self.input_names if n not in feed_dict]
        if missing:
            raise BadInputError(f"TorchRunner: feed is missing input(s) {missing}")
        args = []
        for name, ex in zip(self.input_names, self.example_inputs):
            v = feed_dict[name]
            t = torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
            if t.dtype != ex.dtype and t.is_floating_point() and ex.is_floating_point():
                t = t.to(ex.dtype)
            if self._dtype is not None and t.is_floating_point():
                t = t.to(self._dtype)
            args.append(t.to(self.device))
        return args

    def forward(self, feed_dict):
        """Run forward() and return the flattened output tensors (still torch, on the device)."""
        import torch

        args = self.to_args(feed_dict)
        with torch.inference_mode():
            return flatten_outputs(self._call(args))

    def _call(self, args):
        """forward(*args); the user's model raising is bad input (one line), not a traceback."""
        from ..spec import attributes_restored

        try:
            with attributes_restored(self.module):
                return self._invoke(*args) if self._invoke is not None else self.module(*args)
        except Exception as e:
            lines = str(e).strip().splitlines()
            raise BadInputError(f"the PyTorch model's forward() raised {type(e).__name__}: "
                                f"{lines[0][:300] if lines else ''}") from None

    def infer_impl(self, feed_dict):
        import torch

        args = self.to_args(feed_dict)
        sync = self.device == "cuda"
        with torch.inference_mode():
            if sync:
                torch.cuda.synchronize()
            start = time.perf_counter()
            outs = flatten_outputs(self._call(args))
            if sync:
                torch.cuda.synchronize()
            self.inference_time = time.perf_counter() - start
        names = self.output_names or default_output_names(len(outs))
        if len(names) != len(outs):
            raise BadInputError(f"the PyTorch model returned {len(outs)} tensor(s) but the ONNX model has "
                                f"{len(names)} output(s) ({', '.join(names)})")
        return OrderedDict((n, o.detach().float().cpu().numpy() if o.is_floating_point() else o.cpu().numpy())
                           for n, o in zip(names, outs))

    def deactivate_impl(self):
        del self.module
        del self.example_inputs
        del self.input_names
        del self.output_names


def onnxrt_providers() -> list[tuple[str, str]]:
    """(runner name, provider) pairs to run: the CPU provider always, CUDA when ORT has it."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    pairs = [("onnxrt-cpu", "CPUExecutionProvider")]
    if "CUDAExecutionProvider" in available and cuda_available():
        pairs.append(("onnxrt-cuda", "CUDAExecutionProvider"))
    return pairs


def make_onnxrt_session(model_bytes: bytes, provider: str, threads: int | None = None):
    """An ONNX Runtime session (built now, so the same one serves the comparison and the invariance runs)."""
    from ..ort import OrtCrash, SessionConfig, first_line, holds_low_precision, open_deployable

    config = SessionConfig(threads=threads or 0, provider=provider)
    if provider == "CPUExecutionProvider" and holds_low_precision(model_bytes):
        # ORT's CPU provider computes most fp16/bf16 ops in fp32 and drops the rounding between
        # them, which hides overflow a GPU engine hits: measure the strict emulation instead (every
        # op rounded to its declared type), unoptimised so ORT cannot fold its Casts away.
        model_bytes, config = strict_cpu_reference(model_bytes), config.replace(level="disable")
    # Otherwise at the deployment's level (ORT_ENABLE_ALL); an fp16/bf16 graph is probed in a child
    # first and opened with a known crashing optimizer disabled where the probe needs it, as `serve` does.
    try:
        return open_deployable(model_bytes, config, what=f"the model ({provider})", probe="auto")[0]
    except OrtCrash as e:
        raise BadInputError(str(e)) from None
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types
        raise BadInputError(f"ONNX Runtime ({provider}) cannot load the model: {first_line(e)}") from None


def strict_cpu_reference(model_bytes: bytes) -> bytes:
    """The strict low-precision emulation of a serialized fp16/bf16 model (ln_deploy.convert.emulation)."""
    import onnx

    from ..lowp_emulation import strict_emulation

    m = onnx.ModelProto()
    m.ParseFromString(model_bytes)
    return strict_emulation(m).SerializeToString()


def tensorrt_unavailable_reason(engine) -> str | None:
    """None when a TensorRT engine can be run here, else why not (the check reports TensorRT as skipped)."""
    if engine is None:
        return "no engine given (--engine ENGINE.plan)"
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed"
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # the PyPI stub raises at import
        return f"TensorRT cannot be imported ({type(e).__name__})"
    if not cuda_available():
        return "no CUDA GPU is visible"
    return None


def make_trt_runner(engine_path, plugins=(), name="tensorrt"):
    """Polygraphy's TensorRT runner over a serialized engine (plugin libraries loaded first)."""
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.backend.common import BytesFromPath

    loader = EngineFromBytes(BytesFromPath(str(engine_path)))
    if plugins:
        from polygraphy.backend.trt import LoadPlugins

        loader = LoadPlugins(plugins=list(plugins), obj=loader)
    return TrtRunner(loader, name=name)


# ---------------------------------------------------------------------------------------- deployed runtimes
# What ``check_model`` runs against the PyTorch reference. One class per backend, registered in
# DEPLOYED_RUNTIMES: ``create`` builds its Polygraphy runners (or says why it cannot run here), and the
# class attributes tell the later steps what the runtime supports, so adding a runtime is one new class.


class Skipped:
    """A runtime that cannot run here: ``name``, ``reason`` (the report's runner row) and an optional
    ``note`` for the report's notes."""

    def __init__(self, name: str, reason: str, note: str | None = None):
        self.name, self.reason, self.note = name, reason, note


class DeployedRuntime:
    """One deployed runtime as ``check_model`` runs it: a Polygraphy ``BaseRunner`` (``runner``, passed
    to ``Comparator.run``) plus what the steps after the output comparison need.

    Subclasses set:
        label: how messages name the runtime ("ONNX Runtime fails: ...").
        sweeps_shapes: the shape sweep runs it at every size the graph's dynamic axes claim.
        require_bitwise: the invariance check requires bit-identical rows alone and in a batch.
        not_localised: None when ``localisation_runner`` works, else why this runtime is not localised.
    """

    label = "the runtime"
    sweeps_shapes = False
    require_bitwise = False
    not_localised: str | None = "this runtime cannot expose intermediate values"

    def __init__(self, name: str, runner: BaseRunner, inputs: list, report_entry: dict):
        self.name = name
        self.runner = runner
        self.inputs = inputs  # the ONNX model's inputs (check.inputs.onnx_inputs) as this runtime takes them
        self.report_entry = report_entry  # the report's runner row: {name, role, status, ...}

    @classmethod
    def create(cls, setup: "RuntimeSetup") -> list:
        """The runtimes of this backend to run here: ``DeployedRuntime``s and ``Skipped``s."""
        raise NotImplementedError

    def localisation_runner(self, marked_bytes: bytes, threads: int | None) -> BaseRunner:
        """A runner on ``marked_bytes`` (the model with every normalization's output also a graph output)."""
        raise NotImplementedError(self.not_localised)


class RuntimeSetup:
    """What a backend's ``create`` reads: the serialized model, its inputs, the engine and plugins, the
    threads, and ``timed(name, phase, fn, *args)`` to account the time spent building sessions."""

    def __init__(self, model_bytes: bytes, inputs: list, engine=None, plugins=(), threads=None, timed=None):
        self.model_bytes, self.inputs, self.engine, self.plugins, self.threads = (
            model_bytes, inputs, engine, tuple(plugins or ()), threads)
        self.timed = timed or (lambda name, phase, fn, *a, **kw: fn(*a, **kw))


class OnnxrtRuntime(DeployedRuntime):
    """ONNX Runtime: the CPU provider always (the strict low-precision emulation for an fp16/bf16 graph,
    see ``make_onnxrt_session``), the CUDA provider where ORT has it and a GPU is visible."""

    label = "ONNX Runtime"
    sweeps_shapes = True
    require_bitwise = False
    not_localised = None

    def __init__(self, name, runner, inputs, provider: str):
        super().__init__(name, runner, inputs, {"name": name, "role": "deployed", "status": "ran",
                                                "provider": provider})
        self.provider = provider

    @classmethod
    def create(cls, setup: RuntimeSetup) -> list:
        from polygraphy.backend.onnxrt import OnnxrtRunner

        from .. import progress

        out = []
        for name, provider in onnxrt_providers():
            with progress.step(f"creating the ONNX Runtime session ({provider})"):
                sess = setup.timed(name, "session", make_onnxrt_session, setup.model_bytes, provider, setup.threads)
            out.append(cls(name, OnnxrtRunner(sess, name=name), setup.inputs, provider))
        return out

    def localisation_runner(self, marked_bytes, threads):
        from polygraphy.backend.onnxrt import OnnxrtRunner

        sess = make_onnxrt_session(marked_bytes, self.provider, threads)
        return OnnxrtRunner(sess, name=self.name + "-marked")


class TensorrtRuntime(DeployedRuntime):
    """A TensorRT engine (Polygraphy's ``TrtRunner``), where an engine is given and TensorRT and a GPU are
    present. Its kernels must be batch-invariant bit for bit; it is not localised (marking extra outputs
    changes TensorRT's layer fusion) and not shape-swept (an engine runs its optimisation profiles' shapes)."""

    label = "TensorRT"
    sweeps_shapes = False
    require_bitwise = True
    not_localised = ("not localised: marking extra outputs changes TensorRT's layer fusion, "
                     "so the ONNX Runtime localisation stands for the graph")

    @classmethod
    def create(cls, setup: RuntimeSetup) -> list:
        name = "tensorrt"
        reason = tensorrt_unavailable_reason(setup.engine)
        if reason is not None:
            note = f"TensorRT engine {setup.engine} was not run: {reason}" if setup.engine is not None else None
            return [Skipped(name, reason, note)]
        return [cls(name, make_trt_runner(setup.engine, setup.plugins, name=name), setup.inputs,
                    {"name": name, "role": "deployed", "status": "ran", "engine": str(setup.engine)})]


# Every deployed runtime check_model runs, in report order; a new runtime is one more entry.
DEPLOYED_RUNTIMES: dict[str, type[DeployedRuntime]] = {
    "onnxrt": OnnxrtRuntime,
    "tensorrt": TensorrtRuntime,
}


def deployed_runtimes(setup: RuntimeSetup, registry=None) -> list:
    """Every registered backend's runtimes (``DeployedRuntime``) and skips (``Skipped``), in registry order."""
    found = []
    for factory in (DEPLOYED_RUNTIMES if registry is None else registry).values():
        found.extend(factory.create(setup))
    return found
