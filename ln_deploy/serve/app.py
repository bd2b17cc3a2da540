"""The KServe v2 HTTP endpoints as an ASGI application (Starlette for the routes, a direct path for infer).

Routes follow Triton's HTTP API: health (``/v2/health/live``, ``/v2/health/ready``), server
metadata (``/v2``), model metadata, readiness, config and statistics, the repository index, and
``infer``, each model route also under ``/versions/{version}``; Prometheus metrics at ``/metrics``.
Errors are ``{"error": message}`` JSON with a 4xx status for the client's mistakes (unknown routes
and wrong methods included), which is what ``tritonclient`` reads.

Why infer bypasses Starlette: it is the only hot route, and on a small model Starlette's layers
(two middlewares, the router's scan, ``Request``/``Response`` objects, the body streamed through
them) were a measurable part of each request's cost. ``KServeApp`` matches ``POST .../infer`` itself
and speaks ASGI directly: the body is the message uvicorn hands over (no copy when it comes in one
message), the response goes out as two ASGI messages; everything else goes to the Starlette app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from .batcher import DynamicBatcher, QueueFullError, ShuttingDownError
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, ServerMetrics
from .protocol import HEADER_LENGTH, PayloadTooLarge, ProtocolError, encode_infer_response, model_metadata, \
    parse_infer_request
from .runtime import InferenceError, ServedModel

log = logging.getLogger(__name__)

EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics", "model_repository"]
INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
_HEADER_LENGTH_KEY = HEADER_LENGTH.lower().encode()


@dataclass
class AppState:
    models: dict  # name -> ServedModel
    batchers: dict  # name -> DynamicBatcher
    max_body_bytes: int
    metrics: ServerMetrics
    ready: bool = False


def _error(status: int, msg: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": msg}, status_code=status, headers=headers)


class _ClientGone(Exception):
    """The client disconnected before its request was read: nobody to answer."""


def create_app(models: list[ServedModel], *, max_queue: int = 128, max_body_bytes: int = 64 << 20,
               instances: int = 1, metadata_parameters: dict | None = None):
    """``metadata_parameters``: model name -> the ``parameters`` object of its metadata (e.g. the
    parity certificate, ``server.metadata_parameters``)."""
    state = AppState({m.name: m for m in models}, {}, max_body_bytes, None)
    extra = metadata_parameters or {}
    state.metrics = ServerMetrics(state.models, state.batchers)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for m in models:
            b = DynamicBatcher(m, max_queue=max_queue, instances=instances)
            b.start()
            state.batchers[m.name] = b
        state.ready = True
        try:
            yield
        finally:
            # uvicorn has already stopped accepting and waited for in-flight requests; drain anyway.
            state.ready = False
            await asyncio.gather(*(b.close() for b in state.batchers.values()))

    def lookup(request: Request) -> ServedModel | JSONResponse:
        name = request.path_params["name"]
        m = state.models.get(name)
        if m is None:
            return _error(404, f"Request for unknown model: '{name}' is not found")
        version = request.path_params.get("version")
        if version is not None and version != m.version:
            return _error(404, f"Request for unknown model: '{name}' version {version} is not found")
        return m

    async def live(request: Request):
        return Response(status_code=200)

    async def ready(request: Request):
        return Response(status_code=200 if state.ready else 503)

    async def server_metadata(request: Request):
        return JSONResponse({"name": "ln_deploy", "version": __version__, "extensions": EXTENSIONS})

    async def metadata(request: Request):
        m = lookup(request)
        return m if isinstance(m, Response) else JSONResponse(model_metadata(m, extra.get(m.name)))

    async def model_ready(request: Request):
        m = lookup(request)
        if isinstance(m, Response):
            return m
        return Response(status_code=200 if state.ready else 503)

    async def config(request: Request):
        m = lookup(request)
        if isinstance(m, Response):
            return m
        from .model_config import config_to_json
        from .repository import ONNX_PLATFORM, build_config

        cfg = build_config(m.name, ONNX_PLATFORM, m.signature, max_batch_size=m.max_batch_size,
                           instances=instances, kind="cpu" if m.providers == ["CPUExecutionProvider"] else "gpu",
                           batch_window_us=int(m.batch_window_s * 1e6))
        return JSONResponse(config_to_json(cfg))

    async def stats(request: Request):
        names = [request.path_params["name"]] if "name" in request.path_params else list(state.models)
        out = []
        for name in names:
            if name not in state.models:
                return _error(404, f"Request for unknown model: '{name}' is not found")
            m, b = state.models[name], state.batchers.get(name)
            s = b.stats if b else None
            if s is None:
                continue

            def dur(count, ns):
                return {"count": count, "ns": ns}

            out.append({
                "name": m.name, "version": m.version, "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count, "execution_count": s.execution_count,
                "inference_stats": {"success": dur(s.success_count, s.success_ns), "fail": dur(s.fail_count, 0),
                                    "queue": dur(s.success_count + s.fail_count, s.queue_ns),
                                    "compute_infer": dur(s.execution_count, s.compute_ns)},
                "batch_stats": [{"batch_size": k, "compute_infer": dur(v, 0)}
                                for k, v in sorted(dict(s.batch_sizes).items())],
                "rejected_queue_full": s.rejected_queue_full,
            })
        return JSONResponse({"model_stats": out})

    async def repository_index(request: Request):
        return JSONResponse([{"name": m.name, "version": m.version, "state": "READY" if state.ready else "UNAVAILABLE"}
                             for m in state.models.values()])

    async def metrics(request: Request):
        try:
            body = state.metrics.exposition()
        except ImportError:
            return _error(501, "metrics need prometheus_client: pip install 'ln_deploy[serve]'")
        return Response(body, status_code=200, media_type=METRICS_CONTENT_TYPE)

    async def http_error(request: Request, exc: HTTPException):
        msg = f"{exc.detail}: {request.method} {request.url.path}"
        if exc.status_code == 405 and exc.headers and "Allow" in exc.headers:
            msg += f" (allowed: {exc.headers['Allow']})"
        return _error(exc.status_code, msg, exc.headers)

    async def internal_error(request: Request, exc: Exception):
        return _error(500, f"internal error: {type(exc).__name__}")

    routes = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/models/stats", stats, methods=["GET"]),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [
            Route(prefix, metadata, methods=["GET"]),
            Route(prefix + "/ready", model_ready, methods=["GET"]),
            Route(prefix + "/config", config, methods=["GET"]),
            Route(prefix + "/stats", stats, methods=["GET"]),
            # POST is answered by KServeApp; the route is here so other methods get a JSON 405.
            Route(prefix + "/infer", _unreachable, methods=["POST"]),
        ]
    starlette = Starlette(routes=routes, lifespan=lifespan,
                          exception_handlers={HTTPException: http_error, Exception: internal_error})
    app = KServeApp(starlette, state)
    app.state = state
    return app


async def _unreachable(request: Request):  # pragma: no cover - KServeApp answers POST .../infer
    return _error(500, "internal error: infer reached the router")


class KServeApp:
    """ASGI entry point: ``POST /v2/models/{name}[/versions/{v}]/infer`` here, the rest to Starlette."""

    def __init__(self, starlette: Starlette, state: AppState):
        self.starlette = starlette
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.fullmatch(scope["path"])
            if match:
                await self._infer(match.group(1), match.group(2), scope, receive, send)
                return
        await self.starlette(scope, receive, send)

    async def _infer(self, name: str, version: str | None, scope, receive, send) -> None:
        t0 = time.perf_counter()
        model = self.state.models.get(name)
        try:
            status, body, headers = await self._answer(model, name, version, scope, receive)
        except _ClientGone:
            status, body, headers = 400, b"", []  # nobody is listening; the connection is closing
        except Exception as e:  # noqa: BLE001 - a bug must still answer, in JSON
            log.exception("infer failed")
            status, body, headers = _json_error(500, f"internal error: {type(e).__name__}")
        self.state.metrics.observe(name if model is not None else "", status, time.perf_counter() - t0)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, model, name, version, scope, receive):
        if model is None:
            return _json_error(404, f"Request for unknown model: '{name}' is not found")
        if version is not None and version != model.version:
            return _json_error(404, f"Request for unknown model: '{name}' version {version} is not found")
        header_length = None
        declared = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = value
            elif key == _HEADER_LENGTH_KEY:
                header_length = value.decode("latin-1")
        try:
            body = await _read_body(receive, declared, self.state.max_body_bytes)
            req = parse_infer_request(body, header_length, model)
        except ProtocolError as e:
            return _json_error(e.status, str(e))
        state = self.state
        batcher = state.batchers.get(model.name)
        if batcher is None or not state.ready:
            return _json_error(503, "the server is not ready", [(b"retry-after", b"1")])
        try:
            results = await batcher.infer(req.feeds, req.batch)
        except QueueFullError as e:
            return _json_error(503, str(e), [(b"retry-after", b"1")])
        except ShuttingDownError as e:
            return _json_error(503, str(e))
        except InferenceError as e:
            return _json_error(400 if e.client_error else 500, f"inference failed: {e}")
        body, headers = encode_infer_response(model, req, results)
        return 200, body, [(k.encode(), v.encode()) for k, v in headers.items()]


def _json_error(status: int, msg: str, extra: list | None = None):
    return status, json.dumps({"error": msg}).encode(), [(b"content-type", b"application/json"), *(extra or [])]


async def _read_body(receive, declared: bytes | None, limit: int):
    """The body, refused with 413 as soon as it is known to exceed ``limit``: from Content-Length
    before reading anything, and by counting while streaming (chunked bodies have no length)."""
    if declared is not None:
        if not declared.isdigit():
            raise ProtocolError(f"invalid Content-Length {declared[:40].decode('latin-1')!r}")
        if int(declared) > limit:
            raise PayloadTooLarge(f"the request body of {int(declared)} bytes exceeds the limit of {limit} bytes")
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _ClientGone
    body = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes")
        return body  # the usual case: the whole body in one message, used as it is
    parts, size = [body], len(body)
    while True:
        if size > limit:
            raise PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes")
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        parts.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            break
    if size > limit:
        raise PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes")
    return b"".join(parts)
