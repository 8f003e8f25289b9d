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
    directory: Path, users: list[str], password: str, *, limits: str = "", log: str = "warning"
) -> int:
    """A users file (every user with `password`, sending from <user>@bench.example) and a
    gateway.toml with one plaintext-AUTH listener on loopback; returns its port."""
    from gateway.auth import User, UserStore, hash_password

    hashed = hash_password(password)
    UserStore({u: User(u, hashed, (f"{u}@bench.example",)) for u in users}).save(
        directory / "users.toml"
    )
    port = free_port()
    (directory / "gateway.toml").write_text(
        f'hostname = "bench.test"\n[[listener]]\naddress = "127.0.0.1:{port}"\ntls = "none"\n'
        f"allow_plaintext_auth = true\n[limits]\n{limits}\n"
        f'[http]\naddress = "127.0.0.1:{free_port()}"\n[log]\nformat = "json"\nlevel = "{log}"\n'
    )
    return port


async def stored_messages(data_dir: Path, stream: str = "MAIL") -> int:
    """How many messages the embedded nats-server under `data_dir` holds in `stream`."""
    from gateway.upstream import NatsClient
    from gateway.upstream.tail import embedded_url

    url = embedded_url(data_dir)
    assert url is not None, f"no embedded nats-server under {data_dir}"
    client = NatsClient(url)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        info = await client.request_json(f"$JS.API.STREAM.INFO.{stream}")
        nursery.cancel_scope.cancel()
    return int(info["state"]["messages"])
