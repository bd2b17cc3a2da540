"""The one place ln_deploy opens ONNX Runtime sessions, probes graphs for native crashes, and reads
ONNX Runtime's error messages.

Why one place: nine stages used to build ``SessionOptions`` by hand with different optimisation
levels, thread counts and log levels, so a graph validated at one level could crash at another.
Every session now comes from :func:`open_session` with a :class:`SessionConfig`.

Why a child process: ONNX Runtime's optimizers are native code, and some of them crash on valid
graphs (a segfault kills the Python process: no message, no file). Known case: at ORT_ENABLE_ALL
the ``NchwcTransformer`` segfaults on an fp16 ``Transpose(perm=[1,0,2])`` feeding a ``MatMul`` with
an fp16 weight -- what every fp16 conversion of ``nn.MultiheadAttention`` produces (seen on ORT
1.24.4, 1.31.1, 1.32.0; docs/precision.md). :func:`probe_session` builds the session in a child
process first, so a crash becomes one line (what crashed, at which level); :func:`deployable_config`
then finds the nearest configuration that loads (the crashing optimizer disabled, else a lower
level). Results are cached by the model's hash, ORT's version and the configuration, in memory and
under ``$LN_DEPLOY_CACHE_DIR`` (default ``~/.cache/ln_deploy``), so a graph is probed once.

Heavy imports (onnxruntime, onnx) are lazy; importing this module costs nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# ORT's GraphOptimizationLevel names, lowest first. "layout" (ORT_ENABLE_LAYOUT) exists from ORT 1.22.
LEVELS = ("disable", "basic", "extended", "layout", "all")
_ORT_LEVEL_NAMES = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                    "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL"}
# Triton's onnxruntime backend reads `optimization { graph { level: N } }`: -1 basic, 1 extended,
# 2 disable, anything else (0, the default) ORT_ENABLE_ALL (onnxruntime_backend src/onnxruntime.cc).
TRITON_GRAPH_LEVEL = {"basic": -1, "extended": 1, "disable": 2, "all": 0}

# Optimizers known to crash ONNX Runtime natively on graphs ln_deploy produces, with why.
KNOWN_CRASHING_OPTIMIZERS = {
    "NchwcTransformer": "segfaults on an fp16 Transpose(perm=[1,0,2]) feeding a MatMul with an fp16 weight "
                        "(ORT_ENABLE_ALL; seen on ORT 1.24.4, 1.31.1, 1.32.0)",
}
METADATA_DISABLED = "ln_deploy.ort.disabled_optimizers"  # written by convert where the probe needed it


@dataclass(frozen=True)
class SessionConfig:
    """How to open a session. Validates itself; ``replace`` gives a modified copy."""

    level: str = "all"
    threads: int = 0  # intra-op threads; 0 = ORT's default
    disabled_optimizers: tuple[str, ...] = ()
    log_level: int = 4  # 0 verbose .. 4 fatal; 4: ORT's own error lines stay off stderr (its exception carries them)
    provider: str = "CPUExecutionProvider"
    spinning: bool = True  # False for servers: ORT's spinning pool threads steal the event loop's cores
    spin_us: int = 0  # with spinning: how long a pool thread spins for work, in µs (0: ORT's own bound)

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"threads must be an int >= 0, got {self.threads!r}")
        if self.log_level not in range(5):
            raise ValueError(f"log_level must be 0..4, got {self.log_level!r}")
        if isinstance(self.spin_us, bool) or not isinstance(self.spin_us, int) or self.spin_us < 0:
            raise ValueError(f"spin_us must be an int >= 0, got {self.spin_us!r}")
        object.__setattr__(self, "disabled_optimizers", tuple(sorted(set(self.disabled_optimizers))))

    def replace(self, **changes) -> "SessionConfig":
        return dataclasses.replace(self, **changes)

    @property
    def providers(self) -> list[str]:
        return [self.provider] if self.provider == "CPUExecutionProvider" else [self.provider, "CPUExecutionProvider"]

    @property
    def level_name(self) -> str:
        return _ORT_LEVEL_NAMES[self.level]

    def describe(self) -> str:
        """'ORT_ENABLE_ALL', or 'ORT_ENABLE_ALL without NchwcTransformer'."""
        s = self.level_name
        if self.disabled_optimizers:
            s += " without " + ", ".join(self.disabled_optimizers)
        return s

    def key(self) -> str:
        """What can change how the graph is built (threads and logging cannot)."""
        return f"{self.level}|{','.join(self.disabled_optimizers)}|{self.provider}"

    def to_dict(self) -> dict:
        """Every field by its name (``level``, ``threads``, ``disabled_optimizers``, ``log_level``,
        ``provider``, ``spinning``, ``spin_us``): ``SessionConfig(**d)`` rebuilds it."""
        return dataclasses.asdict(self)


DEFAULT = SessionConfig()
# No graph rewrites: the values are the ones each node computes in its declared types (calibration,
# kernel probes, verification against a reference).
UNOPTIMIZED = SessionConfig(level="disable")


def session_options(config: SessionConfig = DEFAULT):
    """The ``onnxruntime.SessionOptions`` for ``config`` (the only place ln_deploy builds them)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, config.level_name,
                                          ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    so.log_severity_level = config.log_level
    if config.threads:
        so.intra_op_num_threads = config.threads
    if not config.spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    elif config.spin_us:
        so.add_session_config_entry("session.intra_op.spin_duration_us", str(config.spin_us))
    return so


def _source(model):
    """What InferenceSession accepts: a path string or serialized bytes."""
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    return model.SerializeToString()  # onnx.ModelProto


def open_session(model, config: SessionConfig = DEFAULT, *, probe: bool | str = "auto"):
    """An ``onnxruntime.InferenceSession`` for ``model`` (a ModelProto, serialized bytes or a path).

    ``probe``: True builds the session in a child process first (cached, see the module docstring)
    and raises :class:`OrtCrash` instead of crashing this process; "auto" does so when the graph
    holds fp16/bf16 tensors and the level rewrites the graph (where the known crashes live);
    False never. ORT's own exceptions (refused graph, missing kernel) pass through: read them
    with :func:`parse_error`.
    """
    import onnxruntime as ort

    if probe == "auto":
        probe = config.level != "disable" and holds_low_precision(model)
    if probe:
        result = probe_session(model, config)
        if result.crashed:
            raise OrtCrash(result)
    return ort.InferenceSession(_source(model), session_options(config), providers=config.providers,
                                disabled_optimizers=disabled_optimizers_of(config))


def holds_low_precision(model) -> bool:
    """True when the graph has fp16/bf16 tensors (initializers, I/O, value_info or Cast targets)."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        try:
            if isinstance(model, (bytes, bytearray)):
                m = onnx.ModelProto()
                m.ParseFromString(bytes(model))
            else:
                m = onnx.load(str(model), load_external_data=False)
        except Exception:  # noqa: BLE001 - unreadable: let ORT say why, probing it is the safe choice
            return True
        model = m
    low = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)

    def graph_has(g) -> bool:
        if any(t.data_type in low for t in g.initializer):
            return True
        if any(v.type.tensor_type.elem_type in low for v in (*g.input, *g.output, *g.value_info)):
            return True
        for n in g.node:
            for a in n.attribute:
                if a.name == "to" and a.i in low:
                    return True
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in low:
                    return True
                if a.type == onnx.AttributeProto.GRAPH and graph_has(a.g):
                    return True
        return False

    return graph_has(model.graph)


# --------------------------------------------------------------------------- the child-process probe

@dataclass
class ProbeResult:
    """How building a session went in a child process; ``to_dict()`` holds the fields below by name."""

    config: SessionConfig
    ok: bool
    crashed: bool = False  # killed by a signal (segfault, abort) or died without a word
    signal_name: str = ""
    error: str = ""  # first line of ORT's exception, or of the child's stderr after a crash
    ort_version: str = ""
    cached: bool = False

    def line(self, what: str = "the model") -> str:
        """One line: what crashed, at which level."""
        if self.ok:
            return f"ONNX Runtime {self.ort_version} opens {what} at {self.config.describe()}"
        if self.crashed:
            how = f"crashed ({self.signal_name})" if self.signal_name else "died"
            return (f"ONNX Runtime {self.ort_version} {how} creating a session for {what} at "
                    f"{self.config.describe()}" + (f": {self.error}" if self.error else ""))
        return f"ONNX Runtime {self.ort_version} refuses {what} at {self.config.describe()}: {self.error}"

    def to_dict(self) -> dict:
        """Every field by its name, ``config`` as ``SessionConfig.to_dict()`` (the probe cache's JSON)."""
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        return d


class OrtCrash(Exception):
    """ONNX Runtime crashed natively in the probe; ``str()`` is the one line. Callers turn it into
    their error type (bad input for a user's file, a failed check for a graph ln_deploy made)."""

    def __init__(self, result: ProbeResult, what: str = "the model"):
        self.result = result
        super().__init__(result.line(what))


_MEMO: dict[str, ProbeResult] = {}
PROBE_TIMEOUT_S = 600


def _cache_dir() -> Path:
    return Path(os.environ.get("LN_DEPLOY_CACHE_DIR") or Path.home() / ".cache" / "ln_deploy") / "ort_probe"


def _model_hash(model) -> str:
    h = hashlib.sha256()
    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    else:
        h.update(_source(model))
    return h.hexdigest()


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def probe_session(model, config: SessionConfig = DEFAULT) -> ProbeResult:
    """Build a session for ``model`` with ``config`` in a child process; never crashes this one."""
    version = _ort_version()
    key = hashlib.sha256(f"{_model_hash(model)}|{version}|{config.key()}".encode()).hexdigest()[:32]
    if key in _MEMO:
        return _named(dataclasses.replace(_MEMO[key], cached=True), model)
    disk = _cache_dir() / f"{key}.json"
    try:
        d = json.loads(disk.read_text())
        result = ProbeResult(**{**d, "config": SessionConfig(**{**d["config"], "disabled_optimizers":
                                                                  tuple(d["config"]["disabled_optimizers"])}),
                                "cached": True})
        if result.ort_version == version and result.config.key() == config.key():
            _MEMO[key] = result
            return _named(result, model)
    except (OSError, ValueError, TypeError, KeyError):
        pass  # no cache entry (or an unreadable one): probe
    result = _run_child(model, config, version)
    _MEMO[key] = result
    try:
        disk.parent.mkdir(parents=True, exist_ok=True)
        tmp = disk.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result.to_dict()))
        os.replace(tmp, disk)
    except OSError as e:  # a read-only home: the in-memory cache still holds
        log.debug("cannot write the probe cache %s: %s", disk, e)
    return _named(result, model)


_MODEL = "<model>"  # the probed file's path in a cached error: the cache is keyed by content, not by path


def _named(result: ProbeResult, model) -> ProbeResult:
    """``result`` with its error naming this call's file (a cached entry may come from another path)."""
    if _MODEL not in result.error:
        return result
    name = str(model) if isinstance(model, (str, os.PathLike)) else "the model"
    return dataclasses.replace(result, error=result.error.replace(_MODEL, name))


def _run_child(model, config: SessionConfig, version: str) -> ProbeResult:
    tmpdir = None
    if isinstance(model, (str, os.PathLike)):
        path = str(model)
    else:
        tmpdir = tempfile.mkdtemp(prefix="ln_deploy_probe.")
        path = os.path.join(tmpdir, "model.onnx")
        with open(path, "wb") as f:
            f.write(_source(model))
    # The child imports only this module (stdlib at import time) and onnxruntime.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import ln_deploy.ort as o; o._child_main()")
    pkg_root = str(Path(__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONFAULTHANDLER"}
    try:
        proc = subprocess.run([sys.executable, "-c", code, pkg_root, path, json.dumps(config.to_dict())],
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return ProbeResult(config, ok=False, crashed=True, error=f"no answer within {PROBE_TIMEOUT_S} s",
                           ort_version=version)
    finally:
        if tmpdir is not None:
            import shutil

            shutil.rmtree(tmpdir, ignore_errors=True)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode == 0 and last.startswith("{"):
        d = json.loads(last)
        return ProbeResult(config, ok=d["ok"], error=d.get("error", "").replace(path, _MODEL), ort_version=version)
    sig = ""
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return ProbeResult(config, ok=False, crashed=True, signal_name=sig,
                       error=(tail[-1].replace(path, _MODEL)[:200] if tail else ""), ort_version=version)


def _child_main() -> None:
    path, cfg = sys.argv[2], json.loads(sys.argv[3])
    cfg["disabled_optimizers"] = tuple(cfg["disabled_optimizers"])
    config = SessionConfig(**cfg)
    try:
        import onnxruntime as ort

        ort.InferenceSession(path, session_options(config), providers=config.providers,
                             disabled_optimizers=list(config.disabled_optimizers) or None)
        out = {"ok": True}
    except Exception as e:  # noqa: BLE001 - ORT refusing the graph is an answer, not a crash
        out = {"ok": False, "error": first_line(e)}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


def fallbacks(config: SessionConfig) -> list[SessionConfig]:
    """The configurations to try, nearest first, when ``config`` crashes: the known crashing
    optimizers disabled, then ORT_ENABLE_EXTENDED (no layout optimizers at all)."""
    out = []
    extra = tuple(o for o in KNOWN_CRASHING_OPTIMIZERS if o not in config.disabled_optimizers)
    if extra and LEVELS.index(config.level) >= LEVELS.index("layout"):
        out.append(config.replace(disabled_optimizers=config.disabled_optimizers + extra))
    if LEVELS.index(config.level) > LEVELS.index("extended"):
        out.append(config.replace(level="extended"))
    return out


@dataclass
class Deployable:
    """The configuration that loads ``model`` (``config``), what was tried first (``crashes``)."""

    config: SessionConfig
    crashes: list[ProbeResult] = field(default_factory=list)

    @property
    def worked_around(self) -> bool:
        return bool(self.crashes)

    def note(self, what: str = "the model") -> str:
        if not self.crashes:
            return ""
        return f"{self.crashes[0].line(what)}; using {self.config.describe()} instead"


def deployable_config(model, config: SessionConfig = DEFAULT, what: str = "the model") -> Deployable:
    """The nearest configuration to ``config`` whose session builds without a native crash.
    Raises :class:`OrtCrash` (one line) when every fallback crashes too. A graph ORT refuses with
    an exception is not a crash: the caller's own session raises that."""
    first = probe_session(model, config)
    if not first.crashed:
        return Deployable(config)
    crashes = [first]
    for alt in fallbacks(config):
        r = probe_session(model, alt)
        if not r.crashed:
            log.info("%s", f"{first.line(what)}; {alt.describe()} works")
            return Deployable(alt, crashes)
        crashes.append(r)
    raise OrtCrash(first, what)


def disabled_optimizers_of(config: SessionConfig) -> list[str] | None:
    return list(config.disabled_optimizers) or None


def open_deployable(model, config: SessionConfig = DEFAULT, what: str = "the model", *, probe: bool | str = True):
    """(session, Deployable): the session at the nearest configuration that does not crash.
    ``probe`` as in :func:`open_session` ("auto": only graphs with fp16/bf16 tensors)."""
    import onnxruntime as ort

    if probe == "auto":
        probe = config.level != "disable" and holds_low_precision(model)
    dep = deployable_config(model, config, what) if probe else Deployable(config)
    sess = ort.InferenceSession(_source(model), session_options(dep.config), providers=dep.config.providers,
                                disabled_optimizers=disabled_optimizers_of(dep.config))
    return sess, dep


def level_from_triton(graph_level: int | None) -> str:
    """The inverse of TRITON_GRAPH_LEVEL (what Triton's backend does with the config's value)."""
    return {-1: "basic", 1: "extended", 2: "disable"}.get(graph_level, "all")


def triton_graph_level(config: SessionConfig) -> int | None:
    """Triton's onnxruntime-backend ``optimization.graph.level`` equivalent to ``config``, or None
    for Triton's default (ORT_ENABLE_ALL). Triton cannot disable one optimizer: a config that needs
    that maps to ORT_ENABLE_EXTENDED (the level below every layout optimizer)."""
    if config.level == "all" and not config.disabled_optimizers:
        return None
    if config.level in ("all", "layout"):
        return TRITON_GRAPH_LEVEL["extended"]
    return TRITON_GRAPH_LEVEL[config.level]


# --------------------------------------------------------------------------- ORT's error messages

@dataclass(frozen=True)
class OrtError:
    """What an ONNX Runtime exception says: the node it names (or None) and its first line."""

    message: str
    node: str | None = None
    missing_kernel: bool = False
    kind: str = ""  # ORT's exception class: Fail, InvalidGraph, InvalidArgument, NotImplemented...


_NODE_PATTERNS = (re.compile(r"node with name '([^']*)'"), re.compile(r"in node \(([^)]*)\)"),
                  re.compile(r"Node \(([^)]*)\)"), re.compile(r"node name: ([^)]*)\)"))


def first_line(e, limit: int = 300) -> str:
    """The first non-empty line of an exception (or string), at most ``limit`` characters."""
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__ if isinstance(e, BaseException) else ""
    return lines[0][:limit]


def node_name_in(message: str) -> str | None:
    """The node an ORT (or ONNX inference) message names, or None."""
    for pat in _NODE_PATTERNS:
        m = pat.search(message)
        if m and m.group(1):
            return m.group(1)
    return None


def parse_error(e) -> OrtError:
    """Read an ONNX Runtime exception (or its text)."""
    full = str(e)
    msg = first_line(e)
    missing = "NOT_IMPLEMENTED" in full or "Could not find an implementation" in full
    kind = type(e).__name__ if isinstance(e, BaseException) else ""
    return OrtError(msg, node_name_in(full), missing, kind)


def is_ort_exception(e: BaseException) -> bool:
    return type(e).__module__.startswith("onnxruntime")
