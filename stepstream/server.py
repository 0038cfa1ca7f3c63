"""The HTTP API, the SSE endpoint and the page, as one Starlette app to run or mount anywhere.

Endpoints are module-level functions reading `request.app.state`; `create_app` only assembles
them. Every route is relative, and the app needs no lifespan events (mounted sub-apps never get
them): the hub binds to the event loop on the first stream. Everything goes through the
orchestrator's public API.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import failures as failure_groups
from .encoding import dumps
from .eventstream import EventStream, stop_on_exit
from .guard import RequestGuard
from .hub import Hub, StreamRequest
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .metrics import registry_for
from .metrics import render as render_metrics
from .model import LEVELS, STATUSES, Conflict, InvalidParams, InvalidRequest, NotFound, iso
from .offload import Offload, StorageProbe, StorageUnavailable
from .orchestrator import Orchestrator
from .responses import SafeJSONResponse, error_response

MAX_LIMIT = {"jobs": 200, "children": 1000, "logs": 5000}
DEFAULT_LIMIT = {"jobs": 50, "children": 100, "logs": 1000}
EXPORT_PAGE = 5000
EXPORT_FORMATS = ("json", "ndjson", "text")
DURABLE_WAIT = 30.0  # seconds an answer waits for a journal that is behind (not failing) to catch up

T = TypeVar("T")


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


@dataclass(frozen=True)
class Settings:
    max_body: int


def _orch(request: Request) -> Orchestrator:
    return request.app.state.orchestrator


def _hub(request: Request) -> Hub:
    return request.app.state.hub


async def _storage(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A read of storage, off the event loop, answered within the offload's timeout (else 503)."""
    return await request.app.state.offload.run(fn, *args, **kwargs)


async def _durable(request: Request, seq: int) -> None:
    """Wait until `seq` is durable (nothing is shown that a crash could take back). A journal
    that is only behind is waited for (up to 30 s); one that fails to write answers 503 within
    a second of saying so, as any storage that does not answer."""
    hub, orch = _hub(request), _orch(request)
    deadline = time.monotonic() + DURABLE_WAIT
    while True:
        try:
            await asyncio.wait_for(hub.wait_visible(seq), 0.5)
            return
        except TimeoutError:
            failing = orch.storage_error
            if failing is not None or time.monotonic() > deadline:
                raise StorageUnavailable(f"{failing or 'storage'}: the latest changes are not written yet; "
                                         "try again later") from None


async def _command(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """A change, off the event loop; refused at once (503, nothing changed) while storage is
    known to fail or does not answer its probe."""
    failing = _orch(request).storage_error or await request.app.state.probe.problem()
    if failing is not None:
        raise StorageUnavailable(f"{failing}; nothing was changed, try again later")
    return await request.app.state.offload.run(fn, *args, command=True)


# ---------------------------------------------------------------- query parameters


def _known_params(request: Request, known: Iterable[str]) -> None:
    """400 naming the known parameters if the query has any other."""
    known = tuple(known)
    unknown = sorted({name for name in request.query_params if name not in known})
    if unknown:
        raise ApiError(400, "unknown_parameter",
                       f"unknown parameter(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")


def _int_param(request: Request, name: str, *, default: int | None, minimum: int,
               maximum: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ApiError(400, "bad_parameter", f"{name} must be a whole number >= {minimum}, not {raw[:40]!r}")
    value = int(raw)
    if value < minimum:
        raise ApiError(400, "bad_parameter", f"{name} must be >= {minimum}, not {value}")
    return min(value, maximum) if maximum is not None else value


def _choice_param(request: Request, name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise ApiError(400, "bad_parameter", f"{name} must be one of {', '.join(choices)}, not {raw[:40]!r}")
    return raw


def _text_param(request: Request, name: str) -> str | None:
    return request.query_params.get(name) or None


def _bool_param(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "0").lower()
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("0", "false", "no", ""):
        return False
    raise ApiError(400, "bad_parameter", f"{name} must be 1 or 0, not {raw[:40]!r}")


def _limit(request: Request, kind: str) -> int:
    return _int_param(request, "limit", default=DEFAULT_LIMIT[kind], minimum=1, maximum=MAX_LIMIT[kind])  # type: ignore[return-value]


async def _json_body(request: Request) -> Any:
    max_body = request.app.state.settings.max_body
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
    except RecursionError:
        raise ApiError(422, "invalid_body", "request body is nested too deeply") from None
    except ValueError as exc:  # includes UnicodeDecodeError and over-long integers
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None


async def _snapshot(request: Request, job_id: str) -> dict:
    """The job's snapshot, once everything it shows is durable (with a journal)."""
    snapshot = await _storage(request, _orch(request).snapshot, job_id)
    await _durable(request, snapshot["seq"])
    return snapshot


async def _created(request: Request, job_id: str) -> Response:
    """201 with the new job's snapshot; `Location` is a path (no Host header is echoed)."""
    location = request.url_for("job", job_id=job_id).path
    return SafeJSONResponse(await _snapshot(request, job_id), status_code=201, headers={"Location": location})


# ---------------------------------------------------------------- endpoints


async def page(request: Request) -> Response:
    if not request.url.path.endswith("/"):  # relative asset and API URLs need the slash
        return RedirectResponse(request.url.replace(path=request.url.path + "/"), status_code=308)
    return FileResponse(request.app.state.web / "index.html", headers={"Cache-Control": "no-cache"})


async def metrics(request: Request) -> Response:
    body = await _storage(request, render_metrics, request.app.state.metrics)
    return Response(body, media_type=METRICS_TYPE)


async def health(request: Request) -> Response:
    """Within a second, whatever storage does: 200 `ok`, or 503 `degraded` naming the storage
    error (from the backend, or from the one shared probe: a Redis PING)."""
    hub, orch = _hub(request), _orch(request)
    failing = orch.storage_error or await request.app.state.probe.problem()
    return SafeJSONResponse({"status": "degraded" if failing else "ok", "seq": orch.seq, "time": iso_now(),
                             "run_id": hub.store.store_id, "store_id": hub.store.store_id, "streams": hub.connections,
                             "storage_error": failing, "journal_error": orch.journal_error,
                             "workers": orch.workers()},
                            status_code=503 if failing else 200, headers={"Retry-After": "2"} if failing else None)


async def definitions(request: Request) -> Response:
    return SafeJSONResponse({"definitions": [{"name": name, "steps": steps}
                                             for name, steps in _orch(request).definitions().items()]})


async def create_job(request: Request) -> Response:
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_body", "body must be a JSON object {\"definition\": ..., \"params\": {...}}")
    unknown = sorted(set(body) - {"definition", "params"})
    if unknown:
        raise ApiError(422, "invalid_body", f"unknown fields: {', '.join(map(repr, unknown))}")
    definition, params = body.get("definition"), body.get("params", {})
    if not isinstance(definition, str) or not definition:
        raise ApiError(422, "invalid_body", "definition must be a non-empty string")
    if not isinstance(params, dict):
        raise ApiError(422, "invalid_body", "params must be a JSON object")
    try:
        job_id = await _command(request, _orch(request).start, definition, params)  # it waits to be durable
    except NotFound as exc:
        raise ApiError(422, "unknown_definition", str(exc)) from None
    return await _created(request, job_id)


async def list_jobs(request: Request) -> Response:
    _known_params(request, ("status", "definition", "q", "limit", "cursor"))
    return SafeJSONResponse(await _visible(request, await _storage(
        request, _orch(request).jobs,
        status=_choice_param(request, "status", STATUSES),
        definition=_text_param(request, "definition"),
        q=_text_param(request, "q"),
        limit=_limit(request, "jobs"),
        cursor=_int_param(request, "cursor", default=None, minimum=1),
    )))


async def _visible(request: Request, answer: dict) -> dict:
    await _durable(request, answer["seq"])
    return answer


async def get_job(request: Request) -> Response:
    return SafeJSONResponse(await _snapshot(request, request.path_params["job_id"]))


async def delete_job(request: Request) -> Response:
    await _command(request, _orch(request).delete, request.path_params["job_id"])
    return Response(status_code=204)


async def children(request: Request) -> Response:
    _known_params(request, ("step", "status", "limit", "cursor"))
    return SafeJSONResponse(await _storage(
        request, _orch(request).children,
        request.path_params["job_id"],
        step=_text_param(request, "step"),
        status=_choice_param(request, "status", STATUSES),
        limit=_limit(request, "children"),
        cursor=_int_param(request, "cursor", default=0, minimum=0),
    ))


async def failures(request: Request) -> Response:
    """A manager's or step's failed children grouped by error (`stepstream/failures.py`)."""
    _known_params(request, ("step", "error", "limit", "cursor"))
    orch, job_id = _orch(request), request.path_params["job_id"]
    query = {"step": _text_param(request, "step"), "error": _text_param(request, "error"),
             "limit": _limit(request, "children"), "cursor": _int_param(request, "cursor", default=0, minimum=0)}
    return SafeJSONResponse(await _storage(request, failure_groups.collect, orch, job_id, **query))


async def cancel(request: Request) -> Response:
    snapshot = await _command(request, _orch(request).cancel, request.path_params["job_id"])
    return SafeJSONResponse(snapshot, status_code=202)


async def rerun(request: Request) -> Response:
    return await _created(request, await _command(request, _orch(request).rerun, request.path_params["job_id"]))


async def logs(request: Request) -> Response:
    _known_params(request, ("step", "level", "after", "before", "limit", "format", "q"))
    orch, job_id = _orch(request), request.path_params["job_id"]
    query = {
        "step": _text_param(request, "step"),
        "q": _text_param(request, "q"),
        "level": _choice_param(request, "level", LEVELS) or "debug",
        "after": _int_param(request, "after", default=0, minimum=0),
    }
    fmt = _choice_param(request, "format", EXPORT_FORMATS) or "json"
    if fmt == "json":
        before = _int_param(request, "before", default=None, minimum=1)
        return SafeJSONResponse(await _storage(request, orch.logs, job_id, **query, before=before,
                                               limit=_limit(request, "logs")))
    first = await _storage(request, orch.logs, job_id, **query, limit=EXPORT_PAGE)  # 404, 400 before the stream
    name = f"{job_id}{'-' + query['step'] if query['step'] else ''}-logs.{'ndjson' if fmt == 'ndjson' else 'txt'}"
    safe_name = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in name)
    return StreamingResponse(
        _export(request.app.state.offload, orch, job_id, query, first, fmt),
        media_type="application/x-ndjson" if fmt == "ndjson" else "text/plain; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{safe_name}"', "Cache-Control": "no-cache"},
    )


async def _export(offload: Offload, orch: Orchestrator, job_id: str, query: dict, page: dict,
                  fmt: str) -> AsyncIterator[bytes]:
    """Every matching line, page by page, up to the last one written when the page is read. A
    page storage does not answer ends the download early (it is a stream: no status to change)."""
    while True:
        lines = [_export_line(record, fmt) for record in page["logs"]]
        if lines:
            yield "".join(lines).encode("utf-8")
        if page["next"] is None:
            return
        try:
            page = await offload.run(orch.logs, job_id, **{**query, "after": page["next"]}, limit=EXPORT_PAGE)
        except (NotFound, StorageUnavailable):  # deleted while exporting; storage gone
            return


def _export_line(record: dict, fmt: str) -> str:
    if fmt == "ndjson":
        return dumps(record) + "\n"
    where = record["step_name"] or "-"
    return f"{record['ts']} {record['level'].upper():<7} {where} {record['job_id']} {record['message']}\n"


async def events(request: Request) -> Response:
    _known_params(request, ("job", "children", "last_event_id"))
    hub = _hub(request)
    manager_id = _text_param(request, "job")
    children_too = _bool_param(request, "children")
    last_id = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    resume_from = hub.parse_last_event_id(last_id)
    if manager_id is not None:
        if resume_from is not None and await _storage(request, hub.store.ended_by, manager_id, resume_from):
            return Response(status_code=204)  # EventSource's signal to stop reconnecting
        await _storage(request, hub.store.stream_snapshot, manager_id)  # 404 / 400 now, before the stream starts
    stream_request = StreamRequest(manager_id, children_too, resume_from)
    # On shutdown every stream of the hub returns, so each response completes; cancelled
    # instead, uvicorn would log "ASGI callable returned without completing response".
    state = request.app.state
    state.exit_watcher = stop_on_exit(state.exit_watcher, hub.stop_streams)
    return EventStream(hub.stream(stream_request))


class _Revalidated(StaticFiles):
    """The page's modules, revalidated on every load: after an upgrade a browser never runs a
    mix of cached old modules and new ones (a 304 keeps it cheap)."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def iso_now() -> str:
    return iso(time.time())  # type: ignore[return-value]


# ---------------------------------------------------------------- errors


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


async def on_invalid_request(request: Request, exc: Exception) -> Response:
    return error_response(400, "bad_request", str(exc))


async def on_invalid_params(request: Request, exc: Exception) -> Response:
    return error_response(422, "invalid_params", str(exc))


async def on_storage_unavailable(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StorageUnavailable)
    return error_response(503, "storage_unavailable", str(exc), headers={"Retry-After": str(exc.retry_after)})


# ---------------------------------------------------------------- the app


def create_app(
    orchestrator: Orchestrator,
    *,
    max_body: int = 1 << 20,
    ping: float = 15,
    retry_ms: int = 2000,
    hub: Hub | None = None,
    allowed_hosts: Iterable[str] | None = None,
    token: str | None = None,
) -> Starlette:
    """The ASGI app serving `orchestrator`: page at `/`, JSON API under `/api`, stream at
    `/api/events`. Works standalone or mounted under any prefix; needs no lifespan.

    Mutating requests are refused when cross-site and need a JSON body type, and every response
    carries security headers, always. `allowed_hosts` (e.g. `["localhost", "127.0.0.1"]`)
    refuses other `Host` headers; `token` requires `Authorization: Bearer <token>` or the cookie
    set by opening the page with `?token=<token>`. An idle stream gets a keep-alive comment
    every `ping` seconds (a given `hub` keeps its own `ping`).
    """
    routes = [
        Route("/", page, methods=["GET"]),
        Route("/api/health", health, methods=["GET"]),
        Route("/api/definitions", definitions, methods=["GET"]),
        Route("/api/jobs", create_job, methods=["POST"]),
        Route("/api/jobs", list_jobs, methods=["GET"]),
        Route("/api/jobs/{job_id}", get_job, methods=["GET"], name="job"),
        Route("/api/jobs/{job_id}", delete_job, methods=["DELETE"]),
        Route("/api/jobs/{job_id}/children", children, methods=["GET"]),
        Route("/api/jobs/{job_id}/failures", failures, methods=["GET"]),
        Route("/api/jobs/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/api/jobs/{job_id}/rerun", rerun, methods=["POST"]),
        Route("/api/jobs/{job_id}/logs", logs, methods=["GET"]),
        Route("/api/events", events, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Mount("/static", _Revalidated(directory=_web_dir()), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestGuard, allowed_hosts=allowed_hosts, token=token)],
        exception_handlers={
            ApiError: on_api_error,
            HTTPException: on_http_error,
            NotFound: on_not_found,
            Conflict: on_conflict,
            InvalidParams: on_invalid_params,
            InvalidRequest: on_invalid_request,
            StorageUnavailable: on_storage_unavailable,
        },
    )
    app.state.orchestrator = orchestrator
    app.state.offload = hub.offload if hub is not None else Offload()
    app.state.probe = StorageProbe(orchestrator.check_storage, blocks=lambda: orchestrator.check_blocks)
    app.state.hub = hub or Hub(orchestrator.store, offload=app.state.offload, retry_ms=retry_ms, ping=ping)
    app.state.exit_watcher = None  # see `events`
    app.state.settings = Settings(max_body=max_body)
    app.state.metrics = registry_for(orchestrator, app.state.hub)
    app.state.web = _web_dir()
    return app
