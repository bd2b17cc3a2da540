"""Build a TensorRT engine with Polygraphy's loaders, ln_deploy's plugin library loaded before parsing.

Every input is validated before TensorRT is imported (precision, shape specs against the model,
plugin libraries loadable with ctypes, output paths), so bad input gets a precise one-line error
on any machine; only then does a missing TensorRT or GPU end the command (exit 2).

Precision: TensorRT 11 networks are always strongly typed, so the precision must already be in
the graph. A request for fp16/bf16 on an fp32 graph therefore converts it first with
``ln_deploy.convert.convert_model(target="tensorrt")`` (fp32 normalization statistics; passed in as
``converter`` by ``ln_deploy.pipeline_steps``, since the build stage imports no other stage) and builds
the converted graph strongly typed, on TensorRT 10 as on 11. ``typing="weak"`` keeps TensorRT 10's
old way (fp32 graph, fp16/bf16 builder flags) and is refused on TensorRT 11.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__
from ..errors import BadInputError, MissingDependencyError
from ..fileio import atomic_output, check_output_path, load_onnx, sha256_file
from .profiles import Profile, derive_profile, parse_shape_specs

PRECISIONS = ("fp32", "fp16", "bf16")
TYPINGS = ("strong", "weak")


@dataclass
class PluginLibrary:
    path: str
    sha256: str
    creators_symbol: str


@dataclass
class BuildPlan:
    """Everything decided before TensorRT is touched (what the tests check without TensorRT)."""

    model_path: str
    output: str
    graph_precision: str
    precision: str
    typing: str
    convert_first: bool
    profile: Profile
    plugins: list[PluginLibrary] = field(default_factory=list)
    timing_cache: str | None = None
    # The engine's I/O as Triton sees it (conversion keeps I/O types, so the ONNX graph's say it):
    # what `ln-deploy package` reads from the sidecar without TensorRT.
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)

    def sidecar(self, tensorrt_version: str, gpu: str, built_from: str, extra: dict | None = None) -> dict:
        d = {
            "ln_deploy_version": __version__,
            "tensorrt_version": tensorrt_version,
            "gpu": gpu,
            "precision": self.precision,
            "typing": self.typing,
            "converted_by_ln_deploy": self.convert_first,
            "onnx": {"path": self.model_path, "sha256": sha256_file(self.model_path), "built_from": built_from},
            "inputs": self.inputs,
            "outputs": self.outputs,
            "profiles": [self.profile.to_dict()],
            "plugins": [asdict(p) for p in self.plugins],
            "timing_cache": self.timing_cache,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        d.update(extra or {})
        return d


def check_plugin_library(path) -> PluginLibrary:
    """The library exists, loads with ctypes (its dependencies resolve), and exports TensorRT's
    plugin entry point (``getCreators`` for IPluginV3, ``getPluginCreators`` for V2)."""
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"plugin library not found: {p}")
    if not p.is_file():
        raise BadInputError(f"plugin library is not a file: {p}")
    try:
        lib = ctypes.CDLL(str(p.resolve()))
    except OSError as e:
        raise BadInputError(f"plugin library {p} does not load: {str(e).splitlines()[0]}") from None
    symbol = next((s for s in ("getCreators", "getPluginCreators") if hasattr(lib, s)), None)
    if symbol is None:
        raise BadInputError(f"plugin library {p} loads but exports neither getCreators nor getPluginCreators: "
                            "not a TensorRT plugin library")
    return PluginLibrary(str(p.resolve()), sha256_file(p), symbol)


def graph_precision(model) -> str:
    """fp16/bf16 when the graph holds tensors of that type (a converted graph), else fp32."""
    counts = {1: 0, 10: 0, 16: 0}
    for t in model.graph.initializer:
        if t.data_type in counts:
            counts[t.data_type] += 1
    for n in model.graph.node:
        if n.op_type == "Cast":
            for a in n.attribute:
                if a.name == "to" and a.i in (10, 16):
                    counts[a.i] += 1
    if counts[16] > counts[10] and counts[16]:
        return "bf16"
    if counts[10]:
        return "fp16"
    return "fp32"


def plugin_ops(model) -> list[str]:
    """op_types of the ln_deploy plugin nodes in ``model``, subgraphs included."""
    from ..onnx_graph import all_nodes
    from ..plugin_spec import is_plugin_node

    return [n.op_type for n in all_nodes(model.graph) if is_plugin_node(n)]


def plan_build(model_path, output, *, plugins=(), shapes=None, precision: str | None = None,
               timing_cache=None, typing: str = "strong") -> BuildPlan:
    """Validate every input and decide the build, without TensorRT."""
    if precision is not None and precision not in PRECISIONS:
        raise BadInputError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    if typing not in TYPINGS:
        raise BadInputError(f"unknown typing {typing!r} (choose from {', '.join(TYPINGS)})")
    model = load_onnx(model_path)
    overrides = parse_shape_specs(shapes)
    profile = derive_profile(model, overrides)
    libs = [check_plugin_library(p) for p in plugins or ()]
    needed = plugin_ops(model)
    if needed and not libs:
        from ..kernels import plugin_library

        found = plugin_library()  # a built or installed copy (LN_DEPLOY_PLUGIN_LIB, plugins/build, <prefix>/lib)
        libs = [check_plugin_library(found)] if found is not None else []
    if needed and not libs:
        raise BadInputError(f"{model_path} holds {len(needed)} ln_deploy plugin node(s) ({', '.join(sorted(set(needed)))}): "
                            "pass --plugin PATH/libln_deploy_trt_plugin.so (bash scripts/build_plugins.sh builds it)")
    gp = graph_precision(model)
    want = precision or gp
    if gp != "fp32" and want != gp:
        raise BadInputError(f"{model_path} is already a {gp} graph; it cannot be built as {want} "
                            f"(convert the fp32 model instead)")
    if typing == "weak" and gp != "fp32":
        raise BadInputError("typing 'weak' needs an fp32 graph (the builder flags pick the precision)")
    check_output_path(output)
    if timing_cache is not None:
        tc = Path(timing_cache)
        if tc.exists() and not tc.is_file():
            raise BadInputError(f"timing cache is not a file: {tc}")
        check_output_path(tc)
    from ..signature import onnx_signature

    sig = onnx_signature(model)

    def tensors(specs):
        return [{"name": t.name, "dtype": t.datatype, "shape": list(t.shape)} for t in specs]

    return BuildPlan(str(model_path), str(output), gp, want, typing,
                     convert_first=(typing == "strong" and want != gp), profile=profile, plugins=libs,
                     timing_cache=str(timing_cache) if timing_cache else None,
                     inputs=tensors(sig.inputs), outputs=tensors(sig.outputs))


def gpu_name() -> str:
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return "unknown"


def _tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingDependencyError("TensorRT", "building an engine needs TensorRT (pip install "
                                     "'ln_deploy[tensorrt]') and an NVIDIA GPU") from None
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as e:  # no driver / no device
        raise MissingDependencyError("a CUDA GPU", f"TensorRT {trt.__version__} cannot create a builder: "
                                     f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if builder is None:
        raise MissingDependencyError("a CUDA GPU", f"TensorRT {trt.__version__} cannot create a builder")
    return trt


def build_engine(model_path, output, *, plugins=(), shapes=None, precision: str | None = None,
                 timing_cache=None, typing: str = "strong", converter=None) -> dict:
    """Build ``output`` (a serialized engine) and ``output + '.json'`` (its sidecar). Returns the sidecar.

    ``converter``: how an fp32 graph is converted when ``precision`` asks for fp16/bf16, called as
    ``converter(path, precision, target="tensorrt") -> (model, report)``; the build stage does not
    import the convert stage, so callers pass it (``ln_deploy.pipeline_steps.build_engine`` does)."""
    plan = plan_build(model_path, output, plugins=plugins, shapes=shapes, precision=precision,
                      timing_cache=timing_cache, typing=typing)
    trt = _tensorrt()
    major = int(trt.__version__.split(".")[0])
    if typing == "weak" and major >= 11:
        raise BadInputError(f"TensorRT {trt.__version__} networks are always strongly typed: typing 'weak' "
                            "(builder precision flags) does not exist there")
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, LoadPlugins, NetworkFromOnnxPath
    from polygraphy.backend.trt import Profile as PolyProfile

    from .. import progress

    with tempfile.TemporaryDirectory(prefix="ln_deploy_build_") as tmp:
        src = plan.model_path
        if plan.convert_first:
            from ..fileio import save_onnx_atomic

            if converter is None:
                raise BadInputError(f"{model_path} must be converted to {plan.precision} before a strongly typed "
                                    "build: pass converter= (ln_deploy.pipeline_steps.build_engine does)")

            with progress.step(f"converting to {plan.precision} for a strongly typed build"):
                converted, _ = converter(src, plan.precision, target="tensorrt")
            src = str(Path(tmp) / "converted.onnx")
            save_onnx_atomic(converted, src)
        strongly = typing == "strong"
        network = NetworkFromOnnxPath(src, strongly_typed=strongly if major < 11 else None)
        if plan.plugins:  # loaded before the parser sees the plugin ops
            network = LoadPlugins(plugins=[p.path for p in plan.plugins], obj=network)
        prof = PolyProfile()
        for name, (mn, op, mx) in plan.profile.shapes.items():
            prof.add(name, min=mn, opt=op, max=mx)
        flags = {}
        if typing == "weak":
            flags = {"fp16": plan.precision == "fp16", "bf16": plan.precision == "bf16"}
        config = CreateConfig(profiles=[prof], load_timing_cache=plan.timing_cache, **flags)
        with progress.step(f"building the TensorRT {trt.__version__} engine ({plan.precision}, {typing}ly typed)"):
            engine = EngineFromNetwork(network, config=config, save_timing_cache=plan.timing_cache)()
        blob = engine.serialize()
        sidecar = plan.sidecar(trt.__version__, gpu_name(), src if not plan.convert_first else "converted in memory")
        with atomic_output(output) as tmp_engine, atomic_output(str(output) + ".json") as tmp_side:
            Path(tmp_engine).write_bytes(bytes(blob))
            sidecar["engine_sha256"] = sha256_file(tmp_engine)
            Path(tmp_side).write_text(json.dumps(sidecar, indent=2) + "\n")
    return sidecar
