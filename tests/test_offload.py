"""The offload's bounds: storage calls beyond its threads wait their turn within their timeout;
one that never got a thread says nothing was done; past its queue, a call is refused at once."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from stepstream.offload import Offload, StorageProbe, StorageUnavailable

pytestmark = pytest.mark.timeout(60)


def test_a_burst_of_calls_beyond_the_threads_waits_its_turn_instead_of_being_refused():
    """60 streams starting at once each read a snapshot: a command sent meanwhile used to be
    turned away with 503 ("16 calls are waiting") although every read was quick."""
    offload = Offload(threads=2, timeout=5)

    async def burst() -> list:
        return await asyncio.gather(*(offload.run(time.sleep, 0.02) for _ in range(20)),
                                    offload.run(lambda: "applied", command=True))

    try:
        results = asyncio.run(burst())
    finally:
        offload.close()
    assert results[-1] == "applied" and len(results) == 21


def test_a_command_that_never_got_a_thread_within_its_timeout_says_nothing_was_done_and_never_runs():
    offload = Offload(threads=1, timeout=0.3)
    release = threading.Event()
    ran = threading.Event()

    async def scenario() -> str:
        holder = asyncio.ensure_future(offload.run(release.wait, 10, timeout=10))
        await asyncio.sleep(0.05)
        try:
            await offload.run(ran.set, command=True)
        except StorageUnavailable as exc:
            message = str(exc)
        else:
            message = "ran"
        release.set()
        await holder
        return message

    try:
        message = asyncio.run(scenario())
        time.sleep(0.1)
    finally:
        offload.close()
    assert "nothing was done" in message, message
    assert not ran.is_set()


def test_past_its_queue_a_call_is_refused_at_once():
    offload = Offload(threads=1, timeout=5, queue=3)
    release = threading.Event()

    async def scenario() -> str:
        held = [asyncio.ensure_future(offload.run(release.wait, 10, timeout=10)) for _ in range(3)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="3 calls are waiting") as refused:
            await offload.run(print)
        assert time.monotonic() - started < 1
        release.set()
        await asyncio.gather(*held)
        return str(refused.value)

    try:
        asyncio.run(scenario())
    finally:
        offload.close()


def test_a_storage_check_that_only_reads_memory_answers_at_once_however_busy_the_probes_thread():
    """In memory and on SQLite the check reads a field: health said "degraded" on a loaded
    machine when the probe's thread did not get to run within half a second."""
    release = threading.Event()
    ran_on: list[str] = []

    def check() -> None:
        ran_on.append(threading.current_thread().name)

    async def ask(probe: StorageProbe) -> str | None:
        busy = asyncio.ensure_future(probe.offload.run(release.wait, 10, timeout=10))  # its thread taken
        await asyncio.sleep(0.05)
        try:
            return await probe.problem()
        finally:
            release.set()
            await busy

    for blocks in (True, False):
        release.clear()
        probe = StorageProbe(check, blocks=lambda b=blocks: b, wait=0.3)
        try:
            answer = asyncio.run(ask(probe))
        finally:
            probe.offload.close()
        if blocks:  # a check that may block needs the thread: not answered, said to be failing
            assert answer is not None and ran_on == [], (answer, ran_on)
        else:
            assert answer is None and ran_on == [threading.main_thread().name], (answer, ran_on)


def test_a_storage_check_that_raises_says_why_however_its_error_prints():
    class Hostile(Exception):
        def __str__(self):
            raise RuntimeError("no text")

    def check() -> None:
        raise Hostile()

    for blocks in (True, False):
        probe = StorageProbe(check, blocks=lambda b=blocks: b, wait=5)
        try:
            answer = asyncio.run(probe.problem())
        finally:
            probe.offload.close()
        assert answer is not None and answer.startswith("Hostile"), answer
