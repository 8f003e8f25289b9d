"""What a load balancer and an operator rely on: health, readiness, metrics, drain, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
import trustme
from prometheus_client.parser import text_string_to_metric_families

from gateway.server.app import Running
from gateway.smtp import TlsMode

from .conftest import PASSWORD, gateway_config, gateway_process
from .harness import Client, plain_auth

Tcp = Callable[[int], Awaitable[Client]]


async def http_get(port: int, path: str) -> tuple[int, str]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def login(tcp: Tcp, port: int) -> Client:
    client = await tcp(port)
    assert (await client.reply()).code == 220
    await client.command(b"EHLO c")
    assert (await client.command(plain_auth("alice", PASSWORD))).code == 235
    return client


async def test_health_readiness_and_metrics_that_move(running: Running, tcp: Tcp) -> None:
    assert await http_get(running.http_port, "/healthz") == (200, "ok\n")
    assert await http_get(running.http_port, "/readyz") == (200, "ready\n")
    assert (await http_get(running.http_port, "/nope"))[0] == 404
    before = samples((await http_get(running.http_port, "/metrics"))[1])
    client = await login(tcp, running.port(TlsMode.NONE))
    await client.command(b"MAIL FROM:<alice@example.com>")
    await client.command(b"RCPT TO:<bob@example.net>")
    await client.command(b"DATA")
    assert (await client.command(b"From: alice@example.com\r\n\r\nmetrics\r\n.")).code == 250
    assert (await client.command(b"MAIL FROM:<alice@example.com>")).code == 250
    await client.command(b"RCPT TO:<bob@example.net>")
    await client.command(b"DATA")
    assert (await client.command(b"To: nobody@example.net\r\n\r\nno From\r\n.")).code == 550
    after = samples((await http_get(running.http_port, "/metrics"))[1])

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert moved("smtp_gateway_messages_total", outcome="accepted", reply="250 2.0.0") == 1
    assert moved("smtp_gateway_messages_total", outcome="rejected", reply="550 5.6.0") == 1
    assert moved("smtp_gateway_auth_total", result="success") == 1
    assert moved("smtp_gateway_upstream_publish_seconds_count") == 1
    listener = next(x.address for x, _, _ in running.addresses if x.tls is TlsMode.NONE)
    assert moved("smtp_gateway_connections_total", listener=listener) == 1
    assert after[("smtp_gateway_upstream_connected", ())] == 1


async def test_drain_finishes_transactions_and_sends_idle_sessions_away(
    running: Running, tcp: Tcp
) -> None:
    port = running.port(TlsMode.NONE)
    idle = await login(tcp, port)
    busy = await login(tcp, port)
    await busy.command(b"MAIL FROM:<alice@example.com>")
    await busy.command(b"RCPT TO:<bob@example.net>")
    assert (await busy.command(b"DATA")).code == 354
    await busy.send(b"From: alice@example.com\r\n\r\nhalf way")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(running.drain)
        reply = await idle.reply()
        assert (reply.code, reply.enhanced) == (421, "4.3.2")
        assert await idle.closed()
        assert await http_get(running.http_port, "/readyz") == (503, "draining\n")
        try:
            refused = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            pass  # listener closed: what a balancer should see
        else:
            await refused.aclose()
            raise AssertionError("a new connection was accepted while draining")
        # The transaction in flight finishes, and only then is its session sent away.
        reply = await busy.command(b" and done\r\n.")
        assert (reply.code, reply.enhanced) == (250, "2.0.0")
        reply = await busy.reply()
        assert (reply.code, reply.enhanced) == (421, "4.3.2")
    assert running.gateway.open_connections == 0


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:  # gone meanwhile
        return ""


def test_sigterm_stops_the_process_cleanly_with_exit_code_0(tmp_path: Path, ca: trustme.CA) -> None:
    gateway_config(
        tmp_path,
        ca,
        listener=[{"address": "127.0.0.1:0", "tls": "none", "allow_plaintext_auth": True}],
    )
    lines = [
        'hostname = "mx.test"',
        'data_dir = "var"',
        "[users]",
        'file = "users.toml"',
        "[[listener]]",
        'address = "127.0.0.1:0"',
        'tls = "none"',
        "allow_plaintext_auth = true",
        "[http]",
        'address = "127.0.0.1:0"',
    ]
    (tmp_path / "gateway.toml").write_text("\n".join(lines) + "\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", "gateway.toml"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if "gateway.ready" in line:
            break
    else:
        raise AssertionError("the gateway did not start")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "gateway.drained" in output
    nats_pids = [
        pid
        for pid in os.listdir("/proc")
        if pid.isdigit() and "nats-server" in _cmdline(pid) and str(tmp_path) in _cmdline(pid)
    ]
    assert nats_pids == [], "the embedded nats-server outlived the gateway"


async def test_sighup_reloads_users_without_dropping_connections(
    tmp_path: Path, ca: trustme.CA
) -> None:
    gateway_config(tmp_path, ca)  # writes users.toml with alice and bob
    async with gateway_process(tmp_path) as gateway:
        port = gateway.port
        before = Client(await trio.open_tcp_stream("127.0.0.1", port))
        assert (await before.reply()).code == 220
        await before.command(b"EHLO c")
        assert (await before.command(plain_auth("carol", "new password"))).code == 535
        done = await trio.run_process(
            [
                sys.executable,
                "-m",
                "gateway",
                "users",
                "add",
                "carol",
                "--sender",
                "carol@example.com",
                "--users-file",
                str(tmp_path / "users.toml"),
            ],
            stdin=b"new password\n",
            capture_stdout=True,
        )
        assert b"carol" in done.stdout
        gateway.process.send_signal(signal.SIGHUP)
        await gateway.wait_for(b"reload.users")
        after = Client(await trio.open_tcp_stream("127.0.0.1", port))
        await after.reply()
        await after.command(b"EHLO c")
        assert (await after.command(plain_auth("carol", "new password"))).code == 235
        assert (await before.command(b"NOOP")).code == 250  # the older session is untouched
        (tmp_path / "users.toml").write_text("not [ toml")
        gateway.process.send_signal(signal.SIGHUP)
        await gateway.wait_for(b"reload.users_failed")
        third = Client(await trio.open_tcp_stream("127.0.0.1", port))
        await third.reply()
        await third.command(b"EHLO c")
        assert (await third.command(plain_auth("carol", "new password"))).code == 235
        for client in (before, after, third):
            await client.stream.aclose()
        assert await gateway.stop() == 0
