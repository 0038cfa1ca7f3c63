"""The response of `GET /api/events`: the hub's bytes, sent by the connection's own task.

sse-starlette's `EventSourceResponse` runs every connection in an anyio task group of four
tasks (the stream, a keep-alive task, a disconnect listener, a shutdown watcher) and wraps every
send in a cancel scope and a lock: about 23 KB of the 42 KB an idle connection held, and most of
the cost of a send (docs/benchmarks.md, "2,000 stream clients"). Here the hub's one timer makes
the keep-alives (`Hub.stream` yields them with the data), the connection's task sends what the
hub yields, and one small task waits for the client to leave and cancels it. Shutdown is still
heard through sse-starlette: its `AppStatus` wraps uvicorn's exit handler and sets
`should_exit`, and one task per hub (`stop_on_exit`) that looks at it a few times a second then
ends all of the hub's streams, each as a complete response.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

from sse_starlette.sse import AppStatus
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

HEADERS = {"Cache-Control": "no-cache", "Connection": "keep-alive", "X-Accel-Buffering": "no"}


class EventStream(Response):
    """`text/event-stream` of the chunks `body` yields, until it ends (then the response
    completes) or the client leaves (then `body` is closed). HEAD gets the headers only."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], headers: Mapping[str, str] | None = None) -> None:
        self.body_iterator = body
        self.status_code = 200
        self.background = None
        self.init_headers({**HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if scope.get("method") == "HEAD":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            return
        me = asyncio.current_task()
        assert me is not None
        left = asyncio.get_running_loop().create_task(_until_disconnect(receive, me))
        try:
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not (left.done() and not left.cancelled() and left.exception() is None):
                raise  # cancelled by the server, not by the client leaving
            me.uncancel()
        except OSError:  # an ASGI 2.4 server's send to a client that left
            pass
        finally:
            left.cancel()
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def _until_disconnect(receive: Receive, stream: asyncio.Task) -> None:
    """Cancel `stream` when the client leaves (the ASGI server says `http.disconnect`)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    stream.cancel()


def stop_on_exit(watcher: asyncio.Task | None, stop: Callable[[], None]) -> asyncio.Task:
    """The task that calls `stop()` when the server is told to exit: `watcher` if it still
    waits on this event loop, else a new one (one per hub and loop, not one per connection)."""
    loop = asyncio.get_running_loop()
    if watcher is not None and not watcher.done() and watcher.get_loop() is loop:
        return watcher
    return loop.create_task(_stop_on_exit(stop))


EXIT_POLL = 0.2  # seconds between two looks at whether the server is exiting


async def _stop_on_exit(stop: Callable[[], None]) -> None:
    # `AppStatus.should_exit`: set by uvicorn's exit handler (Ctrl+C, SIGTERM), as sse-starlette
    # wraps it; its public flag, where its own watcher is private.
    while not AppStatus.should_exit:
        await asyncio.sleep(EXIT_POLL)
    stop()
