"""The gateway beside aiosmtpd, same load generator, same run.

    python bench/compare.py [--quick]

Each server runs pinned to core 0 (the gateway with its embedded nats-server,
sync_interval: always: a JetStream ack per message); the load generator runs on core 1.
Scenarios: small-message throughput over 50 sessions, connection churn (connect, AUTH, one
message, QUIT), and latency at a fixed rate. Every session logs in before the clock starts:
the gateway verifies scrypt hashes (tens of ms each, then cached), aiosmtpd here compares
plaintext, and a login phase would measure that, not the servers. Prints a table with the
ratio to the peer and
writes it to bench/results/compare.md. For the gateway, the count of 250s is checked against
the messages stored in the stream.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import machine
import trio
from loadgen import Load, Result, run
from servers import cpu_seconds, free_port, running_process, stored_messages, write_gateway

PASSWORD = "bench-password"
USERS = [f"user{i}" for i in range(50)]
RESULTS = Path(__file__).parent / "results"


@asynccontextmanager
async def gateway_server(directory: Path) -> AsyncIterator[tuple[int, int]]:
    port = write_gateway(directory, USERS, PASSWORD, limits="max_connections = 2000")
    command = [
        "taskset",
        "-c",
        "0",
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--config",
        "gateway.toml",
    ]
    async with running_process(command, directory, port) as pid:
        yield port, pid


@asynccontextmanager
async def peer_server(directory: Path) -> AsyncIterator[tuple[int, int]]:
    port = free_port()
    peer = Path(__file__).parent / "peer_aiosmtpd.py"
    command = ["taskset", "-c", "0", sys.executable, str(peer), str(port), PASSWORD]
    async with running_process(command, directory, port) as pid:
        yield port, pid


def scenarios(quick: bool) -> dict[str, Load]:
    scale = 4 if quick else 1
    return {
        "small messages, 50 sessions": Load(0, PASSWORD, USERS, sessions=50, messages=40 // scale),
        "connection churn (1 message per connection)": Load(
            0, PASSWORD, USERS, sessions=20, messages=20 // scale, reconnect_every=1
        ),
        "latency at 500 msg/s": Load(
            0, PASSWORD, USERS, sessions=50, messages=2500 // scale, rate=500
        ),
    }


async def measure(server: str, load: Load) -> tuple[Result, float, int | None]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        factory = gateway_server if server == "gateway" else peer_server
        async with factory(directory) as (port, pid):
            load.port = port
            before: list[float] = []
            result = await run(load, lambda: before.append(cpu_seconds(pid)))
            cpu = cpu_seconds(pid) - before[0]
            in_stream = await stored_messages(directory / "var") if server == "gateway" else None
    return result, cpu, in_stream


async def main(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {1})  # the load generator on the other core
    lines = [machine.describe(), ""]
    lines.append("| scenario | server | msg/s | CPU/msg | p50 | p99 | failed | ratio to aiosmtpd |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for name, load in scenarios(args.quick).items():
        figures = {}
        for server in ("aiosmtpd", "gateway"):
            result, cpu, in_stream = await measure(server, load)
            if in_stream is not None:
                assert in_stream == result.accepted, (in_stream, result.accepted)
            rate = result.accepted / result.wall if result.wall else 0.0
            figures[server] = rate
            ratio = "" if server == "aiosmtpd" else f"{rate / figures['aiosmtpd']:.2f}x"
            lines.append(
                f"| {name} | {server} | {rate:.0f} | "
                f"{cpu / max(result.accepted, 1) * 1e6:.0f} us | "
                f"{result.percentile(50) * 1e3:.1f} ms | {result.percentile(99) * 1e3:.1f} ms | "
                f"{result.failed} | {ratio} |"
            )
    lines += ["", machine.describe()]
    report = "\n".join(lines)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compare.md").write_text(report + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the messages")
    trio.run(main, parser.parse_args())
