"""`stepstream serve` (the server with the demo) and `stepstream run` (a demo job in the terminal)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from . import demo
from .orchestrator import Orchestrator


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stepstream", description="Multi-step jobs with live per-step progress.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the API, the event stream and the page")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--demo", action="store_true", help="register the demo definitions and keep demo jobs running")
    serve.add_argument("--workers", type=_positive, default=8, help="worker threads for job code (default 8)")
    serve.add_argument("--size", type=_positive, default=60, help="size of the demo job started with --demo")

    run = sub.add_parser("run", help="run one demo job here and print each step's progress as it changes")
    run.add_argument("definition", nargs="?", default="nearby_restaurants", choices=sorted(demo.DEFINITIONS))
    run.add_argument("--size", type=_positive, default=40)
    run.add_argument("--speed", type=float, default=1.0, help="scale of simulated work time (0 = instant)")
    run.add_argument("--workers", type=_positive, default=8)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args.host, args.port, demo_job=args.demo, workers=args.workers, size=args.size)
    return run(args.definition, size=args.size, speed=args.speed, workers=args.workers)


def serve(host: str, port: int, *, demo_job: bool, workers: int, size: int = 60) -> int:
    import uvicorn

    from .server import create_app

    orch = Orchestrator(max_workers=workers)
    if demo_job:
        demo.register(orch)
        demo.keep_running(orch, size=size)
    app = create_app(orch)
    # Streams end on shutdown (sse-starlette watches uvicorn's exit flag); the graceful timeout
    # is a backstop so Ctrl+C never waits on a connection for long.
    config = uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=2, log_level="info")
    server = uvicorn.Server(config)
    print(f"stepstream: serving on http://{host}:{port}/  (Ctrl+C to stop)", file=sys.stderr, flush=True)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it handled once it has shut down
        return 130
    finally:
        orch.shutdown(wait=False)
    return 0


def _line(started: float, step: dict) -> str:
    p = step["progress"]
    return (
        f"[{time.monotonic() - started:7.2f}s] {step['name']:<18} {step['status']:<10}"
        f" total {p['total']:>5}  pending {p['pending']:>4}  running {p['running']:>3}"
        f"  completed {p['completed']:>5}  failed {p['failed']:>4}  cancelled {p['cancelled']:>4}"
        f"  logs {step['log_count']}"
    )


def run(definition: str, *, size: int, speed: float, workers: int) -> int:
    """Run one demo job, printing a step's line whenever its progress changed (5 times a second)."""
    orch = Orchestrator(max_workers=workers, capture_level=None)
    demo.register(orch)
    job_id = orch.start(definition, params={"size": size, "speed": speed})
    started = time.monotonic()
    shown: dict[str, str] = {}

    def show(steps: list[dict]) -> None:
        for step in steps:
            line = _line(started, step)
            state = line.split("]", 1)[1]
            if shown.get(step["name"]) != state:
                shown[step["name"]] = state
                print(line, flush=True)

    print(f"job {job_id} ({definition}, size {size}); Ctrl+C cancels it")
    while True:
        try:
            try:
                final = orch.wait(job_id, timeout=0.2)
                break
            except TimeoutError:
                show(orch.snapshot(job_id)["job"]["steps"])
        except KeyboardInterrupt:
            print("cancelling…", flush=True)
            orch.cancel(job_id)
    show(final["job"]["steps"])
    job = final["job"]
    print(f"job {job['status']}: " + ", ".join(f"{n} {k}" for k, n in job["progress"].items()))
    if job["error"]:
        print(f"error: {job['error']}")
    orch.shutdown()
    return 0 if job["status"] == "completed" else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
