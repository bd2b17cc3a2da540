"""``serve``: ONNX models behind the KServe v2 HTTP protocol on uvicorn, with dynamic batching.

The source is one ``.onnx`` file or a Triton model repository written by ``ln-deploy package``
(its ONNX models are served with their configs' ``max_batch_size`` and batching window; TensorRT
engines in it are skipped with a warning, Triton serves those).

SIGTERM (or Ctrl-C) stops the server cleanly: uvicorn stops accepting connections, lets in-flight
requests finish (up to ``graceful_timeout_s``), then the batchers drain and the process exits 0.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInputError
from ..progress import info
from .runtime import DEFAULT_SPIN_US

log = logging.getLogger(__name__)


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    name: str | None = None  # for a single .onnx file; default: the file's stem
    max_batch_size: int | None = None  # None: the repository config's, or 8 when the model can batch
    max_queue: int = 128
    max_body_bytes: int = 64 << 20
    batch_window_ms: float | None = None  # None: the config's max_queue_delay, or 1 ms
    instances: int | None = None  # None: 2 on the CPU (as Triton's onnxruntime backend), 1 on a GPU
    device: str = "auto"
    intra_op_threads: int = 0  # 0: the cores this process may use over the instances (see parallelism)
    spin: bool | int = DEFAULT_SPIN_US  # ORT pool threads spin for work: off, on, or at most this many µs
    graceful_timeout_s: int = 30

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise BadInputError(f"--port must be 0..65535, got {self.port}")
        if not isinstance(self.spin, (bool, int)) or (not isinstance(self.spin, bool) and self.spin <= 0):
            raise BadInputError(f"--spin must be on, off or a number of microseconds > 0, got {self.spin!r}")
        if self.max_queue < 1:
            raise BadInputError(f"--max-queue must be >= 1, got {self.max_queue}")
        if self.max_body_bytes < 1024:
            raise BadInputError(f"--max-body-bytes must be >= 1024, got {self.max_body_bytes}")
        if self.batch_window_ms is not None and not 0 <= self.batch_window_ms <= 10_000:
            raise BadInputError(f"--batch-window-ms must be 0..10000, got {self.batch_window_ms}")
        if self.max_batch_size is not None and self.max_batch_size < 0:
            raise BadInputError(f"--max-batch-size must be >= 0, got {self.max_batch_size}")
        if self.instances is not None and self.instances < 1:
            raise BadInputError(f"--instances must be >= 1, got {self.instances}")
        if self.intra_op_threads < 0:
            raise BadInputError(f"--threads must be >= 0, got {self.intra_op_threads}")


CPU_INSTANCES = 2


def parallelism(opts: ServeOptions) -> tuple[int, int]:
    """(instances, intra-op threads per run) for ``opts``'s device.

    On the CPU two runs at once (Triton's default instance count for its onnxruntime backend), each
    with its share of the cores (``--threads 0``): a small model's batch is a few milliseconds, and
    with one run at a time the cores idled while the run waited for the event loop, and a run's
    parallel sections stalled whenever the HTTP work took one of their cores. benchmarks/bench_serve.py
    on 2 cores (docs/serving.md, the sixth run): small model served 1.9-2.4k rows/s by the pre-issue
    server, 4.0-4.5k now; large 0.97 of the best direct rate; the price is a large model's
    single-request latency (94 ms there against ~50 ms with one run of two threads). On a GPU one run at a time: the device serializes them anyway. Both of the
    instances share one session (its weights once in memory); ``--instances 1`` restores one run with
    every core.
    """
    from .runtime import choose_providers

    on_cpu = choose_providers(opts.device)[0] == "CPUExecutionProvider"
    instances = opts.instances or (CPU_INSTANCES if on_cpu else 1)
    threads = opts.intra_op_threads
    if not threads and on_cpu and instances > 1:
        threads = max(1, _usable_cores() // instances)
    return instances, threads


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # a container's or taskset's CPU limit, not the host's
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_models(source: str | os.PathLike, opts: ServeOptions) -> list:
    """The ``ServedModel``s for an ``.onnx`` file or a Triton repository folder."""
    from .runtime import load_served_model

    src = Path(source)
    window_default = 0.001 if opts.batch_window_ms is None else opts.batch_window_ms / 1000
    if src.is_file():
        if src.suffix.lower() != ".onnx":
            raise BadInputError(f"{src}: `ln-deploy serve` runs ONNX models (.onnx) or a model repository folder")
        name = opts.name or re.sub(r"[^A-Za-z0-9_.-]", "_", src.stem)
        from .repository import check_model_name

        check_model_name(name)
        return [load_served_model(src, name, max_batch_size=opts.max_batch_size, batch_window_s=window_default,
                                  device=opts.device, intra_op_threads=opts.intra_op_threads, spin=opts.spin)]
    if not src.exists():
        raise BadInputError(f"no such file or folder: {src}")
    if not src.is_dir():
        raise BadInputError(f"{src} is neither a file nor a folder")
    from ..errors import CheckFailedError
    from .repository import ONNX_PLATFORM, read_model_config, validate_model_dir, version_dirs

    if (src / "config.pbtxt").is_file():
        raise BadInputError(f"{src} is a model folder; pass the repository that contains it ({src.parent})")
    models = []
    for model_dir in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (model_dir / "config.pbtxt").is_file():
            log.warning("skipping %s: no config.pbtxt", model_dir)
            continue
        config = read_model_config(model_dir / "config.pbtxt")
        platform = config.platform or ("onnxruntime_onnx" if config.backend == "onnxruntime" else config.backend)
        if platform != ONNX_PLATFORM:
            info(f"[ln-deploy] skipping {model_dir.name}: platform {platform!r} is for Triton, not `ln-deploy serve`")
            continue
        try:
            validate_model_dir(model_dir, ort_check=False)  # the session below opens it anyway
        except CheckFailedError as e:
            raise BadInputError(f"invalid model folder: {e}") from None
        vdir = version_dirs(model_dir)[0]
        mbs = opts.max_batch_size if opts.max_batch_size is not None else config.max_batch_size
        window = window_default
        if opts.batch_window_ms is None and config.HasField("dynamic_batching"):
            window = config.dynamic_batching.max_queue_delay_microseconds / 1e6
        models.append(load_served_model(vdir / (config.default_model_filename or "model.onnx"), config.name,
                                        max_batch_size=mbs, batch_window_s=window, device=opts.device,
                                        version=vdir.name, intra_op_threads=opts.intra_op_threads,
                                        spin=opts.spin))
    if not models:
        raise BadInputError(f"{src}: no ONNX model to serve (expected <repo>/<name>/config.pbtxt with "
                            "platform onnxruntime_onnx, as `ln-deploy package` writes)")
    return models


PARITY_FILE = "parity.json"  # written by `ln-deploy deploy`/`package` beside config.pbtxt
MAX_PARITY_BYTES = 1 << 20


def metadata_parameters(source: str | os.PathLike, models: list) -> dict:
    """name -> the ``parameters`` of a repository model's KServe metadata: its parity certificate
    (``NAME/parity.json``) as ``{"ln_deploy.parity": {...}}``. The file is untrusted: read bounded;
    a malformed one is left out with a warning, the model is still served."""
    from ..loaders import load_json

    if not Path(source).is_dir():
        return {}
    out = {}
    for m in models:
        cert = Path(m.path).parent.parent / PARITY_FILE  # REPO/NAME/VERSION/model.onnx -> REPO/NAME
        if not cert.is_file():
            continue
        try:
            obj = load_json(cert, f"{m.name}/{PARITY_FILE}", max_bytes=MAX_PARITY_BYTES)
        except BadInputError as e:
            log.warning("%s; left out of the model's metadata", e)
            continue
        if not isinstance(obj, dict):
            log.warning("%s/%s is not a JSON object; left out of the model's metadata", m.name, PARITY_FILE)
            continue
        out[m.name] = {"ln_deploy.parity": obj}
    return out


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, created with ``IPPROTO_TCP``: asyncio turns Nagle off (TCP_NODELAY) only
    on accepted sockets whose ``proto`` says TCP, and an accepted socket inherits the listener's.
    With protocol 0, keep-alive requests waited ~40 ms each for the client's delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # Linux also copies it to accepted sockets
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise BadInputError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(source: str | os.PathLike, opts: ServeOptions | None = None) -> int:
    """Serve until SIGTERM/SIGINT; returns 0 after a clean shutdown."""
    from ..errors import require

    opts = opts or ServeOptions()
    opts.validate()
    instances, threads = parallelism(opts)
    opts = dataclasses.replace(opts, instances=instances, intra_op_threads=threads)
    uvicorn = require("uvicorn", "serve")
    require("starlette", "serve")
    from .app import create_app
    from .runtime import spin_text

    models = load_models(source, opts)
    app = create_app(models, max_queue=opts.max_queue, max_body_bytes=opts.max_body_bytes,
                     instances=opts.instances, metadata_parameters=metadata_parameters(source, models))
    sock = bind_socket(opts.host, opts.port)
    host, port = sock.getsockname()[:2]
    debug = logging.getLogger().isEnabledFor(logging.DEBUG)
    # proxy_headers off: nothing here reads the client's address, and uvicorn's X-Forwarded-* middleware
    # is one more ASGI layer on every request.
    config = uvicorn.Config(app, lifespan="on", log_level="debug" if debug else "warning", access_log=debug,
                            timeout_graceful_shutdown=opts.graceful_timeout_s, server_header=False,
                            http=_http_protocol(), loop=_event_loop(), proxy_headers=False)
    server = uvicorn.Server(config)
    for m in models:
        info(f"[ln-deploy] model {m.name!r} v{m.version}: {', '.join(t.describe() for t in m.signature.inputs)} "
             f"-> {', '.join(t.describe() for t in m.signature.outputs)}; max_batch_size {m.max_batch_size}, "
             f"window {m.batch_window_s * 1000:g} ms, {m.providers[0]}, "
             f"{opts.instances} instance(s) of {opts.intra_op_threads or 'default'} intra-op thread(s), "
             f"spinning {spin_text(opts.spin)}")
    url_host = f"[{host}]" if ":" in host else host
    # uvicorn installs its own handlers while it runs and re-raises the signal after a graceful
    # shutdown; these recorders receive that re-raise so the process exits 0, not by the signal.
    received: list[int] = []
    previous = {s: signal.signal(s, lambda sig, frame: received.append(sig)) for s in (signal.SIGTERM, signal.SIGINT)}
    _announce = _Announcer(server, f"[ln-deploy] serving {len(models)} model(s) on http://{url_host}:{port}")
    try:
        _announce.install()
        server.run(sockets=[sock])
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        sock.close()
    if received:
        info(f"[ln-deploy] stopped on {signal.Signals(received[0]).name}: in-flight requests finished")
    return 0


def _http_protocol():
    """httptools (C parser, in the serve extra) where installed, writing each response in one
    syscall (``serve/coalesce.py``); h11 (pure Python) otherwise."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        log.warning("httptools is not installed: serving with the slower pure-Python h11 parser")
        return "h11"
    from .coalesce import coalescing_httptools_protocol

    return coalescing_httptools_protocol()


def _event_loop() -> str:
    """uvloop (libuv, in the serve extra) where installed; asyncio's own loop otherwise. On the small
    model uvloop took 7-13% off the event loop's CPU time per request (docs/serving.md): the loop's
    turns, the selector and the socket transports are C there, Python in asyncio."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        log.info("uvloop is not installed: serving on asyncio's event loop")
        return "asyncio"
    return "uvloop"


class _Announcer:
    """Prints the ready line once uvicorn has started (so a test or a script can wait for it)."""

    def __init__(self, server, line: str):
        self.server, self.line = server, line

    def install(self) -> None:
        original = self.server.startup

        async def startup(*a, **kw):
            await original(*a, **kw)
            if self.server.started:
                print(self.line, file=sys.stderr, flush=True)

        self.server.startup = startup
