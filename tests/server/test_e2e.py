"""The gateway over real sockets, with real clients and the real embedded nats-server."""

from __future__ import annotations

import os
import shutil
import smtplib
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme

from gateway.config import parse
from gateway.server.app import Running, serve
from gateway.smtp import TlsMode
from gateway.upstream import NatsClient, Upstream

from ..upstream.natsproc import NatsProcess, direct_get, stream_info
from .conftest import PASSWORD, gateway_config
from .harness import Client, plain_auth

Tcp = Callable[[int], Awaitable[Client]]

MESSAGE = (
    b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: e2e\r\n\r\n"
    b"Hello.\r\n.a line that starts with a dot\r\n..two dots\r\n"
)


def dot_stuffed(message: bytes) -> bytes:
    """What a client sends for `message` (RFC 5321 §4.5.2)."""
    return b"\r\n".join(
        b"." + line if line.startswith(b".") else line for line in message.split(b"\r\n")
    )


def client_of(running: Running) -> NatsClient:
    upstream = running.gateway.upstream
    assert isinstance(upstream, Upstream)
    return upstream.client


async def stored(running: Running, seq: int) -> bytes:
    """The message as stored, less what the gateway prepends (checked here)."""
    payload: bytes = (await direct_get(client_of(running), seq)).payload
    assert payload.startswith(b"Received: from ")
    received_end = payload.index(b"\r\n", payload.index(b"\r\n\t") + 3)
    while payload[received_end + 2 : received_end + 3] == b"\t":  # folded lines of Received
        received_end = payload.index(b"\r\n", received_end + 2)
    rest = payload[received_end + 2 :]
    for added in (b"Date: ", b"Message-ID: <"):  # the test messages have neither
        assert rest.startswith(added), rest[:80]
        rest = rest[rest.index(b"\r\n") + 2 :]
    return rest


def send_with_smtplib(mode: TlsMode, port: int, ca: trustme.CA, message: bytes) -> Any:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    smtp: smtplib.SMTP
    if mode is TlsMode.IMPLICIT:
        smtp = smtplib.SMTP_SSL("127.0.0.1", port, context=context, timeout=30)
    else:
        smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
    with smtp:
        if mode is TlsMode.STARTTLS:
            smtp.starttls(context=context)
        smtp.login("alice", PASSWORD)
        return smtp.sendmail("alice@example.com", ["bob@example.net"], message)


@pytest.mark.parametrize("mode", list(TlsMode), ids=lambda m: m.value)
async def test_smtplib_delivers_on_every_listener_mode(
    running: Running, ca: trustme.CA, mode: TlsMode
) -> None:
    message = MESSAGE + b"sent over %s\r\n" % mode.value.encode()
    refused = await trio.to_thread.run_sync(
        send_with_smtplib, mode, running.port(mode), ca, message
    )
    assert refused == {}
    info = await stream_info(client_of(running))
    seq = info["state"]["last_seq"]
    assert await stored(running, seq) == message  # dot-stuffing removed, bytes exact


async def test_starttls_listener_refuses_auth_before_tls(running: Running, tcp: Tcp) -> None:
    client = await tcp(running.port(TlsMode.STARTTLS))
    assert (await client.reply()).code == 220
    ehlo = await client.command(b"EHLO c")
    assert "STARTTLS" in ehlo.lines
    assert not any(line.startswith("AUTH") for line in ehlo.lines)
    reply = await client.command(plain_auth("alice", PASSWORD))
    assert (reply.code, reply.enhanced) == (530, "5.7.0")


async def test_curl_with_starttls_and_auth(
    running: Running, ca: trustme.CA, tmp_path: Path
) -> None:
    assert shutil.which("curl"), "curl is needed for this test (Debian package curl)"
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "message.eml").write_bytes(MESSAGE)
    done = await trio.run_process(
        [
            "curl",
            "--silent",
            "--show-error",
            "--ssl-reqd",
            "--cacert",
            str(tmp_path / "ca.pem"),
            f"smtp://localhost:{running.port(TlsMode.STARTTLS)}",
            "--user",
            f"alice:{PASSWORD}",
            "--login-options",
            "AUTH=PLAIN",
            "--mail-from",
            "alice@example.com",
            "--mail-rcpt",
            "bob@example.net",
            "--upload-file",
            str(tmp_path / "message.eml"),
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    info = await stream_info(client_of(running))
    assert await stored(running, info["state"]["last_seq"]) == MESSAGE


async def slots_come_down_to(running: Running, user: str, count: int) -> None:
    """The server's side frees a slot when it notices the socket close: no event to wait on."""
    with trio.fail_after(10):
        while running.gateway.slots.in_use(user) != count:  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_eleven_real_connections_for_one_user(running: Running, tcp: Tcp) -> None:
    port = running.port(TlsMode.NONE)
    clients = []
    for _ in range(10):
        client = await tcp(port)
        assert (await client.reply()).code == 220
        await client.command(b"EHLO c")
        assert (await client.command(plain_auth("alice", PASSWORD))).code == 235
        clients.append(client)
    eleventh = await tcp(port)
    await eleventh.reply()
    await eleventh.command(b"EHLO c")
    reply = await eleventh.command(plain_auth("alice", PASSWORD))
    assert (reply.code, reply.enhanced) == (421, "4.7.0")
    assert await eleventh.closed()
    await clients[0].command(b"QUIT")
    await clients[0].closed()
    await clients[1].stream.aclose()  # a reset, without QUIT
    await slots_come_down_to(running, "alice", 8)
    again = await tcp(port)
    await again.reply()
    await again.command(b"EHLO c")
    assert (await again.command(plain_auth("alice", PASSWORD))).code == 235


async def test_bad_input_over_the_wire_and_the_server_keeps_serving(
    running: Running, tcp: Tcp
) -> None:
    port = running.port(TlsMode.NONE)
    # An over-long line: read to its end, 500, and the session goes on.
    client = await tcp(port)
    await client.reply()
    reply = await client.command(b"NOOP " + b"x" * 100_000)
    assert (reply.code, reply.enhanced) == (500, "5.5.2")
    assert (await client.command(b"NOOP")).code == 250
    # Random bytes: answered, then closed after too many errors.
    noisy = await tcp(port)
    await noisy.reply()
    await noisy.send(os.urandom(20_000).replace(b"\n", b"\n\x01") + b"\r\n" * 20)
    assert await noisy.closed()
    # A client that disconnects in the middle of DATA: nothing is stored, its slot comes back.
    before = (await stream_info(client_of(running)))["state"]["messages"]
    quitter = await tcp(port)
    await quitter.reply()
    await quitter.command(b"EHLO c")
    await quitter.command(plain_auth("alice", PASSWORD))
    await quitter.command(b"MAIL FROM:<alice@example.com>")
    await quitter.command(b"RCPT TO:<bob@example.net>")
    assert (await quitter.command(b"DATA")).code == 354
    await quitter.send(b"Subject: half\r\n\r\nhalf a mess")
    await quitter.stream.aclose()
    await slots_come_down_to(running, "alice", 0)
    assert (await stream_info(client_of(running)))["state"]["messages"] == before
    # And the first client was served all along.
    assert (await client.command(b"QUIT")).code == 221


async def test_upstream_down_gives_451_never_250_and_mail_flows_again_after(
    tmp_path: Path, ca: trustme.CA, nursery: trio.Nursery, tcp: Tcp
) -> None:
    nats = NatsProcess(tmp_path / "nats")
    nats.directory.mkdir()
    await nats.start()
    try:
        document = gateway_config(
            tmp_path,
            ca,
            upstream={"url": nats.ws_url},
            listener=[{"address": "127.0.0.1:0", "tls": "none", "allow_plaintext_auth": True}],
        )
        running: Running = await nursery.start(serve, parse(document, tmp_path))
        port = running.port(TlsMode.NONE)

        async def send(client: Client) -> tuple[int, str | None]:
            reply = await client.command(b"MAIL FROM:<alice@example.com>")
            if reply.code != 250:
                return reply.code, reply.enhanced
            await client.command(b"RCPT TO:<bob@example.net>")
            reply = await client.command(b"DATA")
            if reply.code != 354:
                return reply.code, reply.enhanced
            reply = await client.command(dot_stuffed(MESSAGE) + b".")
            return reply.code, reply.enhanced

        client = await tcp(port)
        await client.reply()
        await client.command(b"EHLO c")
        await client.command(plain_auth("alice", PASSWORD))
        assert await send(client) == (250, "2.0.0")
        nats.kill()
        with trio.fail_after(10):
            await client_of(running).wait_disconnected()
        assert await send(client) == (451, "4.3.0")  # at MAIL: no upload for nothing
        await nats.restart()
        with trio.fail_after(15):
            await client_of(running).wait_connected()
        other = MESSAGE + b"after the restart\r\n"
        assert (await client.command(b"MAIL FROM:<alice@example.com>")).code == 250
        await client.command(b"RCPT TO:<bob@example.net>")
        await client.command(b"DATA")
        reply = await client.command(dot_stuffed(other) + b".")
        assert (reply.code, reply.enhanced) == (250, "2.0.0")
        info = await stream_info(client_of(running))
        assert info["state"]["messages"] == 2
        assert await stored(running, info["state"]["last_seq"]) == other
    finally:
        await nats.stop()


def test_make_run_style_configuration_checks(tmp_path: Path) -> None:
    """`check-config` on a good file prints ok; on a bad one, one line per key."""
    (tmp_path / "gateway.toml").write_text(
        '[limits]\nidle_timeout = -1\nmax_recipients = "many"\n[bogus]\nx = 1\n'
        '[[listener]]\naddress = "nowhere"\ntls = "maybe"\n'
    )
    done = subprocess.run(
        ["smtp-gateway", "check-config", "--config", str(tmp_path / "gateway.toml")],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert any(line.startswith("limits.idle_timeout: ") for line in lines)
    assert any(line.startswith("limits.max_recipients: ") for line in lines)
    assert any(line.startswith("bogus: unknown key") for line in lines)
    assert any(line.startswith("listener[0].address: ") for line in lines)
    assert any(line.startswith("listener[0].tls: ") for line in lines)
    assert "Traceback" not in done.stderr


REJECTED_OVER_THE_WIRE = {
    "no From": (b"To: bob@example.net\r\nSubject: x\r\n\r\nbody\r\n", 550, "5.6.0"),
    "From not hers": (b"From: mallory@example.com\r\n\r\nbody\r\n", 550, "5.7.1"),
    "8-bit header": (
        "From: alice@example.com\r\nSubject: Grüße\r\n\r\nx\r\n".encode(),
        550,
        "5.6.0",
    ),
    "unclosed multipart": (
        b'From: alice@example.com\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n",
        550,
        "5.6.0",
    ),
    "attachment over 4 MiB": (
        b'From: alice@example.com\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="big.bin"\r\n\r\n'
        + b"".join(b"AAAA" * 19 + b"\r\n" for _ in range((4 * 1024 * 1024) // 57 + 1))
        + b"--B--\r\n",
        552,
        "5.3.4",
    ),
    "8-bit octets in quoted-printable": (
        b"From: alice@example.com\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf\xc3\xa9\r\n",
        550,
        "5.6.0",
    ),
}


@pytest.mark.parametrize(
    ("message", "code", "enhanced"),
    REJECTED_OVER_THE_WIRE.values(),
    ids=REJECTED_OVER_THE_WIRE.keys(),
)
async def test_policy_rejections_over_the_wire_store_nothing(
    running: Running, tcp: Tcp, message: bytes, code: int, enhanced: str
) -> None:
    client = await tcp(running.port(TlsMode.NONE))
    await client.reply()
    await client.command(b"EHLO c")
    await client.command(plain_auth("alice", PASSWORD))
    before = (await stream_info(client_of(running)))["state"]["messages"]
    assert (await client.command(b"MAIL FROM:<alice@example.com>")).code == 250
    assert (await client.command(b"RCPT TO:<bob@example.net>")).code == 250
    assert (await client.command(b"DATA")).code == 354
    reply = await client.command(dot_stuffed(message) + b".")
    assert (reply.code, reply.enhanced) == (code, enhanced), reply.text
    assert reply.text.split(" ", 1)[1].startswith(("Message rejected:", "Error: attachment"))
    assert (await stream_info(client_of(running)))["state"]["messages"] == before
    assert (await client.command(b"NOOP")).code == 250  # and the session goes on
