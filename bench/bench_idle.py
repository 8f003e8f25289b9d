"""Many authenticated idle connections: memory per connection, and the idle rule on time.

    python bench/bench_idle.py [--connections 15000]

Opens the connections (EHLO, AUTH PLAIN, then nothing), reads the gateway's resident memory
from /proc before and after, then waits for the idle rule: every connection should get
421 4.4.2 and be closed 30 s after its last command. Target (issue 7): 15,000 connections in
one process at no more than 8 kB each.
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import time
from pathlib import Path

import machine
import trio
from servers import running_process, write_gateway

PASSWORD = "bench-password"
PER_USER = 200  # connections per user allowed here, so that few scrypt checks are needed
IDLE = 30.0  # seconds, the gateway's default idle timeout


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def hold(
    port: int,
    user: str,
    limiter: trio.CapacityLimiter,
    results: list[tuple[float, float, int]],
    ready: trio.MemorySendChannel[None],
) -> None:
    """Open, authenticate, then wait for the server to close: (last command, closed, code)."""
    async with limiter:  # so many connections being opened at once, not all 15,000
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buf = b""
        token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode())
        for command in (None, b"EHLO idle\r\n", b"AUTH PLAIN " + token + b"\r\n"):
            if command is not None:
                await stream.send_all(command)
            while not buf.endswith(b"\r\n") or buf.rsplit(b"\r\n", 2)[-2][3:4] != b" ":
                buf += await stream.receive_some(4096)
            assert buf[:1] in (b"2", b"3"), buf
            buf = b""
    last_command = time.monotonic()  # the idle clock starts here
    await ready.send(None)
    async with stream:
        data = b""
        while chunk := await stream.receive_some(4096):
            data += chunk
    results.append((last_command, time.monotonic(), int(data[:3]) if data[:3].isdigit() else 0))


async def main(args: argparse.Namespace) -> None:
    print(machine.describe())
    users = [f"idle{i}" for i in range(-(-args.connections // PER_USER))]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        port = write_gateway(
            directory,
            users,
            PASSWORD,
            limits=f"max_connections = {args.connections + 100}\n"
            f"max_connections_per_user = {PER_USER}\nidle_timeout = {IDLE}",
        )
        command = [sys.executable, "-m", "gateway", "serve", "--config", "gateway.toml"]
        async with running_process(command, directory, port) as pid:
            await trio.sleep(1)
            before = rss_kib(pid)
            results: list[tuple[float, float, int]] = []
            ready, done = trio.open_memory_channel[None](args.connections)
            started = time.monotonic()
            async with trio.open_nursery() as nursery:
                limiter = trio.CapacityLimiter(200)
                for i in range(args.connections):
                    nursery.start_soon(hold, port, users[i // PER_USER], limiter, results, ready)
                for _ in range(args.connections):
                    await done.receive()
                open_time = time.monotonic() - started
                await trio.sleep(1)
                after = rss_kib(pid)
            # every hold() has returned: all connections were closed by the server
    per_connection = (after - before) * 1024 / args.connections
    late = [closed - (last + IDLE) for last, closed, _ in results]
    codes = [code for _, _, code in results]
    print(f"{args.connections} authenticated idle connections opened in {open_time:.1f} s")
    print(
        f"  gateway RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB: "
        f"{per_connection / 1024:.1f} kB per connection  (target <= 8 kB)"
    )
    print(
        f"  closed by the idle rule: {codes.count(421)} of {len(codes)} got 421, "
        f"{min(late):+.2f} .. {max(late):+.2f} s from 30 s after their last command"
    )
    print(machine.describe())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=15000)
    trio.run(main, parser.parse_args())
