"""Request checks and security headers around the whole app, as one ASGI middleware.

In order: the `Host` header (when a list of allowed hosts is given: DNS rebinding), the token
(when one is set: `Authorization: Bearer`, or an HttpOnly cookie set by opening the page with
`?token=` once), then for mutating methods the cross-site check (`Sec-Fetch-Site`, `Origin`) and
the JSON content type of a body (a hostile page can send neither without a CORS preflight, which
this app never grants). Every response gets `nosniff`, a Content-Security-Policy with
`frame-ancestors 'none'`, and an error that nothing else handled becomes a JSON 500 whose
traceback goes to the server's log.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .responses import error_response

logger = logging.getLogger("stepstream.server")

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
COOKIE = "stepstream_token"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def _hostname(host: str) -> str:
    """`host[:port]` or `[v6]:port` -> the lowercased name or address."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host  # a bare IPv6 address, or a name


class RequestGuard:
    """See the module docstring. `allowed_hosts=None` accepts any Host (a host app behind its
    own checks); `token=None` needs none."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] | None = None, token: str | None = None) -> None:
        self.app = app
        self.allowed_hosts = None if allowed_hosts is None else {_hostname(h) for h in allowed_hosts}
        self.token = token or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in SECURITY_HEADERS if n not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            refused = self._refusal(scope)
            if refused is not None:
                await refused(scope, receive, send_with_headers)
                return
            await self.app(scope, receive, send_with_headers)
        except Exception:
            if started:
                raise  # mid-response: nothing better to send; the server logs it
            logger.exception("stepstream: unhandled error in %s %s", scope.get("method"), scope.get("path"))
            failed = error_response(500, "internal_error", "internal server error (traceback in the server's log)")
            await failed(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope):  # -> ASGI app answering the refusal, or None
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        hosts = self.allowed_hosts
        if hosts is not None and "*" not in hosts and _hostname(host) not in hosts:
            return error_response(400, "invalid_host", "this Host is not served here (see --allowed-host)")
        if self.token is not None:
            refused = self._token_refusal(scope, headers)
            if refused is not None:
                return refused
        if scope["method"] in MUTATING:
            site = headers.get("sec-fetch-site")
            origin = headers.get("origin")
            if site is not None and site not in ("same-origin", "none"):
                return error_response(403, "cross_site", f"cross-site requests may not change anything ({site})")
            if origin is not None and _netloc(origin) != host.lower():
                return error_response(403, "cross_site", "requests from another origin may not change anything")
            length = headers.get("content-length", "0")
            has_body = headers.get("transfer-encoding") is not None or length not in ("", "0")
            media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if has_body and media != "application/json":
                return error_response(415, "unsupported_media_type",
                                      "a request body must be Content-Type: application/json")
        return None

    def _token_refusal(self, scope: Scope, headers: Headers):
        token = self.token
        assert token is not None
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if scope["method"] == "GET" and given and _same(given[-1], token):
            # Opening a link with ?token=: keep the token in an HttpOnly cookie, drop it from the URL
            # (also when a credential is already there, so the token never stays on screen).
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            location = scope["path"] + (f"?{rest}" if rest else "")  # the full path, mount prefix included
            return _redirect_with_cookie(location, token, f"{scope.get('root_path', '')}/")
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and _same(auth[7:].strip(), token):
            return None
        # Starlette's parser is lenient like browsers: another app's odd cookie on this host
        # (cookies ignore ports) does not hide ours.
        if _same(cookie_parser(headers.get("cookie", "")).get(COOKIE, ""), token):
            return None
        return error_response(
            401, "unauthorized",
            "a token is needed: Authorization: Bearer <token>, or open the page with ?token=<token>",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8", "replace"))


def _netloc(origin: str) -> str | None:
    """The host[:port] of an Origin header; None for `null` or anything unparsable."""
    try:
        netloc = urlsplit(origin).netloc.lower()
    except ValueError:
        return None
    return netloc or None


def _redirect_with_cookie(location: str, token: str, path: str) -> RedirectResponse:
    # SameSite=Lax, not Strict: the printed link is often opened from another site (a chat, a
    # ticket), and a Strict cookie set on that navigation is not sent on its redirect. Lax lets
    # no other site change anything: every mutation is checked for Sec-Fetch-Site and Origin.
    response = RedirectResponse(location, status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="lax", path=path)
    return response
