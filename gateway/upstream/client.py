"""A NATS client over WebSocket (trio-websocket): one connection at a time, reconnected with
backoff, health-checked with PING, many requests in flight, writes coalesced into frames."""

from __future__ import annotations

import heapq
import itertools
import json
import math
import os
import random
import secrets
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import outcome
import structlog
import trio
import trio_websocket
import wsproto.connection
import wsproto.events

from . import wire
from .errors import (
    MessageTooLarge,
    UpstreamConfigError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)

log = structlog.get_logger()

SECONDS = 1.0
MAX_FRAME = 64 * 1024 * 1024  # octets a frame from the server may have (trio-websocket: 1 MiB)
RECEIVE_BUFFER = 64 * 1024  # octets per read: the 4 KiB default is about 4x slower on big mail
# Octets per frame: a frame is built in one call on the event loop (and masked there, about
# 3 ms per 512 KiB, where the server wants masked frames), so this bounds the stall a big
# publish causes. 256 KiB frames cost a third of the 8 MiB throughput (bench/bench_upstream.py);
# 512 KiB ones nothing measurable.
COALESCE_LIMIT = 512 * 1024
# A request of at most this many octets goes out at once from the task that makes it, when
# the event loop has time to spare (see _Connection.prompt).
PROMPT_LIMIT = 64 * 1024
PACE_INTERVAL = 0.1 * SECONDS  # how often the event loop's busy share is looked at
PROMPT_BELOW = 0.75  # busy share under which requests go out at once
GATHER_ABOVE = 0.9  # busy share over which they are gathered into the writer's frames again
CALM_LOOKS = 3  # looks in a row under PROMPT_BELOW before requests go out at once again
PING_INTERVAL = 20 * SECONDS
MAX_PINGS_OUT = 2  # unanswered PINGs before the connection counts as dead
CONNECT_TIMEOUT = 5 * SECONDS
CLOSE_TIMEOUT = 2 * SECONDS  # trio-websocket would wait 60 s on a dead peer
BACKOFF_FIRST = 0.1 * SECONDS
BACKOFF_MAX = 5 * SECONDS
SWEEP_MAX = 0.25 * SECONDS  # the longest the deadline sweeper sleeps between looks


# nats-server (2.2 and later) reads a client's frames unmasked after this header in the
# upgrade request, and says so by echoing it in its 101 answer. Masking (RFC 6455 §5.3) guards
# proxies' caches against scripts in a browser; a server-to-server link has none of that.
NO_MASKING = (b"Nats-No-Masking", b"true")


def _unmask(connection: object) -> bool:
    """Make a wsproto connection send unmasked frames; whether that could be done.

    wsproto masks every frame a client sends and has no switch for it: its frame writer's
    `client` flag is what decides, and the frame reader keeps its own (frames from the server
    must still come unmasked).
    """
    proto = getattr(connection, "_proto", None)
    if not isinstance(getattr(proto, "client", None), bool):
        return False
    proto.client = False  # type: ignore[union-attr]
    return True


def _unmasking_works() -> bool:
    """Whether this wsproto's frames really go out unmasked after `_unmask`: tried once on a
    connection of its own, so that another wsproto never has us promise the server unmasked
    frames and then send masked ones (which it would read as garbage)."""
    connection = wsproto.connection.Connection(wsproto.connection.ConnectionType.CLIENT)
    if not _unmask(connection):
        return False
    frame = connection.send(wsproto.events.BytesMessage(data=b"probe"))
    return frame[1:] == b"\x05probe"  # length 5, no mask bit, no masking key


UNMASKING_WORKS = _unmasking_works()


def _stop_masking_if_agreed(ws: trio_websocket.WebSocketConnection) -> bool:
    """Send unmasked frames from now on if the server echoed NO_MASKING; whether it did."""
    agreed = any(
        name.lower() == NO_MASKING[0].lower() and value.strip().lower() == NO_MASKING[1]
        for name, value in ws.handshake_headers
    )
    if agreed and not _unmask(ws._wsproto.connection):
        raise AssertionError("wsproto changed between the check and its use")
    return agreed


# What ends a connection without being a bug: the client reconnects after these.
_CONNECTION_ERRORS = (
    OSError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
    wire.ProtocolError,
    UpstreamUnavailable,
    UpstreamRejected,
)


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or the exception itself."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _reason(exc: BaseException) -> str:
    """What went wrong, for people: the exception's text and its causes' (trio's
    BrokenResourceError says nothing itself; the TLS error it wraps says which certificate
    check failed)."""
    texts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(texts) < 3:
        text = str(seen)
        if text and text not in texts:
            texts.append(text)
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return ": ".join(texts) or type(exc).__name__


@attrs.frozen
class ClientStatistics:
    """A snapshot of the connection's state."""

    connected: bool
    in_flight: int  # requests awaiting their reply
    reconnects: int
    server_max_payload: int | None


class _Waiter:
    """One request awaiting its reply: the parked task, woken with the reply or an error.

    Cheaper than a trio.Event per request, which matters at thousands of publishes a second.
    """

    __slots__ = ("task", "woken")

    def __init__(self) -> None:
        self.task = trio.lowlevel.current_task()
        self.woken = False

    def wake(self, result: outcome.Outcome[wire.Msg]) -> None:
        if not self.woken:
            self.woken = True
            trio.lowlevel.reschedule(self.task, result)


def _credentials(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its user information, and the CONNECT fields that carry it."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise UpstreamConfigError(f"upstream url must be ws:// or wss://, got {url!r}")
    fields: dict[str, str] = {}
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        if parts.password is not None:
            fields = {"user": user, "pass": urllib.parse.unquote(parts.password)}
        else:
            fields = {"auth_token": user}
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        parts = parts._replace(netloc=netloc)
    return urllib.parse.urlunsplit(parts), fields


def _redacted(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url
    netloc = "***@" + parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _loop_clocks() -> tuple[float, float]:
    """The CPU time of the calling thread (the event loop's) and the monotonic clock."""
    return time.thread_time(), time.monotonic()


def next_pace(prompt: bool, calm: int, busy: float) -> tuple[bool, int]:
    """After a look found the event loop `busy` (0 to 1, a little over with the clocks'
    rounding): whether requests go out promptly, and how many looks in a row found it calm.

    Gathered at once when busy over GATHER_ABOVE. Prompt only after CALM_LOOKS looks in a row
    under PROMPT_BELOW: a loop that gathers at 90 % dips under that now and then, and each
    dip would cost a look's worth of prompt frames it has no CPU for. In between, as before:
    the CPU prompt frames cost must not flip the choice back and forth.
    """
    if busy > GATHER_ABOVE:
        return False, 0
    if busy >= PROMPT_BELOW:
        return prompt, 0
    calm += 1
    return prompt or calm >= CALM_LOOKS, calm


def frame_header(size: int) -> bytes:
    """The header of one final, unmasked binary frame of `size` octets (RFC 6455 §5.2)."""
    if size < 126:
        return bytes((0x82, size))
    if size < 1 << 16:
        return bytes((0x82, 126)) + size.to_bytes(2, "big")
    return bytes((0x82, 127)) + size.to_bytes(8, "big")


async def _write_all(fd: int, pieces: list[bytes]) -> None:
    """Write `pieces` in order to the non-blocking socket `fd`, as one stream of octets.

    Gathered by the kernel (writev), not joined first: a frame of a big message is half a
    megabyte of copy less. And no checkpoint after each write, as trio's send_all makes: while
    eight big uploads kept the event loop busy, each of those cost the publisher a round of
    every task, and an 8 MiB publish took 30 ms or more to leave. It waits only while the
    socket's buffer is full.
    """
    views = [memoryview(piece) for piece in pieces if piece]
    first = 0
    while first < len(views):
        try:
            sent = os.writev(fd, views[first : first + _IOV_MAX])
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)
            continue
        except OSError as exc:
            raise trio.BrokenResourceError(f"upstream write failed: {exc}") from exc
        while sent:
            size = len(views[first])
            if sent < size:
                views[first] = views[first][sent:]
                break
            sent -= size
            first += 1


_IOV_MAX = 1024  # buffers per writev (Linux's limit)


@attrs.define(eq=False)
class _Connection:
    """One live WebSocket connection and its writer's queue.

    Requests go out in one of two ways. Gathered: queued for the writer task, which sends
    what every task queued in a round of the event loop as one frame. That is the cheapest
    per request, and right while the gateway's CPU is what limits it. But a frame waits for
    the end of the round: when the acks of fifty publishes come in one frame, the fifty
    sessions' next publishes leave together a round later, and a server that syncs each
    message to disk before it acks (`sync_interval: always`) acks none of them until it has
    synced them all. The sessions then move in one wave, and the server idles while the
    gateway answers its clients. So, prompt: while the event loop has time to spare, a small
    request goes out as a frame of its own at once, from the task that makes it; the server
    starts on it while the gateway is still answering the others. A frame and an ack per
    request cost the gateway about 60 us more each: not worth it when the server acks fast
    and the gateway's CPU is the limit, which is when the loop is busy (see pace()).
    """

    ws: trio_websocket.WebSocketConnection
    info: dict[str, Any]
    masked: bool  # whether the frames we send are masked (see NO_MASKING)
    # The stream under `ws`, written directly when frames go unmasked: wsproto would copy a
    # frame five times on its way out: 7.4-9.3 ms of CPU per 8 MiB published, against 5-7.
    stream: trio.abc.Stream | None = None
    prompt: bool = True  # small requests go out at once (see pace())
    _outbox: list[bytes] = attrs.field(factory=list)
    _wake_writer: trio.Event = attrs.field(factory=trio.Event)
    _writing: bool = False  # the writer holds a batch it has not sent yet
    pings_out: int = 0

    @property
    def _direct(self) -> tuple[trio.socket.SocketType, trio.StrictFIFOLock] | None:
        """The TCP socket and trio-websocket's send lock, when frames go unmasked straight
        to a plain TCP socket."""
        lock = getattr(self.ws, "_stream_lock", None)
        stream = self.stream
        if self.masked or type(stream) is not trio.SocketStream:
            return None
        if not isinstance(lock, trio.StrictFIFOLock):
            return None
        return stream.socket, lock

    def write(self, pieces: list[bytes]) -> None:
        """Queue `pieces` for the writer's next frame."""
        self._outbox.extend(pieces)
        self._wake_writer.set()

    async def send(self, pieces: list[bytes], deadline: float = math.inf) -> None:
        """Send `pieces` as a frame of their own now, if prompt and they can be; else queue
        them for the writer. Waits only when the socket took part of the frame: the rest is
        sent before anything else, by this task, until `deadline` (trio time)."""
        direct = self._direct if self.prompt else None
        if direct is None or self._outbox or self._writing or self.ws.closed is not None:
            self.write(pieces)
            return
        sock, lock = direct
        size = sum(map(len, pieces))
        if size > PROMPT_LIMIT or lock.locked():
            self.write(pieces)
            return
        frame = [frame_header(size), *pieces]
        try:
            sent = os.writev(sock.fileno(), frame)
        except OSError:  # full (or broken: the writer meets that and says so)
            self.write(pieces)
            return
        if sent == size + len(frame[0]):
            return
        # Part of the frame went: the rest before any other frame, whatever happens here.
        # If it cannot be sent, nothing can follow it: the connection is closed.
        lock.acquire_nowait()
        try:
            with trio.fail_at(deadline):
                await _write_all(sock.fileno(), [b"".join(frame)[sent:]])  # 64 KiB at most
        except trio.TooSlowError:
            sock.close()
            raise UpstreamTimeout("the NATS server took no more of a request in time") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            sock.close()
            raise UpstreamUnavailable(f"connection to the NATS server lost: {exc}") from None
        except BaseException:
            sock.close()
            raise
        finally:
            lock.release()

    async def pace(
        self,
        interval: float = PACE_INTERVAL,
        clocks: Callable[[], tuple[float, float]] = _loop_clocks,
    ) -> None:
        """Keep `prompt` up to date: every `interval`, how busy the event loop was, from its
        thread's CPU time against the clock's (`clocks`: both, in seconds; see
        next_pace).

        Measured on 50 sessions, the gateway pinned to one core: churning connections
        against a server that syncs each message, gathered frames left the gateway's core
        40 % idle at 2,200 connections/s, prompt ones 20 % idle at 2,900. Without the sync,
        prompt frames made small messages cost 140 instead of 80 us of CPU each, at 5,500
        instead of 9,200 a second; gathered, the core is 91-95 % busy.
        """
        cpu, wall = clocks()
        calm = 0
        while True:
            await trio.sleep(interval)
            now_cpu, now_wall = clocks()
            busy = (now_cpu - cpu) / max(now_wall - wall, 1e-9)
            cpu, wall = now_cpu, now_wall
            self.prompt, calm = next_pace(self.prompt, calm, busy)

    async def _send_frame(self, parts: list[bytes], size: int) -> None:
        lock = getattr(self.ws, "_stream_lock", None)
        if self.masked or self.stream is None or not isinstance(lock, trio.StrictFIFOLock):
            await self.ws.send_message(b"".join(parts))
            return
        # As trio-websocket's own send: its lock keeps our frames and its control frames
        # (a pong, the close) whole, and nothing follows a close.
        if self.ws.closed is not None:
            raise trio_websocket.ConnectionClosed(self.ws.closed)
        async with lock:
            try:
                if type(self.stream) is trio.SocketStream:
                    await _write_all(self.stream.socket.fileno(), [frame_header(size), *parts])
                else:
                    await self.stream.send_all(b"".join([frame_header(size), *parts]))
            except trio.ClosedResourceError:
                raise trio.BrokenResourceError("the upstream stream was closed") from None

    async def writer(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer = trio.Event()
            while self._outbox:
                # A turn for every other task before taking the batch: the publishes the
                # sessions make in this round go out with it, in one write.
                await trio.lowlevel.checkpoint()
                batch, self._outbox = self._outbox, []
                self._writing = True  # no prompt frame may overtake these
                try:
                    await self._send_batch(batch)
                finally:
                    self._writing = False

    async def _send_batch(self, batch: list[bytes]) -> None:
        frame: list[bytes] = []
        size = 0
        for piece in batch:
            # Frames of at most COALESCE_LIMIT: each is built in one call on the
            # event loop (masked by wsproto where the server wants that: 52 ms per
            # 8 MiB here); NATS reads the frames' bytes as one stream, so an
            # operation may span frames.
            for start in range(0, len(piece), COALESCE_LIMIT) if piece else (0,):
                part = piece[start : start + COALESCE_LIMIT]
                if frame and size + len(part) > COALESCE_LIMIT:
                    await self._send_frame(frame, size)
                    frame, size = [], 0
                frame.append(part)
                size += len(part)
        if frame:
            await self._send_frame(frame, size)


@attrs.define(eq=False)
class NatsClient:
    """A NATS client that keeps one WebSocket connection open, reconnecting as needed.

    Start it with `await nursery.start(client.run)`: that returns once the first connection is
    up and `on_connect` has run, or raises why it could not be made. Afterwards the client
    reconnects by itself; requests made while it is down fail at once with UpstreamUnavailable.
    """

    url: str
    name: str = "smtp-gateway"
    # Run on every new connection before it serves requests (stream checks): an
    # UpstreamConfigError from it is fatal on the first connection, retried on later ones.
    on_connect: Callable[[NatsClient], Awaitable[None]] | None = None
    ping_interval: float = PING_INTERVAL
    connect_timeout: float = CONNECT_TIMEOUT
    # Ask the server to take unmasked frames (it says yes by echoing the header): masking
    # every octet sent is a fifth of the CPU an 8 MiB message costs the gateway.
    unmasked: bool = True
    _conn: _Connection | None = None
    _ready: bool = False
    _waiters: dict[str, _Waiter] = attrs.field(factory=dict)
    _subscriptions: dict[str, trio.MemorySendChannel[wire.Msg]] = attrs.field(factory=dict)
    _subjects: dict[str, str] = attrs.field(factory=dict)
    _inbox: str = attrs.field(factory=lambda: f"_INBOX.{secrets.token_hex(11)}")
    _tokens: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    _sids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(2))
    _reconnects: int = 0
    _connected_event: trio.Event = attrs.field(factory=trio.Event)
    _disconnected_event: trio.Event = attrs.field(factory=trio.Event)
    # (deadline, order, token, waiter) of requests with a deadline, soonest first.
    _deadlines: list[tuple[float, int, str, _Waiter]] = attrs.field(factory=list)
    _deadline_added: trio.Event = attrs.field(factory=trio.Event)

    # --- public ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._ready

    @property
    def server_info(self) -> dict[str, Any]:
        return self._conn.info if self._conn is not None else {}

    def statistics(self) -> ClientStatistics:
        max_payload = self.server_info.get("max_payload")
        return ClientStatistics(
            connected=self.connected,
            in_flight=len(self._waiters),
            reconnects=self._reconnects,
            server_max_payload=max_payload if isinstance(max_payload, int) else None,
        )

    async def wait_connected(self) -> None:
        """Return once the client is connected and ready."""
        while not self.connected:
            await self._connected_event.wait()

    async def wait_disconnected(self) -> None:
        """Return once the client has no usable connection."""
        while self.connected:
            await self._disconnected_event.wait()

    async def request(
        self,
        subject: str,
        payload: bytes | list[bytes],
        headers: wire.Headers = (),
        *,
        prefix: bytes = b"",
        ready: bool = True,
        deadline: float | None = None,
    ) -> wire.Msg:
        """Publish with a reply subject of our own and return the reply.

        Raises UpstreamUnavailable when not connected or when the connection is lost first,
        MessageTooLarge when over the server's max_payload, UpstreamRejected when nobody
        listens on the subject (status 503), UpstreamTimeout when `deadline` (trio time)
        passes first. A caller's cancel scope bounds the wait too; `deadline` exists because a
        cancel scope per publish measured a quarter of the publish path's CPU, where one heap
        entry swept by one task per connection costs next to nothing.
        """
        conn = self._conn
        if conn is None or (ready and not self._ready):
            raise UpstreamUnavailable("not connected to the NATS server")
        token = str(next(self._tokens))
        pieces = wire.pub(subject, f"{self._inbox}.{token}", payload, headers, prefix)
        size = sum(map(len, pieces[1:-1]))
        limit = conn.info.get("max_payload")
        if isinstance(limit, int) and size > limit:
            raise MessageTooLarge(
                f"message of {size} octets is over the NATS server's max_payload of {limit}"
            )
        # Sent before the reply is waited for: the send waits only while the request is not
        # yet whole on the socket, and no reply can come before it is.
        await conn.send(pieces, math.inf if deadline is None else deadline)
        if self._conn is not conn:
            raise UpstreamUnavailable("connection to the NATS server lost before the reply")
        waiter = _Waiter()
        waiters = self._waiters
        waiters[token] = waiter
        if deadline is not None:
            if not self._deadlines:
                self._deadline_added.set()
            heapq.heappush(self._deadlines, (deadline, int(token), token, waiter))

        def abort(_: object) -> trio.lowlevel.Abort:
            waiter.woken = True  # cancelled: a late reply finds nobody to wake
            waiters.pop(token, None)
            return trio.lowlevel.Abort.SUCCEEDED

        reply: wire.Msg = await trio.lowlevel.wait_task_rescheduled(abort)
        waiters.pop(token, None)
        if reply.status == 503:
            raise UpstreamRejected(
                f"no responders on {subject!r} (no stream listens there)", temporary=True, code=503
            )
        return reply

    async def request_json(self, subject: str, body: dict[str, Any] | None = None) -> Any:
        """A JetStream API call: JSON in, JSON out."""
        payload = json.dumps(body).encode() if body is not None else b""
        reply = await self.request(subject, payload, ready=False)
        try:
            return json.loads(reply.payload)
        except ValueError:
            raise UpstreamRejected(
                f"{subject}: reply is not JSON: {reply.payload[:80]!r}", temporary=True
            ) from None

    @asynccontextmanager
    async def subscribe(
        self, subject: str, buffer: int = 1000
    ) -> AsyncIterator[trio.MemoryReceiveChannel[wire.Msg]]:
        """Messages on `subject` while the block runs (re-subscribed after a reconnect)."""
        sid = str(next(self._sids))
        send, receive = trio.open_memory_channel[wire.Msg](buffer)
        self._subscriptions[sid] = send
        self._subjects[sid] = subject
        if self._conn is not None:
            self._conn.write([wire.sub(subject, sid)])
        try:
            async with receive:
                yield receive
        finally:
            del self._subscriptions[sid]
            del self._subjects[sid]
            if self._conn is not None:
                self._conn.write([wire.unsub(sid)])
            send.close()

    # --- the connection loop ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a connection up until cancelled."""
        first = True
        attempt = 0
        while True:
            fatal_seen = False
            try:
                async with self._connection() as conn:
                    if self.on_connect is not None:
                        await self.on_connect(self)
                    self._ready = True
                    self._connected_event.set()
                    self._connected_event = trio.Event()
                    log.info(
                        "upstream.connected",
                        url=_redacted(self.url),
                        server_version=conn.info.get("version"),
                        max_payload=conn.info.get("max_payload"),
                        frames_masked=conn.masked,
                    )
                    if first:
                        first = False
                        task_status.started()
                    attempt = 0
                    await trio.sleep_forever()
            except* UpstreamConfigError as group:
                fatal = _leaves(group)[0]
                fatal_seen = True
                if first:
                    raise fatal from None
                log.error("upstream.unusable", url=_redacted(self.url), reason=str(fatal))
            except* _CONNECTION_ERRORS as group:
                # Cancellation is not matched here: it goes through untouched.
                reason = "; ".join(_reason(e) for e in _leaves(group))
                if first and not fatal_seen:
                    raise UpstreamUnavailable(
                        f"cannot connect to NATS at {_redacted(self.url)}: {reason}"
                    ) from None
                log.warning("upstream.disconnected", url=_redacted(self.url), reason=reason)
            attempt += 1
            self._reconnects += 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(attempt, 16))
            await trio.sleep(delay * (0.5 + random.random() / 2))

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[_Connection]:
        url, credentials = _credentials(self.url)
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # We open and close the TCP stream ourselves: trio-websocket 0.12 leaves it open after
        # an abnormal closure (its aclose() returns early once a close reason is recorded).
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(self.connect_timeout):
                    tcp = await trio.open_tcp_stream(host, port)
                    stream = tcp
                    if parts.scheme == "wss":
                        stream = trio.SSLStream(
                            tcp, ssl.create_default_context(), server_hostname=host
                        )
                        await stream.do_handshake()
                    ws = await trio_websocket.wrap_client_stream(
                        nursery,
                        stream,
                        host,
                        resource,
                        max_message_size=MAX_FRAME,
                        message_queue_size=64,
                        receive_buffer_size=RECEIVE_BUFFER,
                        extra_headers=[NO_MASKING] if self.unmasked and UNMASKING_WORKS else None,
                    )
                    masked = not (self.unmasked and UNMASKING_WORKS and _stop_masking_if_agreed(ws))
                    parser = wire.Parser()
                    info = await self._handshake(ws, parser, credentials)
                conn = _Connection(ws, info, masked, stream)
                self._conn = conn
                # Our tasks get their own scope: stopped before the socket closes, so closing
                # it is not reported as a lost connection on top of why we close it.
                ours: list[trio.CancelScope] = []

                async def guarded(task: Callable[[], Awaitable[None]]) -> None:
                    with trio.CancelScope() as scope:
                        ours.append(scope)
                        if self._conn is conn:  # not already being torn down
                            await task()

                try:
                    conn.write([wire.sub(f"{self._inbox}.*", "1")])
                    conn.write([wire.sub(s, sid) for sid, s in self._subjects.items()])
                    nursery.start_soon(guarded, partial(self._reader, conn, parser))
                    nursery.start_soon(guarded, conn.writer)
                    nursery.start_soon(guarded, partial(self._pinger, conn))
                    nursery.start_soon(guarded, conn.pace)
                    nursery.start_soon(guarded, self._sweeper)
                    yield conn
                finally:
                    self._drop(conn, "connection to the NATS server lost before the reply")
                    for scope in ours:
                        scope.cancel()
                    # A polite close needs trio-websocket's reader, which a cancellation from
                    # outside has stopped: then the TCP close below is all there is to do.
                    if trio.current_effective_deadline() != -math.inf:
                        with trio.move_on_after(CLOSE_TIMEOUT) as scope:
                            scope.shield = True
                            await ws.aclose()
                    nursery.cancel_scope.cancel()
        finally:
            self._ready = False
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)

    async def _handshake(
        self,
        ws: trio_websocket.WebSocketConnection,
        parser: wire.Parser,
        credentials: dict[str, str],
    ) -> dict[str, Any]:
        info: dict[str, Any] | None = None
        while info is None:
            op = await self._next_op(ws, parser)
            if isinstance(op, wire.Info):
                info = op.data
            elif isinstance(op, wire.Err):
                raise UpstreamUnavailable(f"NATS server: {op.message}")
        options: dict[str, Any] = {
            "verbose": False,
            "pedantic": False,
            "echo": False,
            "headers": True,
            "no_responders": True,
            "protocol": 1,
            "lang": "python-trio",
            "version": "0.1",
            "name": self.name,
            **credentials,
        }
        if info.get("auth_required") and not credentials:
            raise UpstreamConfigError(
                "the NATS server requires authentication: put the credentials in the upstream "
                "url (ws://user:password@host:port, or ws://token@host:port)"
            )
        await ws.send_message(wire.connect(options) + wire.ping())
        while True:
            op = await self._next_op(ws, parser)
            if isinstance(op, wire.Pong):
                return info
            if isinstance(op, wire.Err):
                if "authorization" in op.message.lower() or "authentication" in op.message.lower():
                    raise UpstreamConfigError(
                        f"the NATS server refused the credentials in the upstream url: {op.message}"
                    )
                raise UpstreamUnavailable(f"NATS server refused the connection: {op.message}")
            if isinstance(op, wire.Ping):
                await ws.send_message(wire.pong())
            elif isinstance(op, wire.Info):
                info = op.data

    @staticmethod
    async def _next_op(
        ws: trio_websocket.WebSocketConnection, parser: wire.Parser
    ) -> wire.ServerOp:
        while True:
            op = parser.next_op()
            if op is not None:
                return op
            data = await ws.get_message()
            parser.feed(data if isinstance(data, bytes) else data.encode())

    async def _reader(self, conn: _Connection, parser: wire.Parser) -> None:
        prefix = self._inbox + "."
        while True:
            data = await conn.ws.get_message()
            parser.feed(data if isinstance(data, bytes) else data.encode())
            for op in parser:
                if isinstance(op, wire.Msg):
                    if op.subject.startswith(prefix):
                        waiter = self._waiters.pop(op.subject[len(prefix) :], None)
                        if waiter is not None:
                            waiter.wake(outcome.Value(op))
                    else:
                        channel = self._subscriptions.get(op.sid)
                        if channel is not None:
                            try:
                                channel.send_nowait(op)
                            except trio.WouldBlock:
                                log.warning("upstream.subscriber_slow", subject=op.subject)
                            except trio.BrokenResourceError:
                                pass
                elif isinstance(op, wire.Ping):
                    conn.write([wire.pong()])
                elif isinstance(op, wire.Pong):
                    conn.pings_out = 0
                elif isinstance(op, wire.Info):
                    conn.info = op.data
                elif isinstance(op, wire.Err):
                    log.warning("upstream.server_error", message=op.message)
                    if "permissions violation" not in op.message.lower():
                        raise UpstreamUnavailable(f"NATS server error: {op.message}")

    async def _pinger(self, conn: _Connection) -> None:
        while True:
            await trio.sleep(self.ping_interval)
            if conn.pings_out >= MAX_PINGS_OUT:
                raise UpstreamUnavailable(
                    f"NATS server did not answer {MAX_PINGS_OUT} PINGs: connection dead"
                )
            conn.pings_out += 1
            conn.write([wire.ping()])

    async def _sweeper(self) -> None:
        """Fail requests whose deadline passed."""
        heap = self._deadlines
        while True:
            if not heap:
                await self._deadline_added.wait()
                self._deadline_added = trio.Event()
                continue
            deadline, _, token, waiter = heap[0]
            now = trio.current_time()
            if deadline > now:
                # Deadlines mostly arrive in order; the cap catches one that jumps the queue.
                await trio.sleep_until(min(deadline, now + SWEEP_MAX))
                continue
            heapq.heappop(heap)
            if self._waiters.get(token) is waiter:
                del self._waiters[token]
                waiter.wake(outcome.Error(UpstreamTimeout("no reply before the deadline")))

    def _drop(self, conn: _Connection, reason: str) -> None:
        """Fail every request in flight on `conn`: its reply can no longer come."""
        if self._conn is conn:
            self._conn = None
            self._ready = False
            self._disconnected_event.set()
            self._disconnected_event = trio.Event()
        waiters, self._waiters = self._waiters, {}
        self._deadlines.clear()
        for waiter in waiters.values():
            waiter.wake(outcome.Error(UpstreamUnavailable(reason)))
