"""Why a job failed, in words: failed children grouped by error (`stepstream/failures.py`), the
`GET /api/jobs/{id}/failures` endpoint, and `stepstream run`'s summary and exit status."""

from __future__ import annotations

import httpx
import pytest

from stepstream import Orchestrator, Step
from stepstream.failures import group_failures, pattern, summary_lines

TIMEOUT = 30


@pytest.mark.parametrize(
    ("error", "key"),
    [
        ("PermissionError: record 3: upstream rejected the API key",
         "PermissionError: record …: upstream rejected the API key"),
        ("TimeoutError: https://example.test/section/1/2: read timed out (attempt 3)",
         "TimeoutError: …: read timed out (attempt …)"),
        ("KeyError: 'user_17'", "KeyError: …"),
        ("ValueError: job m_3f9a2b1c gone", "ValueError: job … gone"),
        ("RuntimeError", "RuntimeError"),
        ("ValueError: bad\nsecond line", "ValueError: bad"),
    ],
)
def test_an_errors_group_key_hides_what_varies_between_children(error, key):
    assert pattern(error) == key


def child(n: int, error: str, step: str = "read", status: str = "failed") -> dict:
    return {"id": f"c_{n}", "status": status, "step_name": step, "error": error,
            "finished_at": f"2026-01-01T00:00:{n:02d}.000Z"}


def test_failed_children_are_grouped_by_step_and_error_most_first():
    children = [child(n, f"PermissionError: record {n}: upstream rejected the API key") for n in range(7)]
    children += [child(10, "ValueError: bad row 4"), child(11, "ValueError: bad row 9"),
                 child(12, "ValueError: bad row 4", step="publish"), child(13, "", status="completed")]
    groups = group_failures(children, sample=3)
    assert [(g["step"], g["error"], g["count"]) for g in groups] == [
        ("read", "PermissionError: record …: upstream rejected the API key", 7),
        ("read", "ValueError: bad row …", 2),
        ("publish", "ValueError: bad row …", 1),
    ]
    first = groups[0]
    assert first["child_ids"] == ["c_0", "c_1", "c_2"]
    assert first["example"] == "PermissionError: record 0: upstream rejected the API key"
    assert (first["first_at"], first["last_at"]) == ("2026-01-01T00:00:00.000Z", "2026-01-01T00:00:06.000Z")
    lines = summary_lines(groups, width=60)
    assert lines[0].startswith("    7 × read: PermissionError: record …: upstream") and lines[0].endswith("…")
    assert all(len(line) <= 60 for line in lines)


def import_definition() -> list[Step]:
    def record(ctx, n):
        if n % 4 == 0:
            raise ValueError(f"row {n} has no id")
        raise PermissionError(f"record {n}: upstream rejected the API key")

    def read(ctx):
        for n in range(12):
            ctx.spawn(record, n)

    def fine(ctx, n):
        if n == 2:
            raise TimeoutError(f"page {n} timed out")

    def crawl(ctx):
        for n in range(5):
            ctx.spawn(fine, n)

    return [Step("crawl", crawl), Step("read", read), Step("publish", lambda ctx: None)]


def test_the_failures_endpoint_groups_a_jobs_and_a_steps_failed_children(orch: Orchestrator, server):
    orch.define("import", import_definition())
    job_id = orch.start("import")
    final = orch.wait(job_id, TIMEOUT)["job"]
    assert final["status"] == "failed"
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        answer = client.get(f"/api/jobs/{job_id}/failures").json()
        assert answer["failed"] == 13
        assert [(g["step"], g["error"], g["count"]) for g in answer["groups"]] == [
            ("read", "PermissionError: record …: upstream rejected the API key", 9),
            ("read", "ValueError: row … has no id", 3),
            ("crawl", "TimeoutError: page … timed out", 1),
        ]
        assert len(answer["groups"][0]["child_ids"]) == 5

        step = client.get(f"/api/jobs/{job_id}/failures", params={"step": "crawl"}).json()
        assert [(g["error"], g["count"]) for g in step["groups"]] == [("TimeoutError: page … timed out", 1)]
        step_id = next(s["id"] for s in final["steps"] if s["name"] == "read")
        by_id = client.get(f"/api/jobs/{step_id}/failures").json()
        assert [g["count"] for g in by_id["groups"]] == [9, 3]

        key = "PermissionError: record …: upstream rejected the API key"
        first = client.get(f"/api/jobs/{job_id}/failures", params={"step": "read", "error": key, "limit": 5}).json()
        assert len(first["children"]) == 5 and first["next"] == 5
        assert all(c["traceback"] and c["error"].startswith("PermissionError: record") for c in first["children"])
        rest = client.get(f"/api/jobs/{job_id}/failures",
                          params={"step": "read", "error": key, "limit": 5, "cursor": 5}).json()
        assert len(rest["children"]) == 4 and rest["next"] is None
        assert not {c["id"] for c in first["children"]} & {c["id"] for c in rest["children"]}

        assert client.get("/api/jobs/m_nope/failures").status_code == 404
        bad = client.get(f"/api/jobs/{job_id}/failures", params={"stage": "read"})
        assert bad.status_code == 400 and "known: step, error" in bad.json()["error"]["message"]
