"""A load generator for SMTP submission servers: raw sockets, every reply checked.

    python bench/loadgen.py --host gw.example --port 587 --password ... --users u1,u2 \\
        [--sessions 50] [--messages 40] [--size 2048] [--attachment 0] [--recipients 1] \\
        [--reconnect-every 0] [--rate 0] [--no-pipelining] [--auth PLAIN|LOGIN] \\
        [--starttls [--cafile ca.pem]] [--storm N] [--engine epoll|trio]

Closed loop (each session sends its next message when the last is answered) or open loop
(`--rate`: messages started at a fixed rate over a pool of sessions, for latency). Sessions are
spread over the users so the per-user connection limit does not trip unless asked; `--storm N`
asks: N connections of the first user at once, and counts who got in and who got 421.
User i sends from <user>@bench.example unless `--domain` says otherwise.

A closed loop on plain TCP runs on one epoll loop in a thread (see _EpollLoad), the cheapest
way here to keep the generator from setting the pace; STARTTLS, the open loop and the storm run
on Trio, as `--engine trio` makes any load do.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import errno
import math
import os
import select
import socket
import ssl
import time
from collections.abc import Callable, Generator
from typing import Any

import attrs
import trio


@attrs.define
class Load:
    port: int
    password: str
    users: list[str]  # user i sends from <user>@<domain>
    sessions: int = 50
    messages: int = 40  # per session (closed loop) or in all (open loop)
    size: int = 2048  # octets of message
    attachment: int = 0  # decoded octets of a base64 attachment within `size` (0: plain text)
    recipients: int = 1
    reconnect_every: int = 0  # messages per connection; 0: one connection per session
    pipelining: bool = True
    rate: float = 0.0  # messages per second in all: > 0 for the open loop
    host: str = "127.0.0.1"
    auth: str = "PLAIN"  # or "LOGIN"
    starttls: bool = False
    tls_context: ssl.SSLContext | None = None  # for STARTTLS; None: no certificate check
    domain: str = "bench.example"
    # Sessions logging in at once: asyncio servers listen with a backlog of 100, and a
    # connection dropped from a full accept queue hangs until a timeout.
    opening: int = 50
    # Seconds for a login or one message: a stuck load ends, and counts as failures.
    reply_timeout: float = 60.0
    # What drives a closed-loop load on plain TCP: "epoll" (one loop in a thread, the cheaper)
    # or "trio" (as STARTTLS, the open loop and the storm always are).
    engine: str = "epoll"


@attrs.define
class Result:
    accepted: int = 0
    failed: int = 0
    connections: int = 0
    latencies: list[float] = attrs.field(factory=list)  # seconds from MAIL to the 250
    wall: float = 0.0
    errors: dict[str, int] = attrs.field(factory=dict)  # what failed, counted

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def fail(self, what: str) -> None:
        self.failed += 1
        self.errors[what] = self.errors.get(what, 0) + 1


# What a session can run into and be counted for, instead of ending the run.
FAILURES = (OSError, ConnectionError, trio.BrokenResourceError, trio.TooSlowError)

_BODIES: dict[tuple[int, int], bytes] = {}


def _body(size: int, attachment: int, head_len: int) -> bytes:
    """The part of a message after its header, cached: the generator must stay cheap."""
    key = (size - head_len, attachment)
    if key not in _BODIES:
        line = b"x" * 76 + b"\r\n"
        if not attachment:
            _BODIES[key] = line * max(0, key[0] // len(line))
        else:
            b64 = base64.b64encode(
                bytes(range(256)) * (attachment // 256) + bytes(attachment % 256)
            )
            encoded = b"".join(b64[i : i + 76] + b"\r\n" for i in range(0, len(b64), 76))
            room = key[0] - len(encoded) - 300
            _BODIES[key] = (
                b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
                b"--b\r\nContent-Type: text/plain\r\n\r\n"
                + line
                * max(1, room // len(line))
                + b"--b\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Transfer-Encoding: base64\r\n"
                b'Content-Disposition: attachment; filename="a.bin"\r\n\r\n'
                + encoded
                + b"--b--\r\n"
            )
    return _BODIES[key]


def message(n: int, size: int, sender: str, attachment: int = 0) -> bytes:
    """A distinct message (the queue deduplicates identical ones) of about `size` octets."""
    head = f"From: {sender}\r\nSubject: bench {n}\r\nMessage-Number: {n}\r\n".encode()
    body = _body(size, attachment, len(head))
    # Plain text needs the blank line; the multipart body starts with its MIME header lines.
    return head + (body if attachment else b"\r\n" + body)


class Connection:
    """One client connection. On plain TCP the bytes go through the socket itself, and the
    generator waits only when the socket has nothing to read or no room: trio's stream layer
    costs checkpoints, a conflict check and a cancel scope per call, and made this generator
    cost more per churned connection than the server it measured. After STARTTLS they go
    through trio's SSLStream."""

    def __init__(self, sock: socket.socket, sender: str) -> None:
        self.sock = sock
        self.tls: trio.SSLStream[trio.SocketStream] | None = None
        self.sender = sender  # the authenticated user's address
        self.buf = bytearray()

    async def send(self, data: bytes) -> None:
        if self.tls is not None:
            await self.tls.send_all(data)
            return
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)
                continue
            view = view[sent:]

    async def _receive(self) -> bytes:
        if self.tls is not None:
            return bytes(await self.tls.receive_some(65536))
        while True:
            try:
                return self.sock.recv(65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)

    async def reply(self) -> int:
        """The code of the next complete reply (multi-line replies read to their end)."""
        return (await self.reply_line())[0]

    async def reply_line(self) -> tuple[int, bytes]:
        while True:
            end = self.buf.find(b"\r\n")
            while end >= 0:
                line = bytes(self.buf[: end + 2])
                del self.buf[: end + 2]
                if line[3:4] == b" ":
                    return int(line[:3]), line
                end = self.buf.find(b"\r\n")
            data = await self._receive()
            if not data:
                raise ConnectionError("server closed the connection")
            self.buf += data

    async def command(self, line: bytes) -> tuple[int, bytes]:
        await self.send(line + b"\r\n")
        return await self.reply_line()

    async def start_tls(self, context: ssl.SSLContext, host: str) -> None:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(self.sock))
        self.tls = trio.SSLStream(stream, context, server_hostname=host)
        await self.tls.do_handshake()

    async def close(self) -> None:
        with contextlib.suppress(*FAILURES):
            await self.send(b"QUIT\r\n")
        if self.tls is not None:
            await trio.aclose_forcefully(self.tls)
        else:
            self.sock.close()


_ADDRESSES: dict[tuple[str, int], list[tuple[Any, ...]]] = {}


async def connect(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket (the name looked up once per host and port)."""
    key = (host, port)
    if key not in _ADDRESSES:
        _ADDRESSES[key] = [
            (family, address)
            for family, _, _, _, address in await trio.socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        ]
    error: OSError = OSError(f"no address for {host}")
    for family, address in _ADDRESSES[key]:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex(address)
            if code in (errno.EINPROGRESS, errno.EAGAIN):
                await trio.lowlevel.wait_writable(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, f"connect to {host}:{port}: {os.strerror(code)}")
            return sock
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            error = exc
    raise error


def _tls_context(load: Load) -> ssl.SSLContext:
    if load.tls_context is None:
        # Made once: loading the system's CA store costs tens of milliseconds.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # a benchmark measures; tests check certificates
        load.tls_context = context
    return load.tls_context


class AuthRefused(ConnectionError):
    def __init__(self, code: int, line: bytes) -> None:
        super().__init__(f"AUTH answered {line.decode(errors='replace').strip()}")
        self.code = code
        self.line = line


async def open_session(
    load: Load, user: str, result: Result, limiter: trio.CapacityLimiter | None = None
) -> Connection:
    """Connect, EHLO, STARTTLS if asked (then EHLO again), and authenticate."""
    if limiter is not None:
        async with limiter:
            return await open_session(load, user, result)
    with trio.fail_after(load.reply_timeout):
        sock = await connect(load.host, load.port)
    conn = Connection(sock, f"{user}@{load.domain}")
    result.connections += 1
    try:
        with trio.fail_after(load.reply_timeout):
            await _log_in(conn, load, user)
    except BaseException:
        if conn.tls is not None:
            await trio.aclose_forcefully(conn.tls)
        else:
            sock.close()
        raise
    return conn


async def _log_in(conn: Connection, load: Load, user: str) -> None:
    """Greeting, EHLO, STARTTLS if asked (then EHLO again), AUTH."""
    if (code := await conn.reply()) != 220:
        raise ConnectionError(f"greeting {code}")
    if (code := (await conn.command(b"EHLO bench.client"))[0]) != 250:
        raise ConnectionError(f"EHLO answered {code}")
    if load.starttls:
        if (code := (await conn.command(b"STARTTLS"))[0]) != 220:
            raise ConnectionError(f"STARTTLS answered {code}")
        await conn.start_tls(_tls_context(load), load.host)
        if (code := (await conn.command(b"EHLO bench.client"))[0]) != 250:
            raise ConnectionError(f"EHLO after STARTTLS answered {code}")
    first, second = _auth_lines(load, user)
    code, line = await conn.command(first)
    if code == 334 and second:
        code, line = await conn.command(second)
    if code != 235:
        raise AuthRefused(code, line)


def _auth_lines(load: Load, user: str) -> tuple[bytes, bytes]:
    """The AUTH command, and the line that answers its 334 (AUTH LOGIN's password) or b""."""
    if load.auth == "LOGIN":
        return (
            b"AUTH LOGIN " + base64.b64encode(user.encode()),
            base64.b64encode(load.password.encode()),
        )
    return b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{load.password}".encode()), b""


_ENVELOPES: dict[tuple[str, int], bytes] = {}


def _envelope(sender: str, recipients: int) -> bytes:
    """MAIL FROM and the RCPT TO lines, without DATA."""
    envelope = _ENVELOPES.get((sender, recipients))
    if envelope is None:
        rcpts = "".join(f"RCPT TO:<r{i}@example.net>\r\n" for i in range(recipients))
        envelope = _ENVELOPES[sender, recipients] = f"MAIL FROM:<{sender}>\r\n{rcpts}".encode()
    return envelope


def _envelope_failed(codes: list[int]) -> bool:
    return codes[0] != 250 or codes[-1] != 354 or any(c != 250 for c in codes[1:-1])


async def send_one(conn: Connection, load: Load, sender: str, n: int, result: Result) -> None:
    """One message; a refusal counts as a failure, and so does a transaction that takes more
    than load.reply_timeout."""
    envelope = _envelope(sender, load.recipients)
    data = message(n, load.size, sender, load.attachment) + b".\r\n"
    start = time.perf_counter()
    with trio.fail_after(load.reply_timeout):
        if load.pipelining:
            await conn.send(envelope + b"DATA\r\n")
            codes = [await conn.reply() for _ in range(2 + load.recipients)]
        else:
            codes = []
            for line in [*envelope.split(b"\r\n")[:-1], b"DATA"]:
                codes.append((await conn.command(line))[0])
        if _envelope_failed(codes):
            result.fail(f"envelope answered {codes}")
            if codes[-1] == 354:
                await conn.send(b".\r\n")
                await conn.reply()
            return
        await conn.send(data)
        code = await conn.reply()
    if code == 250:
        result.accepted += 1
        result.latencies.append(time.perf_counter() - start)
    else:
        result.fail(f"message answered {code}")


async def closed_loop_session(
    load: Load,
    index: int,
    result: Result,
    ready: trio.MemorySendChannel[None],
    go: trio.Event,
    limiter: trio.CapacityLimiter,
) -> None:
    """One session: log in, say so, wait for the start, send its messages; a failure counts."""
    user = load.users[index % len(load.users)]
    sender = f"{user}@{load.domain}"
    try:
        conn: Connection | None = await open_session(load, user, result, limiter)
        sent_here = 0
        await ready.send(None)
        await go.wait()
        for k in range(load.messages):
            if conn is None or (load.reconnect_every and sent_here >= load.reconnect_every):
                if conn is not None:
                    await conn.close()
                conn = await open_session(load, user, result, limiter)
                sent_here = 0
            await send_one(conn, load, sender, index * 1_000_000 + k, result)
            sent_here += 1
        if conn is not None:
            await conn.close()
    except FAILURES as exc:
        result.fail(type(exc).__name__ + ": " + str(exc)[:60])
        if not go.is_set():
            await ready.send(None)


# --- closed loop on plain TCP: one epoll loop, no trio ---------------------------------------
#
# With trio, every reply the generator waited for cost a task switch, an epoll registration
# and a cancel scope: 200-240 us of CPU per churned connection, on the core it shares with the
# gateway's nats-server, which made it the pace-setter there. Here each session is a generator
# that yields what to send and how many replies to wait for, and one epoll loop in a thread
# drives them all: the same steps, checks and counts as the trio sessions above.

_CONNECT = "connect"  # requests a session script yields besides (data, replies wanted)
_LOGGED_IN = "logged in"
_READY = "ready"
_QUIT = "quit"

_Replies = list[tuple[int, bytes]]
# A script yields a request (one of the above, or (data, replies wanted)) and is sent the
# replies, or None for the other requests.
_Script = Generator[Any, Any, None]


class _Session:
    __slots__ = ("buf", "deadline", "in_login", "out", "script", "sock", "wanted", "writing")

    def __init__(self) -> None:
        self.script: _Script | None = None
        self.sock: socket.socket | None = None
        self.buf = bytearray()
        self.out: memoryview | None = None  # what the socket did not take yet
        self.writing = False  # waiting for room to send `out` (EPOLLOUT)
        self.wanted = 0  # replies waited for; -1 while connecting
        self.deadline = math.inf  # time.monotonic()
        self.in_login = False  # holding one of load.opening


def _login_script(load: Load, user: str, session: _Session) -> _Script:
    yield _CONNECT  # the engine times the connect itself
    session.deadline = time.monotonic() + load.reply_timeout
    [(code, _)] = yield (b"", 1)
    if code != 220:
        raise ConnectionError(f"greeting {code}")
    [(code, _)] = yield (b"EHLO bench.client\r\n", 1)
    if code != 250:
        raise ConnectionError(f"EHLO answered {code}")
    first, second = _auth_lines(load, user)
    [(code, line)] = yield (first + b"\r\n", 1)
    if code == 334 and second:
        [(code, line)] = yield (second + b"\r\n", 1)
    if code != 235:
        raise AuthRefused(code, line)
    yield _LOGGED_IN


def _message_script(load: Load, sender: str, n: int, result: Result, session: _Session) -> _Script:
    envelope = _envelope(sender, load.recipients)
    data = message(n, load.size, sender, load.attachment) + b".\r\n"
    start = time.perf_counter()
    session.deadline = time.monotonic() + load.reply_timeout
    if load.pipelining:
        replies = yield (envelope + b"DATA\r\n", 2 + load.recipients)
        codes = [code for code, _ in replies]
    else:
        codes = []
        for line in [*envelope.split(b"\r\n")[:-1], b"DATA"]:
            [(code, _)] = yield (line + b"\r\n", 1)
            codes.append(code)
    if _envelope_failed(codes):
        result.fail(f"envelope answered {codes}")
        if codes[-1] == 354:
            yield (b".\r\n", 1)
        return
    [(code, _)] = yield (data, 1)
    if code == 250:
        result.accepted += 1
        result.latencies.append(time.perf_counter() - start)
    else:
        result.fail(f"message answered {code}")


def _session_script(load: Load, index: int, result: Result, session: _Session) -> _Script:
    """closed_loop_session's steps; a failure is counted and ends the session."""
    user = load.users[index % len(load.users)]
    sender = f"{user}@{load.domain}"
    try:
        yield from _login_script(load, user, session)
        yield _READY
        sent_here = 0
        for k in range(load.messages):
            if load.reconnect_every and sent_here >= load.reconnect_every:
                yield _QUIT
                yield from _login_script(load, user, session)
                sent_here = 0
            yield from _message_script(load, sender, index * 1_000_000 + k, result, session)
            sent_here += 1
        yield _QUIT
    except FAILURES as exc:
        result.fail(type(exc).__name__ + ": " + str(exc)[:60])


class _EpollLoad:
    """Runs a closed-loop load on plain TCP (see above). Call run() in a thread of its own."""

    def __init__(self, load: Load, result: Result, on_start: Callable[[], None]) -> None:
        self.load = load
        self.result = result
        self.on_start = on_start
        self.epoll = select.epoll()
        self.by_fd: dict[int, _Session] = {}
        self.opening = 0  # sessions between connect and logged in
        self.to_open: collections.deque[_Session] = collections.deque()
        self.parked: list[_Session] = []  # logged in, waiting for the start
        self.ready = 0  # sessions logged in for the start, or ended before it
        self.started = False
        self.stopped = False  # set from outside: end now
        self.live = 0
        self.start = 0.0
        self.addresses: list[tuple[Any, ...]] = []
        self.lookup_error: OSError | None = None  # each connect fails with it, as on trio

    def run(self) -> None:
        try:  # in this thread: a lookup may wait on the network
            self.addresses = [
                (family, address)
                for family, _, _, _, address in socket.getaddrinfo(
                    self.load.host, self.load.port, type=socket.SOCK_STREAM
                )
            ]
        except OSError as exc:
            self.lookup_error = exc
        try:
            sessions = [_Session() for _ in range(self.load.sessions)]
            self.live = len(sessions)
            for index, session in enumerate(sessions):
                session.script = _session_script(self.load, index, self.result, session)
                self._advance(session, None)
            self._loop()
        finally:
            for session in list(self.by_fd.values()):
                self._close(session, polite=False)
            self.epoll.close()
        self.result.wall = time.perf_counter() - self.start

    def _loop(self) -> None:
        check_at = 0.0
        while self.live and not self.stopped:
            for fd, mask in self.epoll.poll(0.05):
                session = self.by_fd.get(fd)
                if session is not None:
                    self._on_event(session, mask)
            now = time.monotonic()
            if now >= check_at:
                check_at = now + 0.05
                for session in list(self.by_fd.values()):
                    if session.deadline <= now:
                        self._advance(session, None, trio.TooSlowError())

    def _on_event(self, session: _Session, mask: int) -> None:
        sock = session.sock
        assert sock is not None
        if session.wanted == -1:  # connecting
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._advance(session, None, self._connect_error(code))
                return
            session.wanted = 0
            self.result.connections += 1
            self.epoll.modify(sock.fileno(), select.EPOLLIN)
            self._advance(session, None)
            return
        if mask & select.EPOLLOUT and session.out is not None:
            try:
                self._send_pending(session)
            except OSError as exc:
                self._advance(session, None, exc)
                return
        if mask & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                data = None
            except OSError as exc:
                self._advance(session, None, exc)
                return
            if data == b"":
                self._advance(session, None, ConnectionError("server closed the connection"))
                return
            if data:
                session.buf += data
        replies = self._replies(session)
        if replies is not None:
            self._advance(session, replies)

    @staticmethod
    def _replies(session: _Session) -> _Replies | None:
        """The replies waited for, once all have come (multi-line ones read to their end) and
        the request is all sent: as on trio, a reply that comes early waits for the sending."""
        wanted = session.wanted
        if wanted <= 0 or session.out is not None:
            return None
        buf = session.buf
        replies: _Replies = []
        pos = 0
        while len(replies) < wanted:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            if buf[pos + 3 : pos + 4] == b" ":
                replies.append((int(buf[pos : pos + 3]), bytes(buf[pos : end + 2])))
            pos = end + 2
        del buf[:pos]
        session.wanted = 0
        return replies

    def _advance(
        self, session: _Session, value: _Replies | None, error: BaseException | None = None
    ) -> None:
        """Resume the session's script, and do what it asks until it waits for something."""
        script = session.script
        if script is None:  # ended already
            return
        while True:
            try:
                request = script.send(value) if error is None else script.throw(error)
            except StopIteration:
                self._end(session)
                return
            value = error = None
            if isinstance(request, tuple):
                data, session.wanted = request
                try:
                    if data:
                        self._send(session, data)
                except OSError as exc:
                    error = exc
                    continue
                value = self._replies(session)
                if value is None:
                    return
            elif request == _CONNECT:
                if self.opening >= self.load.opening:
                    session.deadline = math.inf
                    self.to_open.append(session)
                else:
                    self._open(session)
                return
            elif request == _LOGGED_IN:
                self._release_opening(session)
            elif request == _READY:
                session.deadline = math.inf
                self.parked.append(session)
                self.ready += 1
                self._start_if_all_ready()
                return
            elif request == _QUIT:
                self._close(session, polite=True)

    def _open(self, session: _Session) -> None:
        """Take one of load.opening for the session and connect it; it goes on from there."""
        self.opening += 1
        session.in_login = True
        try:
            self._connect(session)
        except OSError as exc:
            self._advance(session, None, exc)
            return
        if session.wanted != -1:  # connected at once
            self._advance(session, None)

    def _connect(self, session: _Session) -> None:
        """A non-blocking connect: session.wanted is -1 until it completes."""
        session.deadline = time.monotonic() + self.load.reply_timeout
        session.buf.clear()
        error = self.lookup_error or OSError(f"no address for {self.load.host}")
        for family, address in self.addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex(address)
            if code in (0, errno.EINPROGRESS, errno.EAGAIN):
                session.sock = sock
                self.by_fd[sock.fileno()] = session
                session.wanted = -1 if code else 0
                if not code:
                    self.result.connections += 1
                self.epoll.register(sock.fileno(), select.EPOLLOUT if code else select.EPOLLIN)
                return
            sock.close()
            error = self._connect_error(code)
        raise error

    def _connect_error(self, code: int) -> OSError:
        """As connect() words it."""
        return OSError(code, f"connect to {self.load.host}:{self.load.port}: {os.strerror(code)}")

    def _send(self, session: _Session, data: bytes) -> None:
        assert session.out is None, "a request sent before the last one left"
        session.out = memoryview(data)
        self._send_pending(session)

    def _send_pending(self, session: _Session) -> None:
        """Send what the socket takes; wait for room (EPOLLOUT) only when it took not all."""
        sock, out = session.sock, session.out
        assert sock is not None and out is not None
        while out:
            try:
                sent = sock.send(out)
            except BlockingIOError:
                if not session.writing:
                    session.writing = True
                    self.epoll.modify(sock.fileno(), select.EPOLLIN | select.EPOLLOUT)
                session.out = out
                return
            out = out[sent:]
        session.out = None
        if session.writing:
            session.writing = False
            self.epoll.modify(sock.fileno(), select.EPOLLIN)

    def _close(self, session: _Session, *, polite: bool) -> None:
        sock, session.sock = session.sock, None
        session.out = None
        session.writing = False
        session.wanted = 0
        if sock is None:
            return
        if polite:
            with contextlib.suppress(OSError):
                sock.send(b"QUIT\r\n")
        self.by_fd.pop(sock.fileno(), None)
        with contextlib.suppress(OSError):
            self.epoll.unregister(sock.fileno())
        sock.close()

    def _release_opening(self, session: _Session) -> None:
        if not session.in_login:
            return
        session.in_login = False
        self.opening -= 1
        if self.to_open:
            self._open(self.to_open.popleft())

    def _end(self, session: _Session) -> None:
        session.script = None
        self._close(session, polite=False)
        self._release_opening(session)
        self.live -= 1
        if not self.started:
            if session in self.parked:  # counted in when it logged in
                self.parked.remove(session)
            else:
                self.ready += 1
            self._start_if_all_ready()

    def _start_if_all_ready(self) -> None:
        if self.started or self.ready < self.load.sessions:
            return
        self.started = True
        self.on_start()
        self.start = time.perf_counter()
        parked, self.parked = self.parked, []
        for session in parked:
            self._advance(session, None)


async def run(load: Load, on_start: Callable[[], None] = lambda: None) -> Result:
    """Run the load; every failure is counted, none raises. Every session logs in first;
    the clock (and `on_start`, for the server's CPU) starts when all have."""
    result = Result()
    if load.rate > 0:
        await _open_loop(load, result, on_start)
        return result
    if load.engine not in ("epoll", "trio"):
        raise ValueError(f"engine must be epoll or trio, not {load.engine!r}")
    if load.engine == "epoll" and not load.starttls:
        engine = _EpollLoad(load, result, on_start)
        try:
            await trio.to_thread.run_sync(engine.run, abandon_on_cancel=True)
        finally:
            engine.stopped = True  # if abandoned, it stops at its next look (within 50 ms)
        return result
    go = trio.Event()
    ready, logged_in = trio.open_memory_channel[None](load.sessions)
    limiter = trio.CapacityLimiter(load.opening)
    async with trio.open_nursery() as nursery:
        for index in range(load.sessions):
            nursery.start_soon(closed_loop_session, load, index, result, ready, go, limiter)
        for _ in range(load.sessions):
            await logged_in.receive()
        on_start()
        start = time.perf_counter()
        go.set()
    result.wall = time.perf_counter() - start
    return result


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
        except FAILURES as exc:
            result.fail(type(exc).__name__)
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
    for _ in range(load.sessions):
        await (await free.receive()).close()


@attrs.define
class StormResult:
    attempts: int = 0
    admitted: int = 0  # 235: logged in and holding a connection
    refused_limit: int = 0  # 421 4.7.0 ...: the per-user limit
    other: dict[str, int] = attrs.field(factory=dict)
    refusal_latencies: list[float] = attrs.field(factory=list)  # connect to 421, seconds
    wall: float = 0.0


async def storm(load: Load, attempts: int) -> StormResult:
    """`attempts` connections of load.users[0] at once, each holding on once admitted, until
    every attempt is answered; then all close."""
    result = StormResult(attempts=attempts)
    counts = Result()
    held: list[Connection] = []
    user = load.users[0]

    async def attempt() -> None:
        start = time.perf_counter()
        try:
            held.append(await open_session(load, user, counts))
            result.admitted += 1
        except AuthRefused as exc:
            if exc.code == 421 and b"4.7.0" in exc.line:
                result.refused_limit += 1
                result.refusal_latencies.append(time.perf_counter() - start)
            else:
                key = exc.line.decode(errors="replace").strip()[:40]
                result.other[key] = result.other.get(key, 0) + 1
        except FAILURES as exc:
            key = type(exc).__name__
            result.other[key] = result.other.get(key, 0) + 1

    began = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(attempts):
            nursery.start_soon(attempt)
    result.wall = time.perf_counter() - began
    for conn in held:
        await conn.close()
    return result


class StallProbe:
    """NOOP round trips on a connection of its own, one after another, while a load runs: the
    longest is how long the server kept every other session waiting."""

    def __init__(self) -> None:
        self.round_trips: list[float] = []

    async def run(self, host: str, port: int, *, task_status: trio.TaskStatus[None]) -> None:
        conn = Connection(await connect(host, port), "")
        try:
            await conn.reply()
            task_status.started()
            while True:
                start = time.perf_counter()
                await conn.command(b"NOOP")
                self.round_trips.append(time.perf_counter() - start)
        finally:
            conn.sock.close()

    @property
    def worst(self) -> float:
        return max(self.round_trips, default=math.nan)


def _arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="SMTP submission load generator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--password", required=True, help="every user's password")
    p.add_argument("--users", required=True, help="comma-separated user names")
    p.add_argument("--domain", default="bench.example", help="senders are <user>@<domain>")
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--messages", type=int, default=40)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--attachment", type=int, default=0)
    p.add_argument("--recipients", type=int, default=1)
    p.add_argument("--reconnect-every", type=int, default=0)
    p.add_argument("--rate", type=float, default=0.0)
    p.add_argument("--no-pipelining", action="store_true")
    p.add_argument("--auth", choices=("PLAIN", "LOGIN"), default="PLAIN")
    p.add_argument("--starttls", action="store_true")
    p.add_argument("--cafile", help="verify the server's certificate against this CA")
    p.add_argument("--storm", type=int, default=0, help="N connections of the first user")
    p.add_argument(
        "--engine",
        choices=("epoll", "trio"),
        default="epoll",
        help="what drives a closed loop on plain TCP (STARTTLS and --rate always use trio)",
    )
    return p.parse_args()


async def _main(args: argparse.Namespace) -> None:
    context = None
    if args.cafile:
        context = ssl.create_default_context(cafile=args.cafile)
    load = Load(
        port=args.port,
        password=args.password,
        users=args.users.split(","),
        sessions=args.sessions,
        messages=args.messages,
        size=args.size,
        attachment=args.attachment,
        recipients=args.recipients,
        reconnect_every=args.reconnect_every,
        pipelining=not args.no_pipelining,
        rate=args.rate,
        host=args.host,
        auth=args.auth,
        starttls=args.starttls,
        tls_context=context,
        domain=args.domain,
        engine=args.engine,
    )
    if args.storm:
        s = await storm(load, args.storm)
        print(
            f"storm of {s.attempts}: {s.admitted} admitted, {s.refused_limit} refused with "
            f"421 4.7.0, other {s.other}, in {s.wall:.2f} s"
        )
        return
    probe = StallProbe()
    async with trio.open_nursery() as nursery:
        await nursery.start(probe.run, args.host, args.port)
        r = await run(load)
        nursery.cancel_scope.cancel()
    print(
        f"{r.accepted} accepted, {r.failed} failed{f' {r.errors}' if r.errors else ''}, "
        f"{r.connections} "
        f"connections, {r.accepted / r.wall if r.wall else 0:.0f} msg/s, p50 "
        f"{r.percentile(50) * 1e3:.1f} ms, p99 {r.percentile(99) * 1e3:.1f} ms, worst NOOP "
        f"{probe.worst * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    trio.run(_main, _arguments())
