"""What the benchmarks share: ports, a process's CPU, and servers started in their own process."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User and system CPU of one process (not its children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def running_process(command: list[str], cwd: Path, port: int) -> AsyncIterator[int]:
    """Run `command` until the block ends; yields its pid once `port` accepts connections."""
    process = await trio.lowlevel.open_process(
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        with trio.fail_after(30):
            while True:
                try:
                    await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    assert process.returncode is None, f"{command[0]} exited early"
                    await trio.sleep(0.05)
        yield process.pid
    finally:
        process.terminate()
        with trio.move_on_after(30):
            await process.wait()
        process.kill()


def write_gateway(
    directory: Path,
    users: list[str],
    password: str,
    *,
    limits: str = "",
    log: str = "warning",
    upstream_url: str | None = None,
    starttls: bool = False,
) -> int:
    """A users file (every user with `password`, sending from <user>@bench.example) and a
    gateway.toml with one AUTH listener on loopback (plaintext AUTH, or STARTTLS with a
    certificate from bench_tls); returns its port. `upstream_url`: an external nats-server
    (None: the embedded one)."""
    from gateway.auth import User, UserStore, hash_password

    hashed = hash_password(password)
    UserStore({u: User(u, hashed, (f"{u}@bench.example",)) for u in users}).save(
        directory / "users.toml"
    )
    port = free_port()
    if starttls:
        cert, key = bench_tls(directory)
        listener = 'tls = "starttls"\n'
        tls = f'[tls]\ncertificate = "{cert}"\nprivate_key = "{key}"\n'
    else:
        listener = 'tls = "none"\nallow_plaintext_auth = true\n'
        tls = ""
    upstream = f'[upstream]\nurl = "{upstream_url}"\n' if upstream_url else ""
    (directory / "gateway.toml").write_text(
        f'hostname = "bench.test"\n[[listener]]\naddress = "127.0.0.1:{port}"\n{listener}'
        f"[limits]\n{limits}\n{tls}{upstream}"
        f'[http]\naddress = "127.0.0.1:{free_port()}"\n[log]\nformat = "json"\nlevel = "{log}"\n'
    )
    return port


def bench_tls(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 from a throwaway CA (trustme), as PEM files."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


@asynccontextmanager
async def nats_server(
    directory: Path, cpus: str = "1", *, sync_always: bool = True
) -> AsyncIterator[tuple[str, int]]:
    """An external nats-server as the gateway's upstream (JetStream; sync_interval: always
    unless told otherwise), pinned to `cpus`; yields its WebSocket URL and its pid. The
    gateway's core is then its own."""
    from gateway.upstream.embedded import embedded_max_payload, find_nats_server, write_config
    from gateway.upstream.jetstream import StreamSettings

    ws_port = free_port()
    config = write_config(
        directory / "nats",
        max_payload=embedded_max_payload(StreamSettings().max_msg_size),
        websocket_port=ws_port,
        sync_always=sync_always,
    )
    command = ["taskset", "-c", cpus, find_nats_server(), "-c", str(config)]
    async with running_process(command, directory, ws_port) as pid:
        yield f"ws://127.0.0.1:{ws_port}", pid


async def stored_messages(url: str, stream: str = "MAIL") -> int:
    """How many messages the nats-server at `url` holds in `stream`."""
    from gateway.upstream import NatsClient

    client = NatsClient(url)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        info = await client.request_json(f"$JS.API.STREAM.INFO.{stream}")
        nursery.cancel_scope.cancel()
    return int(info["state"]["messages"])


def embedded_nats_url(data_dir: Path) -> str:
    from gateway.upstream.tail import embedded_url

    url = embedded_url(data_dir)
    assert url is not None, f"no embedded nats-server under {data_dir}"
    return url
