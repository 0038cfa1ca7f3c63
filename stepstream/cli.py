"""The command line: `stepstream serve [APP]` serves an orchestrator's API, stream and page;
`stepstream run APP DEFINITION` runs one job here and shows each step's progress."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import math
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import uvicorn

from . import __version__, demo, failures, gctuning
from .journal.sqlite import SchemaError, SqliteJournal
from .loader import LoadError, load_object, load_orchestrator
from .model import MissingDependency, StepstreamError
from .orchestrator import Orchestrator

LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "::1", "[::1]"]
WILDCARD_HOSTS = {"", "0.0.0.0", "::"}
TOKEN_ENV = "STEPSTREAM_TOKEN"
DB_ENV = "STEPSTREAM_DB"
REDIS_ENV = "STEPSTREAM_REDIS"
DEFAULT_DB = "stepstream.db"
WIDTH = 80  # columns of `run`'s step lines


class CliError(Exception):
    """A one-line error for the user; `code` is the exit status (2: bad command line)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- argument types
# argparse prints "argument --port: <message>" from ArgumentTypeError, nothing internal.


def port(text: str) -> int:
    """A TCP port, 0 meaning any free one."""
    if not text.strip().isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535 (0 picks a free one), not {text!r}")
    return int(text)


def _whole(text: str, least: int) -> int:
    if not text.strip().isdigit() or int(text) < least:
        raise argparse.ArgumentTypeError(f"must be a whole number {least} or more, not {text!r}")
    return int(text)


def positive_int(text: str) -> int:
    return _whole(text, 1)


def non_negative_int(text: str) -> int:
    return _whole(text, 0)


def redis_url(text: str) -> str:
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise argparse.ArgumentTypeError(f"must be a Redis URL such as redis://HOST:6379/0, not {text!r}")
    return text


def _number(text: str, *, above_zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (above_zero and value == 0):
        raise argparse.ArgumentTypeError(f"must be a number {'above 0' if above_zero else '0 or more'}, not {text!r}")
    return value


def non_negative_number(text: str) -> float:
    return _number(text, above_zero=False)


def json_object(text: str) -> dict:
    def reject(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    try:
        value = json.loads(text, parse_constant=reject)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"size\": 10}}': {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"size\": 10}}', not {text!r}")
    return value


def positive_number(text: str) -> float:
    return _number(text, above_zero=True)


def token(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stepstream", description="Multi-step jobs with live per-step progress.")
    parser.add_argument("--version", action="version", version=f"stepstream {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{serve,worker,run}")

    serve = sub.add_parser(
        "serve", help="serve the API, the event stream and the page",
        description="Serve APP's orchestrator: the JSON API, the event stream and the page.")
    serve.add_argument("app", nargs="?", metavar="APP",
                       help="module:attribute naming an Orchestrator or a callable returning one")
    serve.add_argument("--demo", action="store_true",
                       help="register the demo definitions and keep demo jobs running")
    serve.add_argument("--host", default="127.0.0.1", metavar="H",
                       help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=port, default=8000, metavar="P",
                       help="port to listen on; 0 picks a free one (default 8000)")
    serve.add_argument("--token", type=token, metavar="T",
                       help=f"required from clients (default: ${TOKEN_ENV}; one is generated when "
                            "listening beyond loopback)")
    serve.add_argument("--allowed-host", action="append", default=[], metavar="HOST",
                       help="a Host name clients may use besides localhost and loopback addresses (repeatable)")
    serve.add_argument("--workers", type=non_negative_int, metavar="N",
                       help="worker threads: of the built-in orchestrator without APP (default 8); with --redis, "
                            "threads running queued work in this process (default APP's max_workers; 0: none)")
    storage = serve.add_mutually_exclusive_group()
    storage.add_argument("--redis", type=redis_url, metavar="URL",
                         help=f"keep every job in this Redis, shared with other servers and workers (default: "
                              f"${REDIS_ENV} if set)")
    storage.add_argument("--db", metavar="PATH",
                         help=f"the SQLite file that keeps the history (default: ${DB_ENV}, else ./{DEFAULT_DB})")
    storage.add_argument("--memory", action="store_true", help="keep nothing: history lives in memory only")
    serve.add_argument("--retain", type=positive_int, metavar="N",
                       help="finished jobs kept in the database, the newest N (default: all)")
    serve.add_argument("--retain-days", type=positive_number, metavar="D",
                       help="finished jobs kept in the database, those of the last D days (default: all)")
    serve.add_argument("--size", type=positive_int, metavar="N",
                       help="size of the demo jobs started with --demo (default 60)")
    serve.add_argument("--visibility-timeout", type=positive_number, default=30.0, metavar="S",
                       help="with --redis: seconds before work of a vanished worker is run elsewhere (default 30)")
    serve.add_argument("--celery", metavar="MODULE:APP",
                       help="with --redis: run the work on the Celery workers of this Celery app (celery -A "
                            "MODULE:APP worker) instead of stepstream's own workers")

    worker = sub.add_parser(
        "worker", help="run step handlers and children of a Redis deployment",
        description="Take queued work (step handlers, children) of APP's jobs from Redis and run it here, "
                    "until Ctrl+C or SIGTERM (then what runs here is handed back to other workers).")
    worker.add_argument("app", metavar="APP",
                        help="module:attribute naming an Orchestrator or a callable returning one")
    worker.add_argument("--redis", type=redis_url, metavar="URL",
                        help=f"the deployment's Redis (default: ${REDIS_ENV})")
    worker.add_argument("--workers", type=positive_int, metavar="N",
                        help="threads running work here (default APP's max_workers)")
    worker.add_argument("--visibility-timeout", type=positive_number, default=30.0, metavar="S",
                        help="seconds before work of a vanished worker is run elsewhere (default 30)")
    worker.add_argument("--celery", metavar="MODULE:APP",
                        help="run a Celery worker of this Celery app here (like celery -A MODULE:APP worker)")

    run = sub.add_parser(
        "run", help="run one job here and print each step's progress",
        usage="stepstream run APP DEFINITION [--params JSON]\n"
              "       stepstream run --demo [DEFINITION] [--params JSON] [--size N] [--speed S] [--workers N]",
        description="Run one job of DEFINITION and show each step's progress until it ends, then why "
                    "children failed, grouped by error. Exit status: 0 completed with no failed child, "
                    "3 completed with failed children, 1 failed or cancelled, 130 quit by a second Ctrl+C. "
                    "Ctrl+C cancels the job; a second Ctrl+C quits.")
    run.add_argument("app", nargs="?", metavar="APP",
                     help="module:attribute naming an Orchestrator or a callable returning one")
    run.add_argument("definition", nargs="?", metavar="DEFINITION", help="the job definition to run")
    run.add_argument("--params", type=json_object, default={}, metavar="JSON", help="the job's params, a JSON object")
    run.add_argument("--demo", action="store_true",
                     help=f"run a demo definition ({', '.join(demo.DEFINITIONS)}; default nearby_restaurants)")
    run.add_argument("--size", type=positive_int, help="demo: size of the job (default 40)")
    run.add_argument("--speed", type=non_negative_number, help="demo: scale of simulated work time, 0 = instant "
                     "(default 1)")
    run.add_argument("--workers", type=positive_int, help="demo: worker threads (default 8)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    gctuning.tune()  # this process runs the work: see stepstream/gctuning.py
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "worker":
            return work(args)
        return run(args)
    except CliError as exc:
        print(f"stepstream: error: {exc}", file=sys.stderr)
        return exc.code
    except MissingDependency as exc:  # e.g. --redis or $STEPSTREAM_REDIS without redis-py: name the extra
        print(f"stepstream: error: {exc}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------- serve


def serve(args: argparse.Namespace) -> int:
    """Serve until Ctrl+C (exit status 130) or SIGTERM (143); 1 if it could not listen."""
    orch = _serve_orchestrator(args)
    bind_host = args.host.strip("[]")
    token, token_source = _token(args.token, _is_loopback(bind_host))
    allowed_hosts = _allowed_hosts(bind_host, args.allowed_host)
    try:
        app = _app(orch, allowed_hosts, token)
        _check_can_listen(bind_host, args.port)
    except CliError:
        orch.shutdown(wait=False)
        raise

    def started(bound_port: int) -> None:
        base = f"http://{_url_host(bind_host)}:{bound_port}/"
        if token_source == "generated":
            url = f"{base}?token={token}"
        elif token_source:
            url = f"{base}  (token from {token_source})"
        else:
            url = base
        print(f"stepstream: serving on {url}  (Ctrl+C to stop)", file=sys.stderr, flush=True)
        if bind_host in WILDCARD_HOSTS:
            hint = "" if args.allowed_host else "; add --allowed-host NAME for the name other machines use"
            print(f"stepstream: listening on all interfaces; Host names accepted: {', '.join(allowed_hosts)}{hint}",
                  file=sys.stderr, flush=True)

    # Warning level: the line above says where it serves; uvicorn's INFO lines repeat it without the token.
    config = uvicorn.Config(app, host=bind_host, port=args.port, log_level="warning", access_log=False,
                            lifespan="off", timeout_graceful_shutdown=1)
    server = _ReportingServer(config, started)
    # uvicorn re-raises the signal it handled once it has shut down: make SIGTERM unwind like Ctrl+C.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        if args.demo:
            demo.keep_running(orch, size=args.size or 60)
        server.run()
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:
        if server.started:  # SIGTERM, re-raised by uvicorn after a clean shutdown
            return exc.code if isinstance(exc.code, int) else 1
        print(f"stepstream: error: could not serve on {bind_host}:{args.port} (see above)", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        orch.shutdown(wait=False)
    return 0


class _ReportingServer(uvicorn.Server):
    """uvicorn's Server, calling `on_started(port)` once it actually listens."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[int], None]) -> None:
        super().__init__(config)
        self.on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.on_started(self.servers[0].sockets[0].getsockname()[1])


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _serve_orchestrator(args: argparse.Namespace) -> Orchestrator:
    if args.size is not None and not args.demo:
        raise CliError("--size applies only with --demo")
    redis = args.redis or (os.environ.get(REDIS_ENV) if args.db is None and not args.memory else None)
    if args.celery and not redis:
        raise CliError("--celery needs --redis: the state every process (server, Celery workers) reaches")
    if args.celery:
        from .backends.redis import celeryrunner  # noqa: F401 - without Celery: one line naming the extra
    if args.workers == 0 and not redis:
        raise CliError("--workers 0 (run no work here) applies only with --redis")
    if args.app is None:
        orch = Orchestrator(max_workers=args.workers or 8)
    else:
        if args.workers is not None and not redis:
            raise CliError(f"--workers applies only without APP: set max_workers in {args.app}")
        orch = _load(args.app)
    if args.demo:
        clash = sorted(set(demo.DEFINITIONS) & set(orch.definitions()))
        if clash:
            raise CliError(f"--demo would redefine {', '.join(clash)}, already defined by {args.app}")
        demo.register(orch)
    _choose_storage(orch, args)
    if not orch.definitions():
        what = f"{args.app} defines" if args.app else "no APP given:"
        print(f"stepstream: warning: {what} no job definitions; serving anyway (nothing can be started)",
              file=sys.stderr)
    return orch


def _choose_storage(orch: Orchestrator, args: argparse.Namespace) -> None:
    """The history goes where the command line says: a SQLite file by default, memory with
    --memory. An APP's orchestrator that already has a journal keeps it unless told otherwise."""
    if (args.retain or args.retain_days) and args.memory:
        raise CliError("--retain and --retain-days keep jobs in a database; they do not go with --memory")
    redis = args.redis or (os.environ.get(REDIS_ENV) if args.db is None and not args.memory else None)
    if redis:
        _use_redis(orch, redis, 0 if args.celery else args.workers, args)
        if args.celery:
            _use_celery(orch, args.celery)
        return
    if args.memory or (orch.journal is not None and args.db is None):
        return
    path = Path(args.db or os.environ.get(DB_ENV) or DEFAULT_DB)
    try:
        journal = SqliteJournal(path, retain_jobs=args.retain, retain_days=args.retain_days)
    except (OSError, sqlite3.Error, SchemaError) as exc:
        raise CliError(f"cannot open the database {path}: {exc}") from None
    try:
        orch.use_journal(journal)
    except StepstreamError as exc:
        journal.close()
        raise CliError(f"--db: {exc}") from None
    held = orch.jobs(limit=1)["jobs"]
    print(f"stepstream: history in {path.resolve()}" + ("" if held else " (new)"), file=sys.stderr)


def _use_redis(orch: Orchestrator, url: str, workers: int | None, args: argparse.Namespace) -> None:
    from .backends.redis import StorageUnavailable, safe_url

    try:
        redis_url(url)
    except argparse.ArgumentTypeError as exc:
        raise CliError(f"${REDIS_ENV} {exc}") from None

    try:
        orch.use_redis(url, workers=workers, visibility_timeout=args.visibility_timeout,
                       retain_jobs=getattr(args, "retain", None), retain_days=getattr(args, "retain_days", None))
    except StorageUnavailable as exc:
        raise CliError(str(exc), code=1) from None
    except StepstreamError as exc:
        raise CliError(f"--redis: {exc}") from None
    print(f"stepstream: jobs in Redis at {safe_url(url)} (run here by {orch.max_workers} worker threads)",
          file=sys.stderr)


def _use_celery(orch: Orchestrator, spec: str) -> Any:
    """Run `orch`'s work on the Celery app `spec` names; the app."""
    try:
        app = load_object(spec, "--celery", "myjobs:celery_app")
    except LoadError as exc:
        raise CliError(str(exc)) from None
    try:
        orch.use_celery(app)
    except StepstreamError as exc:
        raise CliError(f"--celery: {exc}") from None
    print(f"stepstream: work runs on the Celery workers of {spec} (broker {app.conf.broker_url!s:.80})",
          file=sys.stderr)
    return app


# ---------------------------------------------------------------- worker


def work(args: argparse.Namespace) -> int:
    """Run queued work until Ctrl+C (exit status 130) or SIGTERM (143)."""
    url = args.redis or os.environ.get(REDIS_ENV)
    if not url:
        raise CliError(f"a worker needs the deployment's Redis: --redis URL (or ${REDIS_ENV})")
    if args.celery:
        from .backends.redis import celeryrunner  # noqa: F401 - without Celery: one line naming the extra
    orch = _load(args.app)
    if not orch.definitions():
        raise CliError(f"{args.app} defines no job definitions: this worker would have nothing to run")
    if args.celery:
        _use_redis(orch, url, 0, args)
        app = _use_celery(orch, args.celery)
        argv = ["worker", "--loglevel=INFO", f"--concurrency={args.workers or orch.max_workers}"]
        app.worker_main(argv)  # until Ctrl+C or SIGTERM: Celery's own warm shutdown
        return 0
    _use_redis(orch, url, args.workers or orch.max_workers, args)
    stop = {"signal": 0}

    def on_signal(signum: int, frame: Any) -> None:
        # Only a flag: the handler runs in the main thread between any two bytecodes, so taking a
        # lock here (Event.set) could wait forever on one that the main thread itself holds.
        stop["signal"] = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(f"stepstream: worker running {', '.join(orch.definitions())} (Ctrl+C to stop)", file=sys.stderr, flush=True)
    try:
        while not stop["signal"]:
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        orch.shutdown(wait=False)  # what runs here is handed back to the other workers
    print("stepstream: worker stopped", file=sys.stderr, flush=True)
    return 128 + stop["signal"] if stop["signal"] else 0


def _load(spec: str) -> Orchestrator:
    try:
        return load_orchestrator(spec)
    except LoadError as exc:
        raise CliError(str(exc)) from None


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_forms(host: str) -> list[str]:
    """A Host header carries an IPv6 address in brackets; accept both spellings."""
    host = host.strip("[]")
    return [host, f"[{host}]"] if ":" in host else [host]


def _allowed_hosts(bind_host: str, extra: list[str]) -> list[str]:
    hosts = list(LOOPBACK_HOSTS)
    if bind_host not in WILDCARD_HOSTS:
        hosts += _host_forms(bind_host)
    for name in extra:
        hosts += _host_forms(name)
    return list(dict.fromkeys(hosts))


def _token(given: str | None, loopback: bool) -> tuple[str | None, str | None]:
    """The token clients must present and where it came from; none on loopback unless given."""
    if given:
        return given, "--token"
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV], TOKEN_ENV
    if loopback:
        return None, None
    return secrets.token_urlsafe(24), "generated"


def _url_host(bind_host: str) -> str:
    """The host of a URL that reaches the server from this machine (and passes the Host check)."""
    if bind_host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bind_host == "::":
        return "[::1]"
    return f"[{bind_host}]" if ":" in bind_host else bind_host


def _app(orch: Orchestrator, allowed_hosts: list[str], token: str | None) -> Any:
    from .server import create_app  # imports sse-starlette, which hooks uvicorn's signal handling

    return create_app(orch, allowed_hosts=allowed_hosts, token=token)


def _check_can_listen(host: str, port_: int) -> None:
    """Fail with one clear line, before uvicorn starts, if (host, port) cannot be bound."""
    where = f"[{host}]:{port_}" if ":" in host else f"{host}:{port_}"
    try:
        infos = socket.getaddrinfo(host or None, port_, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CliError(f"cannot listen on {where}: {exc.strerror.lower()}", code=1) from None
    for family, kind, proto, _, address in dict.fromkeys((i[0], i[1], i[2], i[3], i[4]) for i in infos):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's create_server does
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                hint = " (try another --port, or --port 0 for a free one)" if exc.errno == errno.EADDRINUSE else ""
                raise CliError(f"cannot listen on {where}: {(exc.strerror or str(exc)).lower()}{hint}",
                               code=1) from None


# ---------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    """Run one job, showing its steps, then why children failed; the exit status is `exit_status`
    (0, 3 or 1), or 130 on a second Ctrl+C."""
    orch, definition, params = _run_target(args)
    if definition not in orch.definitions():
        known = ", ".join(orch.definitions()) or "none"
        raise CliError(f"no definition named {definition!r}; known: {known}")
    try:
        job_id = orch.start(definition, params)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    out = sys.stdout
    print(f"stepstream: job {job_id} ({definition}); Ctrl+C cancels it", file=out, flush=True)
    interrupts = 0

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    display = StepDisplay(out, tty=out.isatty())
    cancelled = False
    try:
        while True:
            if interrupts and not cancelled:
                cancelled = True
                display.say("stepstream: cancelling (Ctrl+C again to quit)")  # one table, not two
                try:
                    orch.cancel(job_id)
                except StepstreamError:
                    pass  # it finished meanwhile
            try:
                final = orch.wait(job_id, timeout=0.2)
                break
            except TimeoutError:
                display.show(orch.snapshot(job_id)["job"])
    except KeyboardInterrupt:
        print("\nstepstream: quit without waiting for the job", file=out, flush=True)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
        orch.shutdown(wait=False)
    job = final["job"]
    display.note = "stepstream: cancelled by Ctrl+C" if cancelled else ""
    display.show(job)
    print(summary(job, display.elapsed(), display.width()), file=out)
    if job["error"]:
        print(f"error: {job['error']}", file=out)
    if job["progress"]["failed"]:
        groups = failures.collect(orch, job_id)["groups"]
        print("failed children, by error:", file=out)
        for line in failures.summary_lines(groups, width=display.width()):
            print(line, file=out)
    out.flush()
    return exit_status(job)


EXIT_COMPLETED, EXIT_FAILED, EXIT_COMPLETED_WITH_FAILURES = 0, 1, 3


def exit_status(job: dict) -> int:
    """`run`'s exit status: 0 completed with no failed child, 3 completed with failed children,
    1 failed or cancelled."""
    if job["status"] != "completed":
        return EXIT_FAILED
    return EXIT_COMPLETED_WITH_FAILURES if job["progress"]["failed"] else EXIT_COMPLETED


def _run_target(args: argparse.Namespace) -> tuple[Orchestrator, str, dict]:
    """The orchestrator, the definition and the params that `run` was asked for."""
    if args.demo:
        if args.definition is not None:
            raise CliError("with --demo, give only the DEFINITION (no APP)")
        orch = Orchestrator(max_workers=args.workers or 8, capture_level=None)
        demo.register(orch)
        demo_params = {"size": args.size or 40, "speed": 1.0 if args.speed is None else args.speed}
        return orch, args.app or "nearby_restaurants", {**demo_params, **args.params}
    given = [name for name in ("size", "speed", "workers") if getattr(args, name) is not None]
    if given:
        raise CliError(f"--{given[0]} applies only with --demo; put job settings in --params")
    if args.app is None:
        raise CliError("give APP DEFINITION (e.g. stepstream run myjobs:orch crawl), or --demo [DEFINITION]")
    if ":" not in args.app and args.app in demo.DEFINITIONS:
        raise CliError(f"APP must be module:attribute; to run the demo: stepstream run --demo {args.app}")
    orch = _load(args.app)
    if args.definition is None:
        raise CliError(f"give the DEFINITION to run; {args.app} defines: {', '.join(orch.definitions()) or 'none'}")
    return orch, args.definition, args.params


class StepDisplay:
    """One line per step: its bar, completed of total, failed, finish rate and time (the time
    left once the step stopped finding work). On a terminal the block is redrawn in place,
    with a note line below it (such as "cancelling"); otherwise a step's line is appended
    whenever it changed (its elapsed time aside)."""

    HEADER = ("step", "status", "progress", "done/total", "failed", "rate", "time")

    def __init__(self, out: TextIO, *, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.started = time.monotonic()
        self._drawn = 0  # lines of the block above the cursor (terminal)
        self._shown: dict[str, tuple] = {}  # last state printed per step (plain output)
        self._paces: dict[str, Pace] = {}
        self.note = ""

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def width(self) -> int:
        """Columns to fit: the terminal's, at most 80 (80 when not a terminal)."""
        if not self.tty:
            return WIDTH
        columns = shutil.get_terminal_size((WIDTH, 24)).columns  # 0 on a pty nobody sized
        return min(WIDTH, columns) if columns > 0 else WIDTH

    def say(self, message: str) -> None:
        """A message about the run: the block's note line on a terminal, else a line of its own."""
        if self.tty:
            self.note = message
        else:
            self.out.write(message + "\n")
            self.out.flush()

    def show(self, job: dict) -> None:
        steps = job["steps"]
        now = datetime.now(UTC)
        clock = time.monotonic()
        for step in steps:
            self._paces.setdefault(step["name"], Pace()).see(step["progress"], clock)
        layout = Layout.fit(self.width(), [s["name"] for s in steps])
        line = lambda s: step_line(s, layout, now, self._paces[s["name"]], clock)  # noqa: E731
        if self.tty:
            lines = [layout.row(self.HEADER)] + [line(s) for s in steps] + ([self.note] if self.note else [])
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            # Each line cleared and rewritten; what an earlier, longer block left below goes too.
            self.out.write(up + "".join(f"\x1b[2K{text[:layout.width]}\n" for text in lines) + "\x1b[J")
            self._drawn = len(lines)
        else:
            if not self._shown:
                self.out.write(layout.row(self.HEADER) + "\n")
            for step in steps:
                state = (step["status"], tuple(step["progress"].values()), step["log_count"])
                if self._shown.get(step["id"]) != state:
                    self._shown[step["id"]] = state
                    self.out.write(line(step) + "\n")
        self.out.flush()


class Pace:
    """A step's recent pace from the counts seen over the last 30 s: finished children per
    second, and whether it is still finding work (its total rose in the last 4 s)."""

    WINDOW, GROWING = 30.0, 4.0

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int]] = []  # (monotonic time, finished, total)
        self.grew_at = -math.inf

    def see(self, progress: dict, now: float) -> None:
        finished = progress["completed"] + progress["failed"] + progress["cancelled"]
        if self.samples and progress["total"] > self.samples[-1][2]:
            self.grew_at = now
        self.samples.append((now, finished, progress["total"]))
        while len(self.samples) > 2 and self.samples[1][0] < now - self.WINDOW:
            self.samples.pop(0)

    def growing(self, now: float) -> bool:
        return now - self.grew_at < self.GROWING

    def rate(self, now: float) -> float | None:
        """Children finished per second over the window; None with under 2 s of history."""
        if not self.samples or now - self.samples[0][0] < 2:
            return None
        return (self.samples[-1][1] - self.samples[0][1]) / (now - self.samples[0][0])


@dataclass(frozen=True)
class Layout:
    """Columns of `run`'s table for a width of 60 to 80: names are shortened to fit, never numbers."""

    width: int
    name: int
    bar: int

    FIXED = 9 + 11 + 6 + 6 + 7 + 6  # status, done/total, failed, rate, time; the spaces between

    @classmethod
    def fit(cls, width: int, names: Sequence[str]) -> Layout:
        width = max(60, width)
        room = width - cls.FIXED  # for the name and the bar
        name = min(max([len("step")] + [len(n) for n in names]), max(7, room - 12), 24)
        return cls(width, name, max(len("progress"), room - name))

    def row(self, fields: Sequence[str]) -> str:
        name, status, bar, done, failed, rate, took = fields
        name = name if len(name) <= self.name else name[: self.name - 1] + "~"
        return (f"{name:<{self.name}} {status:<9} {bar:<{self.bar}} {done:>11} {failed:>6} {rate:>6}"
                f" {took:>7}")[: self.width]


def bar(progress: dict, width: int) -> str:
    """Completed '#', failed 'x', cancelled '-', the rest '.': `width` characters."""
    total = progress["total"]
    if not total:
        return "." * width
    cells = []
    for key, mark in (("completed", "#"), ("failed", "x"), ("cancelled", "-")):
        cells.append(mark * round(width * progress[key] / total))
    used = "".join(cells)[:width]
    return used + "." * (width - len(used))


def step_line(step: dict, layout: Layout | int = 16, now: datetime | None = None, pace: Pace | None = None,
              clock: float | None = None) -> str:
    """A step's line: its bar, completed (only) of total children, failed ones, the recent finish
    rate, and its time: elapsed, or the time left once it stopped finding work."""
    if isinstance(layout, int):
        layout = Layout(WIDTH, layout, 12)
    p = step["progress"]
    clock = time.monotonic() if clock is None else clock
    rate = pace.rate(clock) if pace is not None and step["status"] == "running" else None
    took = _step_time(step, now or datetime.now(UTC))
    if step["status"] == "running" and pace is not None:
        remaining = p["pending"] + p["running"]
        if pace.growing(clock):
            took = "finding"
        elif rate and remaining:
            took = "~" + _duration(remaining / rate)
    done = f"{_count(p['completed'])}/{_count(p['total'])}"  # completed only: not failed or cancelled
    return layout.row((step["name"], step["status"], bar(p, layout.bar), done, _count(p["failed"]), _rate(rate), took))


def _rate(per_second: float | None) -> str:
    if not per_second:
        return "-"
    if per_second >= 10:
        return f"{_count(round(per_second))}/s"
    return f"{per_second:.1f}/s" if per_second >= 1 else f"{round(per_second * 60)}/m"


def summary(job: dict, seconds: float, width: int = WIDTH) -> str:
    """The job's outcome and counts, on two lines if one would be wider than `width`."""
    p = job["progress"]
    outcome = job["status"]
    if outcome == "completed" and p["failed"]:
        outcome = f"completed with {p['failed']:,} failed"
    head = f"job {outcome} in {_duration(seconds)}"
    counts = (f"{p['total']:,} children, {p['completed']:,} completed, {p['failed']:,} failed,"
              f" {p['cancelled']:,} cancelled")
    line = f"{head}: {counts}"
    return line if len(line) <= width else f"{head}:\n  {counts}"


def _count(n: int) -> str:
    """At most 5 characters."""
    if n < 100_000:
        return str(n)
    if n < 1_000_000:
        return f"{n // 1000}k"
    return f"{n / 1_000_000:.1f}M" if n < 100_000_000 else f"{n // 1_000_000}M"


def _step_time(step: dict, now: datetime) -> str:
    if not step["started_at"]:
        return "-"
    started = datetime.fromisoformat(step["started_at"])
    finished = datetime.fromisoformat(step["finished_at"]) if step["finished_at"] else now
    return _duration((finished - started).total_seconds())


def _duration(seconds: float) -> str:
    """At most 7 characters: 9.8s, 12m05s, 3h07m."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
