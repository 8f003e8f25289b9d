"""A load generator for SMTP submission servers: raw sockets on Trio, every reply checked.

Closed loop (each session sends its next message when the last is answered) or open loop
(messages started at a fixed rate, for latency). Sessions are spread over many users so the
per-user connection limit does not trip unless asked.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable

import attrs
import trio


@attrs.define
class Load:
    port: int
    password: str
    users: list[str]  # user i sends from <user>@bench.example
    sessions: int = 50
    messages: int = 40  # per session (closed loop) or in all (open loop)
    size: int = 2048  # octets of message
    recipients: int = 1
    reconnect_every: int = 0  # messages per connection; 0: one connection per session
    pipelining: bool = True
    rate: float = 0.0  # messages per second in all: > 0 for the open loop
    host: str = "127.0.0.1"


@attrs.define
class Result:
    accepted: int = 0
    failed: int = 0
    connections: int = 0
    latencies: list[float] = attrs.field(factory=list)  # seconds from MAIL to the 250
    wall: float = 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def message(n: int, size: int, sender: str) -> bytes:
    head = f"From: {sender}\r\nSubject: bench {n}\r\nMessage-Number: {n}\r\n\r\n".encode()
    line = b"x" * 76 + b"\r\n"
    body = line * max(0, (size - len(head)) // len(line))
    return head + body


class Connection:
    def __init__(self, stream: trio.SocketStream, sender: str) -> None:
        self.stream = stream
        self.sender = sender  # the authenticated user's address
        self.buf = bytearray()

    async def reply(self) -> int:
        while True:
            end = self.buf.find(b"\r\n")
            while end >= 0:
                line = bytes(self.buf[: end + 2])
                del self.buf[: end + 2]
                if line[3:4] == b" ":
                    return int(line[:3])
                end = self.buf.find(b"\r\n")
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.buf += data


async def open_session(load: Load, user: str, result: Result) -> Connection:
    conn = Connection(await trio.open_tcp_stream(load.host, load.port), f"{user}@bench.example")
    result.connections += 1
    assert await conn.reply() == 220
    await conn.stream.send_all(b"EHLO bench.client\r\n")
    assert await conn.reply() == 250
    token = base64.b64encode(f"\0{user}\0{load.password}".encode())
    await conn.stream.send_all(b"AUTH PLAIN " + token + b"\r\n")
    code = await conn.reply()
    if code != 235:
        raise ConnectionError(f"AUTH answered {code}")
    return conn


async def send_one(conn: Connection, load: Load, sender: str, n: int, result: Result) -> None:
    rcpts = "".join(f"RCPT TO:<r{i}@example.net>\r\n" for i in range(load.recipients))
    envelope = f"MAIL FROM:<{sender}>\r\n{rcpts}".encode()
    start = time.perf_counter()
    if load.pipelining:
        await conn.stream.send_all(envelope + b"DATA\r\n")
        codes = [await conn.reply() for _ in range(2 + load.recipients)]
    else:
        codes = []
        for line in [*envelope.split(b"\r\n")[:-1], b"DATA"]:
            await conn.stream.send_all(line + b"\r\n")
            codes.append(await conn.reply())
    if codes[0] != 250 or codes[-1] != 354 or any(c != 250 for c in codes[1:-1]):
        result.failed += 1
        if codes[-1] == 354:
            await conn.stream.send_all(b".\r\n")
            await conn.reply()
        return
    await conn.stream.send_all(message(n, load.size, sender) + b".\r\n")
    if await conn.reply() == 250:
        result.accepted += 1
        result.latencies.append(time.perf_counter() - start)
    else:
        result.failed += 1


async def closed_loop_session(
    load: Load, index: int, result: Result, ready: trio.MemorySendChannel[None], go: trio.Event
) -> None:
    user = load.users[index % len(load.users)]
    sender = f"{user}@bench.example"
    conn: Connection | None = await open_session(load, user, result)
    sent_here = 0
    await ready.send(None)
    await go.wait()
    for k in range(load.messages):
        if conn is None or (load.reconnect_every and sent_here >= load.reconnect_every):
            if conn is not None:
                await conn.stream.send_all(b"QUIT\r\n")
                await conn.stream.aclose()
            conn = await open_session(load, user, result)
            sent_here = 0
        await send_one(conn, load, sender, index * 1_000_000 + k, result)
        sent_here += 1
    if conn is not None:
        await conn.stream.send_all(b"QUIT\r\n")
        await conn.stream.aclose()


async def run(load: Load, on_start: Callable[[], None] = lambda: None) -> Result:
    """Run the load; every failure is counted, none raises. Every session logs in first;
    the clock (and `on_start`, for the server's CPU) starts when all have."""
    result = Result()
    if load.rate > 0:
        await _open_loop(load, result, on_start)
        return result
    go = trio.Event()
    ready, logged_in = trio.open_memory_channel[None](load.sessions)
    async with trio.open_nursery() as nursery:
        for index in range(load.sessions):
            nursery.start_soon(_guarded, load, index, result, ready, go)
        for _ in range(load.sessions):
            await logged_in.receive()
        on_start()
        start = time.perf_counter()
        go.set()
    result.wall = time.perf_counter() - start
    return result


async def _guarded(
    load: Load, index: int, result: Result, ready: trio.MemorySendChannel[None], go: trio.Event
) -> None:
    try:
        await closed_loop_session(load, index, result, ready, go)
    except (OSError, ConnectionError, trio.BrokenResourceError, AssertionError):
        result.failed += 1
        await ready.send(None)


async def _open_loop(load: Load, result: Result, on_start: Callable[[], None]) -> None:
    """Messages started at load.rate per second over a pool of open sessions."""
    pool: trio.MemorySendChannel[Connection]
    pool, free = trio.open_memory_channel[Connection](load.sessions)
    for index in range(load.sessions):
        await pool.send(await open_session(load, load.users[index % len(load.users)], result))
    interval = 1 / load.rate

    async def one(n: int) -> None:
        conn = await free.receive()
        try:
            await send_one(conn, load, conn.sender, n, result)
        finally:
            await pool.send(conn)

    on_start()
    began = time.perf_counter()
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        for n in range(load.messages):
            await trio.sleep_until(start + n * interval)
            nursery.start_soon(one, n)
    result.wall = time.perf_counter() - began
