"""Security: a hostile page of another origin cannot drive or frame the app, every response says
`nosniff`, unknown `Host` headers and missing tokens are refused, and mutations need JSON and the
app's own origin while plain clients (curl, httpx) keep working.

Each check is against state read back through the API: a refused request changes nothing. Jobs
are held running by a gate (an Event the step handler waits on), so the state holds still.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Iterator
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from harness.live import LiveServer, sse_events
from stepstream import Orchestrator, Step
from stepstream.server import create_app
from tests.browser import ARTIFACTS
from tests.test_page import browser, page  # noqa: F401 - the session's one Chromium, and a CSP-watched page

if TYPE_CHECKING:
    from playwright.sync_api import Page

TIMEOUT = 20
TOKEN = "s3cret"
MUTATING = ("POST", "PUT", "PATCH", "DELETE")


# ---------------------------------------------------------------- fixtures


class Held:
    """An orchestrator whose `held` jobs run until `release` is set, and `quick` jobs that end."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._entered: dict[str, threading.Event] = defaultdict(threading.Event)
        self._lock = threading.Lock()
        self.orch = Orchestrator(max_workers=4)  # held handlers block their thread
        self.orch.define("held", [Step("hold", self._hold)])
        self.orch.define("quick", [Step("done", lambda ctx: None)])

    def _entered_event(self, manager_id: str) -> threading.Event:
        with self._lock:
            return self._entered[manager_id]

    def _hold(self, ctx) -> None:
        self._entered_event(ctx.manager_id).set()
        self.release.wait(TIMEOUT)

    def start(self) -> str:
        """A running `held` job whose step handler is waiting: nothing changes until released."""
        job_id = self.orch.start("held")
        assert self._entered_event(job_id).wait(TIMEOUT), "the held step never started"
        return job_id

    def finished(self) -> str:
        job_id = self.orch.start("quick")
        assert self.orch.wait(job_id, TIMEOUT)["job"]["status"] == "completed"
        return job_id

    def status(self, job_id: str) -> str:
        return self.orch.snapshot(job_id)["job"]["status"]


@pytest.fixture
def held() -> Iterator[Held]:
    h = Held()
    yield h
    h.release.set()
    h.orch.shutdown(wait=False)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.request.method, response.request.url, response.text[:200])
    assert response.json()["error"]["code"] == code, response.text[:200]
    assert response.headers["x-content-type-options"] == "nosniff"


def listing(client: httpx.Client, **headers: str) -> dict:
    response = client.get("/api/jobs", headers=headers)
    assert response.status_code == 200, response.text[:200]
    return response.json()


class Recorder:
    """Wraps an app: every request it answers, as (method, path, status, response headers)."""

    def __init__(self, app) -> None:
        self.app = app
        self.seen: list[tuple[str, str, int, dict]] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def recording(message) -> None:
            if message["type"] == "http.response.start":
                headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
                self.seen.append((scope["method"], scope["path"], message["status"], headers))
            await send(message)

        await self.app(scope, receive, recording)


class Evil:
    """Another origin's server: serves `html` at `/`; the page posts what it saw to `/report`."""

    def __init__(self) -> None:
        self.html = "<!doctype html><title>evil</title>"
        self.reports: list[dict] = []

        async def index(request: Request) -> Response:
            return HTMLResponse(self.html)

        async def report(request: Request) -> Response:
            self.reports.append(await request.json())
            return Response(status_code=204)

        self.server = LiveServer(Starlette(routes=[Route("/", index), Route("/report", report, methods=["POST"])]))

    def url(self, host: str) -> str:
        return f"http://{host}:{self.server.port}/"


@pytest.fixture
def evil() -> Iterator[Evil]:
    e = Evil()
    with e.server:
        yield e


@pytest.fixture
def hostile_page(browser) -> Iterator[Page]:  # noqa: F811 - the imported session fixture
    """A page in its own context for the evil origin. Refusals the browser logs (CORS, framing)
    are expected here; an uncaught error in the evil page's script fails the test."""
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    context.set_default_timeout(15_000)
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda error: errors.append(str(error)))
    yield p
    context.close()
    assert not errors, f"the evil page threw: {errors}"


# ---------------------------------------------------------------- 1. a hostile page cannot drive the app

ATTEMPTS = """<!doctype html><title>evil</title>
<form name="sink" method="post" enctype="text/plain" action="{app}/api/jobs/{job}/cancel"></form>
<script>
const APP = {app_js}, JOB = {job_js};
const body = JSON.stringify({{definition: "held"}});
const results = {{}};
async function attempt(name, request) {{
  try {{ const r = await request(); results[name] = r.type + ":" + r.status; }}
  catch (e) {{ results[name] = "refused:" + e.name; }}
}}
(async () => {{
  await attempt("create_no_cors", () => fetch(APP + "/api/jobs",
    {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body}}));
  await attempt("cancel_no_cors", () => fetch(APP + "/api/jobs/" + JOB + "/cancel",
    {{method: "POST", mode: "no-cors"}}));
  await attempt("cancel_no_cors_text", () => fetch(APP + "/api/jobs/" + JOB + "/cancel",
    {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body: "{{}}"}}));
  await attempt("create_cors_json", () => fetch(APP + "/api/jobs",
    {{method: "POST", headers: {{"Content-Type": "application/json"}}, body}}));
  await attempt("delete", () => fetch(APP + "/api/jobs/" + JOB, {{method: "DELETE"}}));
  await fetch("/report", {{method: "POST", body: JSON.stringify(results)}});
  document.forms.sink.submit();  // last: it navigates away
}})();
</script>"""


@pytest.mark.browser
@pytest.mark.parametrize("evil_host, site", [("localhost", "cross-site"), ("127.0.0.1", "same-site")])
def test_a_hostile_page_of_another_origin_cannot_drive_the_app(held, evil, hostile_page, evil_host, site):
    """The app is on 127.0.0.1:P1. From localhost:P2 the evil page is cross-site; from
    127.0.0.1:P2 it is same-site but another origin: both must be refused."""
    recorder = Recorder(create_app(held.orch))
    with LiveServer(recorder) as app, httpx.Client(base_url=app.url, timeout=TIMEOUT) as client:
        job = held.start()
        before = listing(client)
        evil.html = ATTEMPTS.format(app=app.url, job=job, app_js=json.dumps(app.url), job_js=json.dumps(job))
        cancel_url = f"{app.url}/api/jobs/{job}/cancel"

        with hostile_page.expect_response(
            lambda r: r.url == cancel_url and r.request.resource_type == "document"
        ) as form_response:
            hostile_page.goto(evil.url(evil_host))
        hostile_page.wait_for_url(cancel_url)  # the auto-submitted form's answer, shown top-level

        assert listing(client) == before, "the hostile page changed something"
        assert held.status(job) == "running" and [j["id"] for j in before["jobs"]] == [job]

        assert form_response.value.status == 403
        assert form_response.value.request.all_headers()["sec-fetch-site"] == site
        assert json.loads(hostile_page.text_content("body"))["error"]["code"] == "cross_site"
        [results] = evil.reports  # posted (and awaited) before the form went
        assert results["create_no_cors"] == results["cancel_no_cors"] == "opaque:0", results
        assert results["create_cors_json"] == results["delete"] == "refused:TypeError", results

        mutations = [(method, path, status) for method, path, status, _ in recorder.seen if method in MUTATING]
        cancel_path = f"/api/jobs/{job}/cancel"
        assert sorted(mutations) == [("POST", "/api/jobs", 403)] + [("POST", cancel_path, 403)] * 3, \
            "only the no-cors POSTs and the form may reach the app (and be refused); a JSON POST or a DELETE " \
            "needs a preflight, which must fail"
        preflights = [headers for method, _, _, headers in recorder.seen if method == "OPTIONS"]
        assert len(preflights) == 2 and not any("access-control-allow-origin" in h for h in preflights)


# ---------------------------------------------------------------- 2. the app cannot be framed


@pytest.mark.browser
def test_the_app_cannot_be_framed(held, evil, hostile_page):
    with LiveServer(create_app(held.orch)) as app:
        headers = httpx.get(f"{app.url}/", timeout=TIMEOUT).headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"

        evil.html = (f'<!doctype html><title>evil</title><iframe id="app" src="{app.url}/" '
                     'onload="document.body.dataset.framed = \'loaded\'" width="900" height="500"></iframe>')
        console: list[str] = []
        hostile_page.on("console", lambda message: console.append(message.text))
        hostile_page.goto(evil.url("localhost"))
        hostile_page.wait_for_function("document.body.dataset.framed === 'loaded'")
        frame = hostile_page.query_selector("#app").content_frame()
        assert frame is not None
        hostile_page.screenshot(path=str(ARTIFACTS / "security-framed.png"))
        assert frame.query_selector("[data-connection]") is None, "the app rendered inside a hostile frame"
        if not any("frame-ancestors" in text for text in console):  # the refusal, as Chromium logs it
            hostile_page.wait_for_event("console", lambda message: "frame-ancestors" in message.text, timeout=5_000)


# ---------------------------------------------------------------- 3. nosniff on every response


def test_every_response_says_nosniff(held, monkeypatch):
    with LiveServer(create_app(held.orch)) as app, httpx.Client(base_url=app.url, timeout=TIMEOUT) as c:
        job = held.start()
        answers = {
            "page": c.get("/"),
            "static module": c.get("/static/main.js"),
            "json": c.get("/api/health"),
            "201": c.post("/api/jobs", json={"definition": "quick"}),
            "202": c.post(f"/api/jobs/{job}/cancel"),
            "404": c.get("/api/nothing-here"),
            "405": c.delete("/api/jobs"),
            "guard 415": c.post("/api/jobs", content=b"{}", headers={"Content-Type": "text/plain"}),
            "guard 403": c.post("/api/jobs", json={"definition": "quick"}, headers={"Sec-Fetch-Site": "cross-site"}),
        }
        with c.stream("GET", "/api/events") as stream:
            answers["stream"] = stream
            assert next(sse_events(stream))["event"] == "snapshot"

        def broken(**query):
            raise RuntimeError("a bug, not the client's fault")

        monkeypatch.setattr(held.orch, "jobs", broken)
        answers["500"] = c.get("/api/jobs")

    statuses = {name: r.status_code for name, r in answers.items()}
    assert statuses == {"page": 200, "static module": 200, "json": 200, "201": 201, "202": 202, "404": 404,
                        "405": 405, "guard 415": 415, "guard 403": 403, "stream": 200, "500": 500}
    assert "javascript" in answers["static module"].headers["content-type"]
    assert answers["stream"].headers["content-type"].startswith("text/event-stream")
    assert answers["500"].json()["error"]["code"] == "internal_error"
    missing = [name for name, r in answers.items() if r.headers.get("x-content-type-options") != "nosniff"]
    assert not missing, f"no nosniff on: {missing}"


def test_a_malformed_origin_is_refused_not_a_500(held):
    with LiveServer(create_app(held.orch)) as app, httpx.Client(base_url=app.url, timeout=TIMEOUT) as c:
        for origin in ("http://[", "http://[foo]"):
            assert_error(c.post("/api/jobs", json={"definition": "quick"}, headers={"Origin": origin}),
                         403, "cross_site")
        assert listing(c)["jobs"] == []


# ---------------------------------------------------------------- 4. the Host check


def test_an_unknown_host_is_refused_and_changes_nothing(held):
    with LiveServer(create_app(held.orch, allowed_hosts=["localhost", "127.0.0.1"])) as app, \
            httpx.Client(base_url=app.url, timeout=TIMEOUT) as c:
        job = held.start()
        before = listing(c)
        bad_hosts = ["evil.example", f"evil.example:{app.port}", "localhost.evil.example",
                     f"127.0.0.1.evil.example:{app.port}"]
        requests = [("GET", "/", {}), ("GET", "/api/jobs", {}), ("GET", "/api/events", {}),
                    ("POST", "/api/jobs", {"json": {"definition": "held"}}),
                    ("POST", f"/api/jobs/{job}/cancel", {}), ("DELETE", f"/api/jobs/{job}", {})]
        for host in bad_hosts:
            for method, path, kwargs in requests:
                assert_error(c.request(method, path, headers={"Host": host}, **kwargs), 400, "invalid_host")
        assert listing(c) == before and held.status(job) == "running"

        at_localhost = {"Host": f"localhost:{app.port}"}
        assert c.get("/", headers=at_localhost).status_code == 200
        assert listing(c, **at_localhost) == before
        created = c.post("/api/jobs", json={"definition": "quick"}, headers=at_localhost)
        assert created.status_code == 201
        assert created.headers["location"] == f"/api/jobs/{created.json()['job']['id']}"


def test_without_allowed_hosts_any_host_is_served_and_location_is_a_path(held):
    with LiveServer(create_app(held.orch)) as app, httpx.Client(base_url=app.url, timeout=TIMEOUT) as c:
        evil = {"Host": "evil.example:8000"}
        assert c.get("/api/health", headers=evil).status_code == 200
        created = c.post("/api/jobs", json={"definition": "quick"}, headers=evil)
        assert created.status_code == 201
        job = created.json()["job"]["id"]
        assert created.headers["location"] == f"/api/jobs/{job}"
        held.orch.wait(job, TIMEOUT)
        rerun = c.post(f"/api/jobs/{job}/rerun", headers=evil)
        assert rerun.status_code == 201
        assert rerun.headers["location"] == f"/api/jobs/{rerun.json()['job']['id']}"


# ---------------------------------------------------------------- 5. the token


def token_cookie(response: httpx.Response):
    cookie = SimpleCookie()
    cookie.load(response.headers["set-cookie"])
    return cookie["stepstream_token"]


def test_a_token_is_required_by_bearer_or_by_the_cookie_the_page_link_sets(held):
    with LiveServer(create_app(held.orch, token=TOKEN)) as app:
        job = held.start()
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=app.url, timeout=TIMEOUT) as c:  # keeps no cookie: nothing here sets one
            before = listing(c, **bearer)
            for credentials in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"},
                                {"Cookie": "stepstream_token=nope"}):
                for method, path, kwargs in [("GET", "/", {}), ("GET", "/static/main.js", {}),
                                             ("GET", "/api/jobs", {}), ("GET", "/api/events", {}),
                                             ("GET", "/?token=nope", {}), ("GET", "/?token=", {}),
                                             ("POST", "/api/jobs", {"json": {"definition": "held"}}),
                                             ("POST", f"/api/jobs/{job}/cancel", {})]:
                    refused = c.request(method, path, headers=credentials, **kwargs)
                    assert_error(refused, 401, "unauthorized")
                    assert refused.headers["www-authenticate"] == "Bearer"
            assert listing(c, **bearer) == before and held.status(job) == "running"
            assert c.post("/api/jobs", json={"definition": "quick"}, headers=bearer).status_code == 201

        with httpx.Client(base_url=app.url, timeout=TIMEOUT) as c:
            api_link = c.get("/api/jobs", params={"token": TOKEN, "limit": "1"})
            assert api_link.status_code == 303 and api_link.headers["location"] == "/api/jobs?limit=1"
            assert api_link.headers["x-content-type-options"] == "nosniff"
        with httpx.Client(base_url=app.url, timeout=TIMEOUT) as c:
            opened = c.get("/", params={"job": job, "token": TOKEN, "x": "a b"})
            assert opened.status_code == 303
            assert opened.headers["location"] == f"/?job={job}&x=a+b"
            cookie = token_cookie(opened)
            assert cookie.value == TOKEN and cookie["httponly"] and cookie["samesite"].lower() == "lax"
            assert cookie["path"] == "/"
            shown = c.get(opened.headers["location"])  # the cookie jar sends what the 303 set
            assert shown.status_code == 200 and "<html" in shown.text.lower()
            assert c.get("/static/main.js").status_code == 200
            assert c.get(f"/api/jobs/{job}").json()["job"]["status"] == "running"
            with c.stream("GET", "/api/events") as stream:
                assert stream.status_code == 200
                assert next(sse_events(stream))["event"] == "snapshot"
            assert c.post(f"/api/jobs/{job}/cancel").status_code == 202


def test_opening_the_token_link_again_still_drops_the_token_from_the_url(held):
    with LiveServer(create_app(held.orch, token=TOKEN)) as app, httpx.Client(base_url=app.url, timeout=TIMEOUT) as c:
        assert c.get(f"/?token={TOKEN}").status_code == 303  # now the jar holds the cookie
        again = c.get(f"/?token={TOKEN}")
        assert again.status_code == 303 and again.headers["location"] == "/", "the token stays in the URL bar"


def test_the_token_cookie_is_found_next_to_other_localhost_cookies(held):
    """Cookies ignore ports: another app on localhost may have set any cookie before ours."""
    with LiveServer(create_app(held.orch, token=TOKEN)) as app, httpx.Client(base_url=app.url, timeout=TIMEOUT) as c:
        answer = c.get("/api/jobs", headers={"Cookie": f'prefs={{"theme":"dark"}}; stepstream_token={TOKEN}'})
        assert answer.status_code == 200, answer.text


@pytest.mark.browser
def test_opening_the_page_with_the_token_once_goes_live_without_the_token_in_the_url(held, page):  # noqa: F811
    from playwright.sync_api import expect

    with LiveServer(create_app(held.orch, token=TOKEN)) as app:
        job = held.start()
        page.goto(f"{app.url}/?token={TOKEN}")
        expect(page.locator("[data-connection]")).to_have_attribute("data-connection", "live")
        assert page.url == f"{app.url}/"
        expect(page.locator(f'[data-job="{job}"]')).to_have_attribute("data-status", "running")
        assert TOKEN not in page.evaluate("document.cookie"), "the token cookie must be HttpOnly"


@pytest.mark.browser
def test_the_token_link_works_when_clicked_on_another_site(held, evil, hostile_page):
    """The link `stepstream serve` prints, pasted in a chat or a ticket and clicked there."""
    with LiveServer(create_app(held.orch, token=TOKEN)) as app:
        evil.html = f'<!doctype html><title>chat</title><a id="link" href="{app.url}/?token={TOKEN}">the queue</a>'
        hostile_page.goto(evil.url("localhost"))
        with hostile_page.expect_response(f"{app.url}/") as shown:
            hostile_page.click("#link")
        assert shown.value.status == 200, shown.value.text()[:200]


def test_under_a_prefix_the_token_redirect_and_cookie_follow_the_prefix(held):
    host = Starlette(routes=[Route("/", lambda request: PlainTextResponse("host app")),
                             Mount("/ops/queue", app=create_app(held.orch, token=TOKEN))])
    with LiveServer(host) as srv, httpx.Client(base_url=srv.url, timeout=TIMEOUT) as c:
        assert_error(c.get("/ops/queue/api/jobs"), 401, "unauthorized")
        api_link = c.get("/ops/queue/api/jobs", params={"token": TOKEN})
        assert api_link.status_code == 303 and api_link.headers["location"] == "/ops/queue/api/jobs"
        assert token_cookie(api_link)["path"] == "/ops/queue/"
    with LiveServer(host) as srv, httpx.Client(base_url=srv.url, timeout=TIMEOUT) as c:
        opened = c.get("/ops/queue/", params={"token": TOKEN, "job": "j1"})
        assert opened.status_code == 303 and opened.headers["location"] == "/ops/queue/?job=j1"
        assert token_cookie(opened)["path"] == "/ops/queue/"
        assert c.get("/ops/queue/api/jobs").status_code == 200
    with LiveServer(host) as srv, httpx.Client(base_url=srv.url, timeout=TIMEOUT) as c:
        final = c.get(f"/ops/queue?token={TOKEN}", follow_redirects=True)  # without the slash, too
        assert final.status_code == 200 and str(final.url) == f"{srv.url}/ops/queue/"
        assert c.get("/ops/queue/api/jobs").status_code == 200
        assert c.get("/").text == "host app"


# ---------------------------------------------------------------- 6. mutations: JSON, same origin; curl works


def test_mutations_need_json_and_the_same_origin_but_plain_clients_work(held):
    with LiveServer(create_app(held.orch)) as app, httpx.Client(base_url=app.url, timeout=TIMEOUT) as c:
        created = c.post("/api/jobs", json={"definition": "quick"})  # as curl: no Origin, no Sec-Fetch-*
        assert created.status_code == 201
        held.orch.wait(created.json()["job"]["id"], TIMEOUT)
        job, other, done = held.start(), held.start(), held.finished()
        body = json.dumps({"definition": "quick"}).encode()
        json_type = {"Content-Type": "application/json"}
        refused = [
            ("POST", "/api/jobs", {"content": body, "headers": {"Content-Type": "text/plain"}}, 415),
            ("POST", "/api/jobs", {"content": body}, 415),
            ("POST", "/api/jobs", {"content": body, "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
             415),
            ("POST", f"/api/jobs/{job}/cancel", {"content": b"x", "headers": {"Content-Type": "text/plain"}}, 415),
            ("POST", "/api/jobs", {"content": body, "headers": {**json_type, "Sec-Fetch-Site": "cross-site"}}, 403),
            ("POST", "/api/jobs", {"content": body, "headers": {**json_type, "Sec-Fetch-Site": "same-site"}}, 403),
            ("POST", f"/api/jobs/{job}/cancel", {"headers": {"Sec-Fetch-Site": "cross-site"}}, 403),
            ("POST", f"/api/jobs/{job}/cancel", {"headers": {"Origin": "null"}}, 403),
            ("POST", "/api/jobs", {"content": body, "headers": {**json_type, "Origin": "null"}}, 403),
            ("POST", "/api/jobs", {"content": body, "headers": {**json_type, "Origin": f"http://localhost:{app.port}"}},
             403),
            ("POST", "/api/jobs", {"content": body, "headers": {**json_type, "Origin": "http://127.0.0.1:1"}}, 403),
            ("DELETE", f"/api/jobs/{done}", {"headers": {"Sec-Fetch-Site": "cross-site"}}, 403),
            ("DELETE", f"/api/jobs/{done}", {"headers": {"Origin": "http://evil.example"}}, 403),
        ]
        for method, path, kwargs, status in refused:
            before = listing(c)
            assert_error(c.request(method, path, **kwargs), status,
                         "unsupported_media_type" if status == 415 else "cross_site")
            assert listing(c) == before, f"refused {method} {path} {kwargs} changed something"
        assert held.status(job) == "running" and held.status(done) == "completed"

        same_origin = {"Origin": app.url}
        assert c.post("/api/jobs", content=body, headers={**json_type, **same_origin}).status_code == 201
        assert c.post("/api/jobs", content=body, headers={
            "Content-Type": "application/json; charset=utf-8", "Sec-Fetch-Site": "same-origin", **same_origin,
        }).status_code == 201
        assert c.post(f"/api/jobs/{job}/cancel").status_code == 202  # as curl: no body, no content type
        assert c.post(f"/api/jobs/{other}/cancel", headers={"Sec-Fetch-Site": "same-origin", **same_origin}
                      ).status_code == 202
        assert c.delete(f"/api/jobs/{done}").status_code == 204
