"""The HTTP API, the SSE endpoint and the page, as one Starlette app to run or mount anywhere.

Every route is relative, and the app needs no lifespan events (mounted sub-apps never get
them): the hub binds to the event loop on the first stream.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .hub import Hub, StreamRequest
from .model import LEVELS, STATUSES, Conflict, NotFound
from .orchestrator import Orchestrator

MAX_LIMIT = {"jobs": 200, "children": 1000, "logs": 5000}
DEFAULT_LIMIT = {"jobs": 50, "children": 100, "logs": 1000}


def _web_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "web", here.parent / "web"):  # installed wheel / source checkout
        if (candidate / "index.html").is_file():
            return candidate
    raise RuntimeError("stepstream's page (web/index.html) was not found next to the package")


class ApiError(Exception):
    """An error answered as `{"error": {"code", "message"}}` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


# ---------------------------------------------------------------- query parameters


def _int_param(request: Request, name: str, *, default: int | None, minimum: int,
               maximum: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise ApiError(400, "bad_parameter", f"{name} must be a whole number >= {minimum}, not {raw!r}")
    value = int(raw)
    if value < minimum:
        raise ApiError(400, "bad_parameter", f"{name} must be >= {minimum}, not {value}")
    return min(value, maximum) if maximum is not None else value


def _choice_param(request: Request, name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise ApiError(400, "bad_parameter", f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return raw


def _bool_param(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "0").lower()
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("0", "false", "no", ""):
        return False
    raise ApiError(400, "bad_parameter", f"{name} must be 1 or 0, not {raw!r}")


def _limit(request: Request, kind: str) -> int:
    return _int_param(request, "limit", default=DEFAULT_LIMIT[kind], minimum=1, maximum=MAX_LIMIT[kind])  # type: ignore[return-value]


async def _json_body(request: Request, max_body: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise ApiError(413, "body_too_large", f"request body is over {max_body} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body:
            raise ApiError(413, "body_too_large", f"request body is over {max_body} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None


# ---------------------------------------------------------------- the app


def create_app(
    orchestrator: Orchestrator,
    *,
    max_body: int = 1 << 20,
    ping: float = 15,
    retry_ms: int = 2000,
    hub: Hub | None = None,
) -> Starlette:
    """The ASGI app serving `orchestrator`: page at `/`, JSON API under `/api`, stream at
    `/api/events`. Works standalone or mounted under any prefix; needs no lifespan."""
    orch = orchestrator
    store = orch.store
    hub = hub or Hub(store, retry_ms=retry_ms)
    web = _web_dir()

    async def page(request: Request) -> Response:
        if not request.url.path.endswith("/"):  # relative asset and API URLs need the slash
            return RedirectResponse(request.url.replace(path=request.url.path + "/"), status_code=308)
        return FileResponse(web / "index.html", headers={"Cache-Control": "no-cache"})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "seq": store.seq, "run_id": store.run_id,
                             "streams": hub.connections})

    async def definitions(request: Request) -> Response:
        return JSONResponse({"definitions": [{"name": name, "steps": steps}
                                             for name, steps in orch.definitions().items()]})

    async def create_job(request: Request) -> Response:
        body = await _json_body(request, max_body)
        if not isinstance(body, dict):
            raise ApiError(422, "invalid_body", "body must be a JSON object {\"definition\": ..., \"params\": {...}}")
        unknown = sorted(set(body) - {"definition", "params"})
        if unknown:
            raise ApiError(422, "invalid_body", f"unknown fields: {', '.join(unknown)}")
        definition, params = body.get("definition"), body.get("params", {})
        if not isinstance(definition, str) or not definition:
            raise ApiError(422, "invalid_body", "definition must be a non-empty string")
        if not isinstance(params, dict):
            raise ApiError(422, "invalid_body", "params must be a JSON object")
        if definition not in orch.definitions():
            raise ApiError(422, "unknown_definition",
                           f"no definition named {definition!r}; known: {', '.join(orch.definitions()) or 'none'}")
        job_id = orch.start(definition, params)
        location = str(request.url_for("job", job_id=job_id))
        return JSONResponse(orch.snapshot(job_id), status_code=201, headers={"Location": location})

    async def list_jobs(request: Request) -> Response:
        status = _choice_param(request, "status", STATUSES)
        cursor = _int_param(request, "cursor", default=None, minimum=1)
        return JSONResponse(store.list_managers(status=status, limit=_limit(request, "jobs"), cursor=cursor))

    async def get_job(request: Request) -> Response:
        return JSONResponse(orch.snapshot(request.path_params["job_id"]))

    async def children(request: Request) -> Response:
        return JSONResponse(store.children(
            request.path_params["job_id"],
            step=request.query_params.get("step") or None,
            status=_choice_param(request, "status", STATUSES),
            limit=_limit(request, "children"),
            cursor=_int_param(request, "cursor", default=0, minimum=0),  # type: ignore[arg-type]
        ))

    async def cancel(request: Request) -> Response:
        return JSONResponse(orch.cancel(request.path_params["job_id"]), status_code=202)

    async def logs(request: Request) -> Response:
        return JSONResponse(store.logs(
            request.path_params["job_id"],
            step=request.query_params.get("step") or None,
            level=_choice_param(request, "level", LEVELS) or "debug",
            after=_int_param(request, "after", default=0, minimum=0),  # type: ignore[arg-type]
            before=_int_param(request, "before", default=None, minimum=1),
            limit=_limit(request, "logs"),
        ))

    async def events(request: Request) -> Response:
        manager_id = request.query_params.get("job") or None
        children_too = _bool_param(request, "children")
        last_id = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        if manager_id is not None:
            store.stream_snapshot(manager_id)  # 404 / 400 now, before the stream starts
        stream_request = StreamRequest(manager_id, children_too, hub.parse_last_event_id(last_id))
        return EventSourceResponse(hub.stream(stream_request), ping=ping,
                                   headers={"Cache-Control": "no-cache"})

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/api/health", health, methods=["GET"]),
        Route("/api/definitions", definitions, methods=["GET"]),
        Route("/api/jobs", create_job, methods=["POST"]),
        Route("/api/jobs", list_jobs, methods=["GET"]),
        Route("/api/jobs/{job_id}", get_job, methods=["GET"], name="job"),
        Route("/api/jobs/{job_id}/children", children, methods=["GET"]),
        Route("/api/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/api/jobs/{job_id}/logs", logs, methods=["GET"]),
        Route("/api/events", events, methods=["GET"]),
        Mount("/static", StaticFiles(directory=web), name="static"),
    ]

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.code, exc.message)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"{request.method} is not allowed on {request.url.path}" if exc.status_code == 405 else exc.detail
        return error_response(exc.status_code, code, str(message), headers=exc.headers)

    async def on_not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, "not_found", str(exc))

    async def on_conflict(request: Request, exc: Exception) -> Response:
        return error_response(409, "conflict", str(exc))

    async def on_value_error(request: Request, exc: Exception) -> Response:
        return error_response(400, "bad_request", str(exc))

    app = Starlette(
        routes=routes,
        exception_handlers={
            ApiError: on_api_error,
            HTTPException: on_http_error,
            NotFound: on_not_found,
            Conflict: on_conflict,
            ValueError: on_value_error,
        },
    )
    app.state.orchestrator = orch
    app.state.hub = hub
    return app
