"""Why a job failed, in words: its failed children grouped by their error.

Children that fail for one cause rarely fail with one identical line ("record 3: upstream
rejected the API key", "record 7: ..."), so a group's key is the error's first line with what
varies between children (numbers, ids, quoted text, URLs and paths) replaced by "…". The page
and `stepstream run` show the groups; `GET /api/jobs/{id}/failures` serves them.

`group_failures` is pure; `collect` reads the failed children through a reader with the
orchestrator's `children(job_id, step=, status=, limit=, cursor=)` and may block (it reads
storage), so the server runs it off its event loop.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

SAMPLE = 5  # child ids named per group
PAGE = 1000  # children read per call of the reader
MAX_PATTERN = 300

_VARYING = re.compile(
    r"""[a-z][a-z0-9+.-]*://\S+?(?=[\s'",;)\]]|:\s|$)   # URLs
      | (?<![\w/])/[\w.~%-]+(?:/[\w.~%-]*)+            # paths
      | '[^']*' | "[^"]*"                              # quoted text
      | \b(?=[\w-]*\d)[\w-]*[0-9a-f]{6,}[\w-]*\b      # ids, hashes, long hex
      | \d+(?:[.,:]\d+)*                               # numbers, times, versions
    """,
    re.X | re.I,
)
_RUNS = re.compile(r"…(?:[\s/.,:=_-]*…)+")


def error_line(error: str | None) -> str:
    """The first line of an error ("" for none)."""
    return (error or "").strip().splitlines()[0] if (error or "").strip() else ""


def pattern(error: str | None) -> str:
    """The group key of an error: its first line with the parts that vary between children
    replaced by "…" ("PermissionError: record …: upstream rejected the API key")."""
    line = error_line(error)
    head, sep, message = line.partition(": ")
    if not sep:
        head, message = "", line
    varied = _RUNS.sub("…", _VARYING.sub("…", message))
    return ((head + sep) if sep else "") + varied[:MAX_PATTERN] if varied else line


def group_failures(children: Iterable[dict], *, sample: int = SAMPLE) -> list[dict]:
    """Failed children grouped by (step, error pattern), most children first: each group is
    `{"step", "error", "example", "count", "child_ids", "first_at", "last_at"}`; `example` is
    the first child's own error line, `child_ids` the first `sample` ids (creation order)."""
    groups: dict[tuple[str, str], dict] = {}
    for child in children:
        if child.get("status") != "failed":
            continue
        step = child.get("step_name") or ""
        key = (step, pattern(child.get("error")) or "(no error message)")
        group = groups.get(key)
        if group is None:
            group = groups[key] = {"step": step, "error": key[1], "example": error_line(child.get("error")),
                                   "count": 0, "child_ids": [], "first_at": None, "last_at": None}
        group["count"] += 1
        if len(group["child_ids"]) < sample:
            group["child_ids"].append(child["id"])
        finished = child.get("finished_at")
        if finished:
            if group["first_at"] is None or finished < group["first_at"]:
                group["first_at"] = finished
            if group["last_at"] is None or finished > group["last_at"]:
                group["last_at"] = finished
    return sorted(groups.values(), key=lambda g: (-g["count"], g["step"], g["error"]))


def in_group(child: dict, step: str | None, error: str) -> bool:
    """Whether a failed child belongs to the group (`step` None: any step)."""
    return (child.get("status") == "failed" and (step is None or child.get("step_name") == step)
            and (pattern(child.get("error")) or "(no error message)") == error)


def failed_children(children: Callable[..., dict], job_id: str, step: str | None = None) -> Iterable[dict]:
    """Every failed child of a manager or step, page by page, in creation order."""
    cursor: int | None = 0
    while cursor is not None:
        page = children(job_id, step=step, status="failed", limit=PAGE, cursor=cursor)
        yield from page["children"]
        cursor = page["next"]


def collect(reader: Any, job_id: str, *, step: str | None = None, error: str | None = None,
            limit: int = 50, cursor: int = 0) -> dict:
    """What `GET /api/jobs/{id}/failures` answers: `{"job_id", "step", "failed", "groups"}`;
    with `error` (a group's key) also that group's children, `limit` from position `cursor`,
    and `next` (None at the end). `reader` has the orchestrator's `children(...)`."""
    failed = list(failed_children(reader.children, job_id, step))
    answer: dict[str, Any] = {"job_id": job_id, "step": step, "failed": len(failed), "groups": group_failures(failed)}
    if error is not None:
        members = [child for child in failed if in_group(child, None, error)]
        answer["groups"] = [g for g in answer["groups"] if g["error"] == error]
        answer["children"] = members[cursor:cursor + limit]
        answer["next"] = cursor + limit if cursor + limit < len(members) else None
    return answer


def summary_lines(groups: list[dict], *, width: int = 80, most: int = 5) -> list[str]:
    """Groups as text lines at most `width` columns: "  12 × read: PermissionError: …"."""
    lines = []
    for group in groups[:most]:
        head = f"{group['count']:>5} × {group['step']}: " if group["step"] else f"{group['count']:>5} × "
        text = head + group["error"]
        lines.append(text if len(text) <= width else text[: width - 1] + "…")
    rest = groups[most:]
    if rest:
        lines.append(f"      and {sum(g['count'] for g in rest)} more in {len(rest)} other group"
                     f"{'s' if len(rest) != 1 else ''}")
    return lines
