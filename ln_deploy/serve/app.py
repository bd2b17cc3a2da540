"""The KServe v2 HTTP endpoints as a Starlette (ASGI) application.

Routes follow Triton's HTTP API: health (``/v2/health/live``, ``/v2/health/ready``), server
metadata (``/v2``), model metadata, readiness, config and statistics, the repository index, and
``infer``, each model route also under ``/versions/{version}``. Errors are ``{"error": message}``
with a 4xx status for the client's mistakes, which is what ``tritonclient`` reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from .batcher import DynamicBatcher, QueueFullError, ShuttingDownError
from .protocol import HEADER_LENGTH, PayloadTooLarge, ProtocolError, encode_infer_response, model_metadata, \
    parse_infer_request
from .runtime import InferenceError, ServedModel

log = logging.getLogger(__name__)

EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics", "model_repository"]


@dataclass
class AppState:
    models: dict  # name -> ServedModel
    batchers: dict  # name -> DynamicBatcher
    max_body_bytes: int
    ready: bool = False


def _error(status: int, msg: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": msg}, status_code=status, headers=headers)


def create_app(models: list[ServedModel], *, max_queue: int = 128, max_body_bytes: int = 64 << 20,
               instances: int = 1) -> Starlette:
    state = AppState({m.name: m for m in models}, {}, max_body_bytes)

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
        return m if isinstance(m, Response) else JSONResponse(model_metadata(m))

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
                "batch_stats": [{"batch_size": k, "compute_infer": dur(v, 0)} for k, v in sorted(s.batch_sizes.items())],
                "rejected_queue_full": s.rejected_queue_full,
            })
        return JSONResponse({"model_stats": out})

    async def repository_index(request: Request):
        return JSONResponse([{"name": m.name, "version": m.version, "state": "READY" if state.ready else "UNAVAILABLE"}
                             for m in state.models.values()])

    async def infer(request: Request):
        m = lookup(request)
        if isinstance(m, Response):
            return m
        try:
            body = await _read_body(request, state.max_body_bytes)
            req = parse_infer_request(body, request.headers.get(HEADER_LENGTH), m)
        except ProtocolError as e:
            return _error(e.status, str(e))
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening; the connection is closing
        batcher = state.batchers.get(m.name)
        if batcher is None or not state.ready:
            return _error(503, "the server is not ready", {"Retry-After": "1"})
        try:
            results = await batcher.infer(req.feeds, req.batch)
        except QueueFullError as e:
            return _error(503, str(e), {"Retry-After": "1"})
        except ShuttingDownError as e:
            return _error(503, str(e))
        except InferenceError as e:
            status = 400 if e.client_error else 500
            return _error(status, f"inference failed: {e}")
        body, headers = encode_infer_response(m, req, results)
        return Response(body, status_code=200, headers=headers)

    # infer first: Starlette tries routes in order and infer is the hot path.
    routes = [Route(prefix + "/infer", infer, methods=["POST"])
              for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")]
    routes += [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/models/stats", stats, methods=["GET"]),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
    ]
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [
            Route(prefix, metadata, methods=["GET"]),
            Route(prefix + "/ready", model_ready, methods=["GET"]),
            Route(prefix + "/config", config, methods=["GET"]),
            Route(prefix + "/stats", stats, methods=["GET"]),
        ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.ln_deploy = state
    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit``: from Content-Length
    before reading anything, and by counting while streaming (chunked bodies have no length)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ProtocolError(f"invalid Content-Length {declared[:40]!r}")
        if int(declared) > limit:
            raise PayloadTooLarge(f"the request body of {int(declared)} bytes exceeds the limit of {limit} bytes")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes")
    return bytes(buf)
