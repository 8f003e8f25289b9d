"""Prompt frames: a small request goes out at once, from the task that makes it, while the
event loop has time to spare; gathered into the writer's frames while it is busy.

Whatever way a request goes, the server must read whole frames in the order they were made.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
import trio.testing

from gateway.upstream import client as nats_client
from gateway.upstream.client import PROMPT_LIMIT, frame_header, prompt_after

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


async def test_a_frame_cut_short_by_cancellation_closes_the_socket() -> None:
    """Cancelled with part of a frame on the wire: nothing could follow it, so the socket is
    closed and the connection ends (the client then reconnects)."""
    with connection(small_buffers=True) as (conn, _server):
        with trio.move_on_after(0.1):
            await conn.send([b"x" * (PROMPT_LIMIT - 100)])  # nobody reads: it cannot finish
        assert conn.stream.socket.fileno() == -1
        assert not conn.ws._stream_lock.locked()


@pytest.mark.parametrize(
    ("prompt", "busy", "after"),
    [
        (True, 0.0, True),
        (True, 0.74, True),
        (True, 0.85, True),  # in between: as it was
        (True, 0.95, False),
        (False, 1.02, False),  # the two clocks round differently
        (False, 0.85, False),  # in between: as it was
        (False, 0.7, True),
    ],
)
def test_prompt_below_a_busy_share_gathered_above_another(
    prompt: bool, busy: float, after: bool
) -> None:
    assert prompt_after(prompt, busy) is after


async def test_pace_follows_how_busy_the_event_loop_is() -> None:
    with connection() as (conn, _server):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.pace, 0.01)
            await trio.sleep(0.05)
            assert conn.prompt
            start = time.thread_time()
            while time.thread_time() - start < 0.3:  # the loop busy, no task else runs
                pass
            await trio.sleep(0.005)  # one look at the loop, which was busy all along
            assert not conn.prompt
            await trio.sleep(0.1)  # idle
            assert conn.prompt
            nursery.cancel_scope.cancel()


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
