"""Listeners behind a load balancer: PROXY v1 and v2 over real sockets."""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
import trustme

from gateway.config import parse
from gateway.server.app import Running, serve
from gateway.smtp import TlsMode
from gateway.upstream import Upstream

from ..upstream.natsproc import direct_get, stream_info
from .conftest import PASSWORD, gateway_config
from .harness import Client, plain_auth

Tcp = Callable[[int], Awaitable[Client]]


async def start(
    tmp_path: Path, ca: trustme.CA, nursery: trio.Nursery, **listener: object
) -> Running:
    document = gateway_config(
        tmp_path,
        ca,
        listener=[
            {
                "address": "127.0.0.1:0",
                "tls": "none",
                "allow_plaintext_auth": True,
                "proxy_protocol": True,
                **listener,
            }
        ],
        limits={"proxy_timeout": 1},
    )
    running: Running = await nursery.start(serve, parse(document, tmp_path))
    return running


def v2_tcp4(source: str, port: int) -> bytes:
    body = (
        socket.inet_pton(socket.AF_INET, source)
        + socket.inet_pton(socket.AF_INET, "10.0.0.1")
        + struct.pack("!HH", port, 25)
    )
    return b"\r\n\r\n\x00\r\nQUIT\n" + struct.pack("!BBH", 0x21, 0x11, len(body)) + body


async def deliver(client: Client, body: bytes = b"hi") -> None:
    assert (await client.reply()).code == 220
    await client.command(b"EHLO c")
    assert (await client.command(plain_auth("alice", PASSWORD))).code == 235
    await client.command(b"MAIL FROM:<alice@example.com>")
    await client.command(b"RCPT TO:<bob@example.net>")
    await client.command(b"DATA")
    reply = await client.command(b"From: alice@example.com\r\n\r\n" + body + b"\r\n.")
    assert reply.code == 250


async def stored_client(running: Running) -> str | None:
    upstream = running.gateway.upstream
    assert isinstance(upstream, Upstream)
    seq = (await stream_info(upstream.client))["state"]["last_seq"]
    msg = await direct_get(upstream.client, seq)
    received = msg.payload.split(b"\r\n", 1)[0]
    assert received.startswith(b"Received: from c ([")
    return msg.header("Gateway-Client")  # type: ignore[no-any-return]


async def test_v1_and_v2_carry_the_real_client_address(
    tmp_path: Path, ca: trustme.CA, nursery: trio.Nursery, tcp: Tcp
) -> None:
    running = await start(tmp_path, ca, nursery)
    port = running.port(TlsMode.NONE)
    client = await tcp(port)
    await client.send(b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 25\r\n")
    await deliver(client)
    assert await stored_client(running) == "192.0.2.7:40000"
    client = await tcp(port)
    await client.send(v2_tcp4("198.51.100.9", 51000))
    await deliver(client, b"another message")
    assert await stored_client(running) == "198.51.100.9:51000"


async def test_a_header_sent_with_the_first_command_is_split_correctly(
    tmp_path: Path, ca: trustme.CA, nursery: trio.Nursery, tcp: Tcp
) -> None:
    running = await start(tmp_path, ca, nursery)
    client = await tcp(running.port(TlsMode.NONE))
    await client.send(b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 25\r\nNOOP\r\n")
    assert (await client.reply()).code == 220
    assert (await client.reply()).code == 250


async def test_bad_missing_slow_or_untrusted_headers_close_without_a_reply(
    tmp_path: Path, ca: trustme.CA, nursery: trio.Nursery, tcp: Tcp
) -> None:
    running = await start(tmp_path, ca, nursery)
    port = running.port(TlsMode.NONE)
    for opening in (
        b"EHLO c\r\n",
        b"PROXY TCP4 nonsense\r\n",
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x12\x00\x00",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 25",
    ):  # the last never ends: too slow
        client = await tcp(port)
        await client.send(opening)
        with trio.fail_after(5):
            assert await client.closed()
        assert not client._buf, "no greeting, no reply of any kind"
    untrusted = await start(tmp_path / "u", ca, nursery, trusted_proxies=["10.0.0.0/8"])
    client = await tcp(untrusted.port(TlsMode.NONE))
    await client.send(b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 25\r\n")
    with trio.fail_after(5):
        assert await client.closed()
    assert not client._buf


async def test_local_command_is_the_balancer_itself_served_quietly(
    tmp_path: Path, ca: trustme.CA, nursery: trio.Nursery, tcp: Tcp
) -> None:
    running = await start(tmp_path, ca, nursery)
    client = await tcp(running.port(TlsMode.NONE))
    await client.send(b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00")  # v2 LOCAL, as HAProxy checks
    assert (await client.reply()).code == 220
    assert (await client.command(b"QUIT")).code == 221
