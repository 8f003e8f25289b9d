"""Unmasked frames to the NATS server, only when it agreed: seen on the wire through a relay.

A client masks every frame it sends (RFC 6455 §5.3), which costs the gateway a fifth of its CPU
on big messages. nats-server takes unmasked frames after a `Nats-No-Masking: true` upgrade
header, and echoes the header when it does; from then on a masked frame would be garbage to it.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trustme
import wsproto.connection
import wsproto.events

from gateway.upstream import (
    NatsClient,
    StreamSettings,
    Submission,
    SubmissionDigest,
    Upstream,
    UpstreamUnavailable,
)
from gateway.upstream import client as nats_client
from gateway.upstream.jetstream import ensure_stream

from .natsproc import NatsProcess, direct_get, started

# Sent as the message body: it appears verbatim in the client's bytes only if unmasked.
MARKER = b"unmistakable-marker-" * 50
MESSAGE = b"From: alice@example.com\r\nSubject: masks\r\n\r\n" + MARKER + b"\r\n"


class Relay:
    """A TCP relay to the NATS WebSocket port that keeps what the client sent.

    `strip_header` drops the Nats-No-Masking header from the upgrade request, as a proxy that
    does not know it would: the server then expects masked frames, as RFC 6455 says.
    """

    def __init__(self, target_port: int, *, strip_header: bool = False) -> None:
        self.target_port = target_port
        self.strip_header = strip_header
        self.from_client = bytearray()
        self.upgrade_request = b""
        self.upgrade_answer = b""
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._upstream, client, server)
            nursery.start_soon(self._downstream, server, client)

    async def _upstream(self, client: trio.SocketStream, server: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = await client.receive_some()
            if not data:
                return
            head += bytes(data)
        end = head.index(b"\r\n\r\n") + 4
        request, rest = head[:end], head[end:]
        if self.strip_header:
            request = re.sub(rb"(?im)^nats-no-masking:[^\r]*\r\n", b"", request)
        self.upgrade_request = request
        self.from_client += rest
        await server.send_all(request + rest)
        async for more in client:
            self.from_client += more
            await server.send_all(more)
        await server.send_eof()

    async def _downstream(self, server: trio.SocketStream, client: trio.SocketStream) -> None:
        async for data in server:
            if not self.upgrade_answer:
                self.upgrade_answer = bytes(data)
            await client.send_all(data)
        await client.send_eof()


@asynccontextmanager
async def upstream_through(
    relay: Relay, nursery: trio.Nursery, *, unmasked: bool = True
) -> AsyncIterator[Upstream]:
    settings = StreamSettings()

    async def check(client: NatsClient) -> None:
        await ensure_stream(client, settings)

    client = NatsClient(f"ws://127.0.0.1:{relay.port}", on_connect=check, unmasked=unmasked)
    upstream = Upstream(client, settings, 10)
    await nursery.start(client.run)
    yield upstream


def submission(message: bytes = MESSAGE) -> Submission:
    digest = SubmissionDigest("alice", "alice@example.com", ("bob@example.net",))
    digest.update(message)
    return Submission(
        "alice",
        "192.0.2.7:1",
        "alice@example.com",
        ("bob@example.net",),
        digest.msg_id(),
        digest.queue_id(),
    )


async def publish_and_read_back(upstream: Upstream) -> None:
    ack = await upstream.publish(submission(), MESSAGE)
    stored = await direct_get(upstream.client, ack.seq)
    assert stored.payload == MESSAGE


async def test_frames_go_unmasked_once_the_server_echoes_the_header(
    nats: NatsProcess, nursery: trio.Nursery
) -> None:
    relay = Relay(nats.websocket_port)
    await nursery.start(relay.serve)
    async with upstream_through(relay, nursery) as upstream:
        await publish_and_read_back(upstream)
        await publish_and_read_back(upstream)  # the connection still works afterwards
    assert b"\r\nNats-No-Masking: true\r\n" in relay.upgrade_request
    assert b"\r\nNats-No-Masking: true\r\n" in relay.upgrade_answer
    assert MARKER in relay.from_client


async def test_frames_stay_masked_when_the_header_does_not_reach_the_server(
    nats: NatsProcess, nursery: trio.Nursery
) -> None:
    relay = Relay(nats.websocket_port, strip_header=True)
    await nursery.start(relay.serve)
    async with upstream_through(relay, nursery) as upstream:
        await publish_and_read_back(upstream)
    assert b"Nats-No-Masking" not in relay.upgrade_answer
    assert relay.from_client, "the relay saw no frames"
    assert b"unmistakable" not in relay.from_client


async def test_frames_stay_masked_when_the_client_does_not_ask(
    nats: NatsProcess, nursery: trio.Nursery
) -> None:
    relay = Relay(nats.websocket_port)
    await nursery.start(relay.serve)
    async with upstream_through(relay, nursery, unmasked=False) as upstream:
        await publish_and_read_back(upstream)
    assert b"Nats-No-Masking" not in relay.upgrade_request
    assert relay.from_client, "the relay saw no frames"
    assert b"unmistakable" not in relay.from_client


def test_the_installed_wsproto_can_send_unmasked_frames() -> None:
    # If this fails, a wsproto release changed its internals: the gateway then keeps masking
    # (slower on big messages, still correct) until client._unmask is taught the new layout.
    assert nats_client.UNMASKING_WORKS


def test_a_wsproto_without_the_expected_layout_is_left_masking() -> None:
    class Unknown:
        pass

    assert not nats_client._unmask(Unknown())


def test_frame_header_is_the_one_wsproto_writes_for_an_unmasked_frame() -> None:
    for size in (0, 1, 125, 126, 127, 65535, 65536, 65537, 512 * 1024, 2**32 + 5):
        # A server's frames are unmasked: wsproto's own writer is the reference.
        server = wsproto.connection.Connection(wsproto.connection.ConnectionType.SERVER)
        payload = b"x" * min(size, 70000)
        expected = server.send(wsproto.events.BytesMessage(data=payload))
        if size == len(payload):
            assert nats_client.frame_header(size) + payload == expected, size
        else:  # too big to build: the length field alone, as wsproto encodes it
            assert nats_client.frame_header(size) == bytes((0x82, 127)) + size.to_bytes(8, "big")


@asynccontextmanager
async def wss_nats(directory: Path, ca: trustme.CA) -> AsyncIterator[NatsProcess]:
    """A nats-server whose WebSocket listener speaks TLS with a certificate from `ca`."""
    cert = ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    cert.private_key_pem.write_to_path(str(directory / "key.pem"))
    tls = (directory / "cert.pem", directory / "key.pem")
    async with started(NatsProcess(directory / "nats", websocket_tls=tls)) as server:
        yield server


async def test_over_wss_big_and_small_messages_are_stored_exactly(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The upstream over TLS, as a production NATS behind wss:// is: the frames are written
    # to the TLS stream, not the socket, and several of them make up the big message.
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))  # the default context's CAs
    async with wss_nats(tmp_path, ca) as server:
        assert server.ws_url.startswith("wss://")
        upstream = Upstream.create(server.ws_url, StreamSettings(), 30)
        await nursery.start(upstream.client.run)
        await publish_and_read_back(upstream)
        big = MESSAGE + os.urandom(3 * 1024 * 1024).hex().encode() + b"\r\n"  # 6 MiB, 12 frames
        ack = await upstream.publish(submission(big), [big[:100000], big[100000:]])
        stored = await direct_get(upstream.client, ack.seq)
        assert stored.payload == big


async def test_over_wss_an_unknown_certificate_authority_is_refused(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with wss_nats(tmp_path, trustme.CA()) as server:
        upstream = Upstream.create(server.ws_url, StreamSettings(), 30)
        # Said plainly at start-up: which check failed, not just that the stream broke.
        with pytest.raises(UpstreamUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await nursery.start(upstream.client.run)


@pytest.mark.parametrize("piece_sizes", [[0, 1, 0, 70_000, 3], [300_000] * 7, [1] * 3000])
async def test_frames_are_written_whole_and_in_order_through_a_full_socket(
    piece_sizes: list[int],
) -> None:
    """_write_all gathers pieces into writev: a socket whose buffer fills takes part of
    them, part of one, or none, and what the reader gets is still every octet in order."""
    a, b = trio.socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    pieces = [os.urandom(size) for size in piece_sizes]
    expected = b"".join(pieces)
    received = bytearray()

    async def read() -> None:
        while len(received) < len(expected):
            await trio.sleep(0.001)  # a slow reader: the writer meets a full buffer
            received.extend(await b.recv(8192))

    with a, b, trio.move_on_after(20):  # a reader short of octets waits no longer
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await nats_client._write_all(a.fileno(), pieces)
    assert bytes(received) == expected


async def test_a_write_to_a_closed_peer_is_a_broken_resource() -> None:
    a, b = trio.socket.socketpair()
    b.close()
    with a, pytest.raises(trio.BrokenResourceError):
        await nats_client._write_all(a.fileno(), [b"x" * 100_000] * 10)
