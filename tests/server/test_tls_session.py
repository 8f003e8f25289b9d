"""The TLS handshake of a session, on memory streams with a virtual clock: one that never
finishes is cut off at the idle timeout, one that fails ends only its own connection, and a
good one after them works (service.md: "a handshake that does not finish within the idle
timeout closes the connection")."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme

from gateway.auth import Authenticator, inline_verifier
from gateway.config import Listener, parse
from gateway.server.session import Gateway
from gateway.smtp import TlsMode

from .harness import USERS, Client, MemoryQueue, connect, plain_auth

IDLE = 30
IMPLICIT = Listener("127.0.0.1", 465, TlsMode.IMPLICIT)
STARTTLS = Listener("127.0.0.1", 587, TlsMode.STARTTLS)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_gateway(ca: trustme.CA) -> Gateway:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.test").configure_cert(server)
    config = parse({"hostname": "mx.test"}, Path("/nonexistent"))
    return Gateway.create(
        config, Authenticator(USERS, verifier=inline_verifier), MemoryQueue(), server
    )


def client_tls(ca: trustme.CA, stream: trio.abc.Stream) -> trio.SSLStream[trio.abc.Stream]:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return trio.SSLStream(stream, context, server_hostname="mx.test")


async def read_all(stream: trio.abc.Stream) -> bytes:
    out = b""
    while chunk := await stream.receive_some(65536):
        out += chunk
    return out


async def test_a_handshake_that_never_starts_is_cut_off_at_the_idle_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, ca: trustme.CA
) -> None:
    gateway = tls_gateway(ca)
    client = await connect(nursery, gateway, IMPLICIT)
    start = trio.current_time()
    with trio.fail_after(IDLE + 1):  # virtual time
        assert await read_all(client.stream) == b""  # closed, and not one byte sent
    assert trio.current_time() - start == IDLE
    assert gateway.open_connections == 0


async def test_a_starttls_handshake_that_never_starts_is_cut_off_at_the_idle_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, ca: trustme.CA
) -> None:
    gateway = tls_gateway(ca)
    client = await connect(nursery, gateway, STARTTLS)
    assert (await client.reply()).code == 220
    assert (await client.command(b"EHLO c")).code == 250
    assert (await client.command(b"STARTTLS")).code == 220
    start = trio.current_time()
    with trio.fail_after(IDLE + 1):
        assert await client.closed()
    assert trio.current_time() - start == IDLE


async def test_a_failed_handshake_ends_its_connection_and_the_next_one_works(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, ca: trustme.CA
) -> None:
    gateway = tls_gateway(ca)
    bad = await connect(nursery, gateway, IMPLICIT)
    await bad.send(b"EHLO plaintext.example\r\n" * 20)  # not a TLS record
    start = trio.current_time()
    with trio.fail_after(1):
        answer = await read_all(bad.stream)  # closed ...
    assert trio.current_time() == start  # ... at once, not at the idle timeout
    assert answer[:1] in (b"", b"\x15")  # at most a TLS alert record: never an SMTP reply

    plain = await connect(nursery, gateway, IMPLICIT)
    good = Client(client_tls(ca, plain.stream))
    assert (await good.reply()).code == 220
    assert (await good.command(b"EHLO c")).code == 250
    assert (await good.command(plain_auth())).code == 235
    assert (await good.command(b"QUIT")).code == 221
