"""A gateway on memory streams, for session tests on a virtual clock."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing

from gateway.auth import Authenticator, User, UserStore, hash_password, inline_verifier
from gateway.config import Config, Listener, parse
from gateway.server.session import Gateway
from gateway.smtp import TlsMode
from gateway.upstream import PubAck, Submission, UpstreamUnavailable

from ..smtp.driver import SentReply, parse_replies

PASSWORD = "correct horse"
# A cheap scrypt cost keeps the inline check fast; the code path is the real one.
USERS = UserStore(
    {
        name: User(name, hash_password(PASSWORD, n=2**4), (f"{name}@example.com",))
        for name in ("alice", "bob")
    }
)
PLAIN = Listener("127.0.0.1", 2525, TlsMode.NONE, allow_plaintext_auth=True)


def plain_auth(user: str = "alice", password: str = PASSWORD) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()) + b"\r\n"


@attrs.define(eq=False)
class MemoryQueue:
    """An in-memory queue with the upstream's interface, for tests on a virtual clock."""

    available: bool = True
    messages: list[tuple[Submission, bytes]] = attrs.field(factory=list)

    async def publish(
        self, submission: Submission, message: bytes | list[bytes], prefix: bytes = b""
    ) -> PubAck:
        if not self.available:
            raise UpstreamUnavailable("not connected")
        whole = message if isinstance(message, bytes) else b"".join(message)
        self.messages.append((submission, prefix + whole))
        return PubAck("MAIL", len(self.messages), False)


def make_gateway(queue: MemoryQueue | None = None, **limits: Any) -> Gateway:
    config: Config = parse({"hostname": "mx.test", "limits": limits}, Path("/nonexistent"))
    return Gateway.create(
        config, Authenticator(USERS, verifier=inline_verifier), queue or MemoryQueue()
    )


@attrs.define(eq=False)
class Client:
    """The client side of one memory-stream connection."""

    stream: trio.abc.Stream
    _buf: bytearray = attrs.field(factory=bytearray)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def reply(self) -> SentReply:
        """The next whole reply."""
        while True:
            replies = _complete(self._buf)
            if replies:
                first, rest = replies
                self._buf = rest
                return first
            data = await self.stream.receive_some(65536)
            assert data, f"connection closed; unread: {bytes(self._buf)!r}"
            self._buf += data

    async def command(self, line: bytes) -> SentReply:
        await self.send(line if line.endswith(b"\n") else line + b"\r\n")
        return await self.reply()

    async def closed(self) -> bool:
        """Whether the server closed the connection (after anything still unread)."""
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                return True
            self._buf += data

    async def login(self, user: str = "alice") -> None:
        assert (await self.reply()).code == 220
        assert (await self.command(b"EHLO client.test")).code == 250
        assert (await self.command(plain_auth(user))).code == 235


def _complete(buf: bytearray) -> tuple[SentReply, bytearray] | None:
    end = 0
    while True:
        nl = buf.find(b"\r\n", end)
        if nl < 0:
            return None
        line = buf[end : nl + 2]
        end = nl + 2
        if line[3:4] == b" ":
            [reply] = parse_replies(bytes(buf[:end]))
            return reply, buf[end:]


# What connect() joins client and session with: "memory" streams, or a "socket" pair, which
# the session reads and writes directly and times with the node's SocketTimers. A test module
# runs on both by setting this (see test_session_timers.py).
TRANSPORT = "memory"
CLIENT_SOCKETS: list[trio.SocketStream] = []  # socket clients connect() made, for the test to close


def socket_stream_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def connect(
    nursery: trio.Nursery,
    gateway: Gateway,
    listener: Listener = PLAIN,
    client_address: str = "192.0.2.1:40000",
) -> Client:
    client: trio.abc.Stream
    server: trio.abc.Stream
    if TRANSPORT == "socket":
        client, server = socket_stream_pair()
        CLIENT_SOCKETS.append(client)
    else:
        client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(gateway.handle, server, listener, client_address)
    return Client(client)
