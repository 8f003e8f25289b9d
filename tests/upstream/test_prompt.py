"""Prompt frames: a small request goes out at once, from the task that makes it, while the
event loop has time to spare; gathered into the writer's frames while it is busy.

Whatever way a request goes, the server must read whole frames in the order they were made.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
import trio.testing

from gateway.upstream import UpstreamTimeout, UpstreamUnavailable
from gateway.upstream import client as nats_client
from gateway.upstream.client import PROMPT_LIMIT, frame_header, next_pace

from .natsproc import NatsProcess, direct_get, running_upstream
from .test_jetstream import submission


@contextmanager
def connection(*, prompt: bool = True, small_buffers: bool = False) -> Iterator[Any]:
    """A _Connection on one end of a socket pair (the WebSocket object stands in only for
    its send lock and its closed state), and the other end, non-blocking, as the server."""
    ours, theirs = socket.socketpair()
    if small_buffers:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    theirs.setblocking(False)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    ws = SimpleNamespace(_stream_lock=trio.StrictFIFOLock(), closed=None)
    conn = nats_client._Connection(cast(Any, ws), {}, False, stream, prompt=prompt)
    with ours, theirs:
        yield conn, theirs


def waiting(sock: socket.socket) -> bytes:
    """What the server end can read now."""
    data = b""
    while True:
        try:
            more = sock.recv(1 << 20)
        except BlockingIOError:
            return data
        if not more:
            return data
        data += more


def frame(*pieces: bytes) -> bytes:
    payload = b"".join(pieces)
    return frame_header(len(payload)) + payload


async def test_prompt_request_is_on_the_socket_when_send_returns() -> None:
    with connection() as (conn, server):
        await conn.send([b"PUB a 1\r\n", b"x", b"\r\n"])
        assert waiting(server) == frame(b"PUB a 1\r\n", b"x", b"\r\n")
        assert conn._outbox == []


async def test_gathered_requests_wait_for_the_writer_and_go_as_one_frame() -> None:
    with connection(prompt=False) as (conn, server):
        await conn.send([b"PUB a 1\r\nx\r\n"])
        await conn.send([b"PUB b 1\r\ny\r\n"])
        assert waiting(server) == b""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.writer)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        assert waiting(server) == frame(b"PUB a 1\r\nx\r\n", b"PUB b 1\r\ny\r\n")


@pytest.mark.parametrize("blocker", ["queued", "lock", "big", "closed"])
async def test_a_prompt_request_that_cannot_go_first_waits_its_turn(blocker: str) -> None:
    """Prompt, but queued behind what is queued already, behind a frame being sent (the send
    lock is held), when too big for one write, or once the WebSocket is closing: then it goes
    with the writer, after what came before it."""
    with connection() as (conn, server):
        late = b"PUB late 1\r\nz\r\n"
        before: list[bytes] = []
        if blocker == "queued":
            before = [b"SUB early 1\r\n"]
            conn.write(before)
        elif blocker == "big":
            late = b"x" * (PROMPT_LIMIT + 1)
        elif blocker == "closed":
            conn.ws.closed = "closing"
        async with trio.open_nursery() as nursery:
            if blocker == "lock":
                held = trio.Event()

                async def hold() -> None:
                    async with conn.ws._stream_lock:
                        held.set()
                        await trio.sleep(0.05)

                nursery.start_soon(hold)
                await held.wait()
            await conn.send([late])
            assert waiting(server) == b""
            assert conn._outbox == [*before, late]
            if blocker != "closed":
                nursery.start_soon(conn.writer)
                await trio.sleep(0.1)  # the writer's turn (and the lock's holder's)
                assert waiting(server) == frame(*before, late)
            nursery.cancel_scope.cancel()


async def test_a_frame_the_socket_takes_in_part_is_finished_before_any_other() -> None:
    """A full socket takes part of a prompt frame: its task sends the rest, holding the send
    lock, and a request made meanwhile goes after it, whole."""
    with connection(small_buffers=True) as (conn, server):
        first = os.urandom(PROMPT_LIMIT - 100)
        second = b"PUB second 1\r\ny\r\n"
        received = bytearray()
        expected = frame(first) + frame(second)

        async def read_slowly() -> None:
            while len(received) < len(expected):
                await trio.sleep(0.002)
                received.extend(waiting(server)[:8192])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.writer)
            sending = trio.Event()

            async def send_first() -> None:
                sending.set()
                await conn.send([first])

            nursery.start_soon(send_first)
            await sending.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert conn.ws._stream_lock.locked()  # the first frame's rest is being sent
            await conn.send([second])
            assert conn._outbox == [second]
            with trio.fail_after(10):
                await read_slowly()
            nursery.cancel_scope.cancel()
        assert bytes(received) == expected


@pytest.mark.parametrize("end", ["cancelled", "deadline", "closed"])
async def test_a_frame_that_cannot_be_finished_closes_the_socket(end: str) -> None:
    """Part of a frame on the wire and nobody reading: nothing could follow it, so the
    socket is closed (and the client reconnects). Cancelled: the cancellation goes on. At the
    request's deadline: a timeout. The connection closed meanwhile: the upstream is
    unavailable. Either way the send lock is free again."""
    with connection(small_buffers=True) as (conn, _server):
        half = [b"x" * (PROMPT_LIMIT - 100)]
        if end == "cancelled":
            with trio.move_on_after(0.1) as scope:
                await conn.send(half)
            assert scope.cancelled_caught
        elif end == "deadline":
            with pytest.raises(UpstreamTimeout):
                await conn.send(half, trio.current_time() + 0.1)
        else:
            async with trio.open_nursery() as nursery:

                async def close_soon() -> None:
                    await trio.sleep(0.1)
                    await conn.stream.aclose()

                nursery.start_soon(close_soon)
                with pytest.raises(UpstreamUnavailable, match="connection to the NATS server lost"):
                    await conn.send(half)
        assert conn.stream.socket.fileno() == -1
        assert not conn.ws._stream_lock.locked()


@pytest.mark.parametrize(
    ("prompt", "calm", "busy", "after"),
    [
        (True, 0, 0.0, (True, 1)),
        (True, 5, 0.74, (True, 6)),
        (True, 5, 0.85, (True, 0)),  # in between: as it was
        (True, 5, 0.95, (False, 0)),  # busy: gathered at once
        (False, 0, 1.02, (False, 0)),  # the two clocks round differently
        (False, 2, 0.85, (False, 0)),  # in between: as it was, and the calm run ends
        (False, 0, 0.5, (False, 1)),  # calm once: not yet
        (False, 1, 0.7, (False, 2)),
        (False, 2, 0.7, (True, 3)),  # calm three looks in a row: prompt
    ],
)
def test_gathered_at_once_when_busy_prompt_after_three_calm_looks(
    prompt: bool, calm: int, busy: float, after: tuple[bool, int]
) -> None:
    assert next_pace(prompt, calm, busy) == after


async def test_pace_follows_how_busy_the_event_loop_is(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every look compares the loop thread's CPU time with the clock's: here a CPU clock
    that runs at a set share of trio's."""
    share = 0.0
    cpu = 0.0
    last = trio.current_time()

    def clocks() -> tuple[float, float]:
        nonlocal cpu, last
        now = trio.current_time()
        cpu += (now - last) * share
        last = now
        return cpu, now

    seen = []
    with connection() as (conn, _server):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.pace, 0.1, clocks)
            # Each for five looks: the last look's verdict is kept.
            for value in (0.2, 1.0, 0.8, 0.5, 0.8, 0.95, 0.5):
                share = value
                await trio.sleep(0.55)
                seen.append(conn.prompt)
            # Two calm looks, a busy one: still gathered.
            for value in (0.5, 0.5, 0.95, 0.5, 0.5):
                share = value
                await trio.sleep(0.1)
            seen.append(conn.prompt)
            nursery.cancel_scope.cancel()
    assert seen == [True, False, False, True, True, False, True, False]


def short_writes(monkeypatch: pytest.MonkeyPatch, seed: int) -> list[int]:
    """Make every writev of the client take a random part of what it is offered, as a socket
    that is nearly full does (loopback TCP takes a whole 64 KiB write at once, so a real one
    cannot be made to at will). Returns the list of (offered - taken) of each write."""
    rng = random.Random(seed)
    cut: list[int] = []
    real_writev = os.writev

    def writev(fd: int, buffers: Sequence[Any]) -> int:
        total = sum(len(b) for b in buffers)
        take = rng.randint(1, total) if total > 1 else total
        views, left = [], take
        for buffer in buffers:
            if left <= 0:
                break
            view = memoryview(buffer)[:left]
            views.append(view)
            left -= len(view)
        sent = real_writev(fd, views)
        cut.append(total - sent)
        return sent

    monkeypatch.setattr(nats_client, "os", SimpleNamespace(writev=writev))
    return cut


async def test_prompt_and_gathered_frames_written_in_part_are_stored_exactly(
    nats: NatsProcess, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a real nats-server, every write taking only part of what it is offered:
    prompt frames, gathered ones and PINGs, all at once on one connection. Every message is
    stored octet for octet."""
    monkeypatch.setattr(nats_client, "GATHER_ABOVE", 2.0)  # prompt however busy the test is
    rests = 0
    write_all = nats_client._write_all

    async def counting(fd: int, pieces: list[bytes]) -> None:
        nonlocal rests
        rests += len(pieces) == 1  # the rest of a prompt frame (the writer's have a header)
        await write_all(fd, pieces)

    monkeypatch.setattr(nats_client, "_write_all", counting)
    async with running_upstream(nats.ws_url, nursery) as upstream:
        conn = upstream.client._conn
        assert conn is not None
        assert conn.prompt
        cut = short_writes(monkeypatch, seed=7)
        # Hex: twice as many octets. 60 kB frames go prompt (and in part), 200 kB ones with
        # the writer, as does whatever is made while something is queued or being sent.
        sizes = [30_000, 50, 100_000, 2] * 10
        messages = [
            b"Subject: %d\r\n\r\n" % i + os.urandom(n).hex().encode() for i, n in enumerate(sizes)
        ]
        stored: dict[int, int] = {}

        async def publish(i: int) -> None:
            stored[i] = (await upstream.publish(submission(messages[i]), messages[i])).seq

        async with trio.open_nursery() as group:
            for i in range(len(messages)):
                group.start_soon(publish, i)
                if i % 7 == 0:
                    conn.write([b"PING\r\n"])
                if i % 4 == 3:
                    await trio.sleep(0.005)  # some find nothing queued, some do
        for i, seq in stored.items():
            assert (await direct_get(upstream.client, seq)).payload == messages[i]
        assert len(stored) == len(messages)
    assert rests > 0, "no prompt frame was taken in part: the test did not test that"
    assert sum(1 for n in cut if n) > len(cut) // 2
