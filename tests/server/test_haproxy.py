"""A real HAProxy (send-proxy-v2, /readyz checks) in front of two gateway processes."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import trio
import trustme

from gateway.upstream import NatsClient

from ..upstream.natsproc import NatsProcess, direct_get, stream_info
from .conftest import PASSWORD, gateway_config
from .harness import Client, plain_auth


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start_gateway(directory: Path, nats_url: str) -> tuple[trio.Process, int, int]:
    directory.mkdir()  # noqa: ASYNC240 - test setup, before any concurrency
    smtp, http = free_port(), free_port()
    (directory / "gateway.toml").write_text(
        f'hostname = "{directory.name}.test"\ndata_dir = "var"\n[users]\nfile = "../users.toml"\n'
        f'[[listener]]\naddress = "127.0.0.1:{smtp}"\ntls = "none"\nallow_plaintext_auth = true\n'
        'proxy_protocol = true\ntrusted_proxies = ["127.0.0.0/8"]\n'
        f'[upstream]\nurl = "{nats_url}"\n[http]\naddress = "127.0.0.1:{http}"\n'
        '[limits]\ndrain_timeout = 30\n[log]\nformat = "json"\n'
    )
    with (directory / "log").open("wb") as log:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "gateway", "serve", "--config", "gateway.toml"],
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    with trio.fail_after(30):
        while b"gateway.ready" not in (directory / "log").read_bytes():
            assert process.returncode is None, (directory / "log").read_text()
            await trio.sleep(0.05)
    return process, smtp, http


def haproxy_config(front: int, gateways: list[tuple[int, int]]) -> str:
    servers = "".join(
        f"    server gw{i} 127.0.0.1:{smtp} check port {http}\n"
        for i, (smtp, http) in enumerate(gateways)
    )
    return (
        "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n"
        "    timeout server 60s\n    retries 3\n    option redispatch\n"
        f"frontend smtp\n    bind 127.0.0.1:{front}\n    default_backend gateways\n"
        "backend gateways\n    balance roundrobin\n    option httpchk GET /readyz\n"
        "    http-check expect status 200\n"
        "    default-server send-proxy-v2 inter 200ms fall 1 rise 2\n" + servers
    )


async def login(port: int) -> Client:
    client = Client(await trio.open_tcp_stream("127.0.0.1", port))
    assert (await client.reply()).code == 220
    await client.command(b"EHLO c")
    assert (await client.command(plain_auth("alice", PASSWORD))).code == 235
    return client


async def begin(client: Client) -> None:
    assert (await client.command(b"MAIL FROM:<alice@example.com>")).code == 250
    assert (await client.command(b"RCPT TO:<bob@example.net>")).code == 250
    assert (await client.command(b"DATA")).code == 354


async def test_mail_flows_through_haproxy_and_a_drained_gateway_fails_nothing(
    tmp_path: Path, ca: trustme.CA, nursery: trio.Nursery
) -> None:
    assert shutil.which("haproxy"), "haproxy is needed (Debian package haproxy)"
    nats = NatsProcess(tmp_path / "nats")
    nats.directory.mkdir()
    await nats.start()
    gateway_config(tmp_path, ca)  # writes users.toml
    processes: list[trio.Process] = []
    try:
        gw1, smtp1, http1 = await start_gateway(tmp_path / "gw1", nats.ws_url)
        gw2, smtp2, http2 = await start_gateway(tmp_path / "gw2", nats.ws_url)
        processes += [gw1, gw2]
        front = free_port()
        (tmp_path / "haproxy.cfg").write_text(
            haproxy_config(front, [(smtp1, http1), (smtp2, http2)])
        )
        haproxy = await trio.lowlevel.open_process(
            ["haproxy", "-db", "-f", str(tmp_path / "haproxy.cfg")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(haproxy)
        nats_client = NatsClient(nats.ws_url)
        await nursery.start(nats_client.run)
        await trio.sleep(1)  # HAProxy's first health checks (rise 2 at 200 ms) mark both up

        # Mail flows, and the client address stored is ours, not HAProxy's.
        client = await login(front)
        await begin(client)
        reply = await client.command(b"From: alice@example.com\r\n\r\nvia haproxy\r\n.")
        assert reply.code == 250
        seq = (await stream_info(nats_client))["state"]["last_seq"]
        stored = await direct_get(nats_client, seq)
        our_port = client.stream.socket.getsockname()[1]  # type: ignore[attr-defined]
        assert stored.header("Gateway-Client") == f"127.0.0.1:{our_port}"
        logs = (tmp_path / "gw1" / "log").read_text() + (tmp_path / "gw2" / "log").read_text()
        assert f'"client": "127.0.0.1:{our_port}"' in logs  # the log names the real client
        await client.stream.aclose()

        # Transactions in flight on both gateways, one of them 8 MiB; then gw1 goes down.
        big = b"From: alice@example.com\r\n\r\n" + (b"x" * 998 + b"\r\n") * 8300
        flights = [await login(front) for _ in range(4)]
        for flight in flights:
            await begin(flight)
            await flight.send(b"From: alice@example.com\r\n\r\nstarted before SIGTERM\r\n")
        gw1.send_signal(signal.SIGTERM)
        await trio.sleep(0.5)  # HAProxy sees /readyz fail on gw1
        results = []
        for i, flight in enumerate(flights):
            if i == 0:
                await flight.send(big[len(b"From: alice@example.com\r\n\r\n") :])
            reply = await flight.command(b"finished after SIGTERM %d\r\n." % i)
            results.append((reply.code, reply.enhanced))
        assert results == [(250, "2.0.0")] * 4, results
        # New connections are served, by the gateway still up.
        for n in range(4):
            client = await login(front)
            await begin(client)
            reply = await client.command(b"From: alice@example.com\r\n\r\nafter %d\r\n." % n)
            assert reply.code == 250
            await client.stream.aclose()
        for flight in flights:
            await flight.stream.aclose()
        # Every 250 is in the stream, the 8 MiB one included: 1 + 4 in flight + 4 after.
        assert (await stream_info(nats_client))["state"]["messages"] == 9
        sizes = [len((await direct_get(nats_client, n)).payload) for n in range(2, 6)]
        assert max(sizes) > len(big)
        with trio.fail_after(40):
            await gw1.wait()
        assert gw1.returncode == 0
        log = (tmp_path / "gw1" / "log").read_text()
        assert '"gateway.drained"' in log
        assert '"complete": true' in log
    finally:
        with trio.CancelScope(shield=True):
            for process in processes:
                if process.returncode is None:
                    process.kill()
                await process.wait()
            await nats.stop()
