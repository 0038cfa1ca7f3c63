"""JSON responses through the one total encoder, and the shape of every error."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from .encoding import dumps_bytes


class SafeJSONResponse(JSONResponse):
    """A JSONResponse that cannot fail to render (strict JSON, repaired where needed)."""

    def render(self, content: Any) -> bytes:
        return dumps_bytes(content)


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> SafeJSONResponse:
    """`{"error": {"code", "message"}}` with `status`."""
    return SafeJSONResponse(error_body(code, message), status_code=status, headers=headers)
