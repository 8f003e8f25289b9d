"""Acknowledged publishing to JetStream over WebSocket, against a private nats-server.

    python bench/bench_upstream.py [--small N] [--concurrency C] [--big N]

Runs the embedded server twice, without per-message fsync and with `sync_interval: always`,
and prints acknowledged messages per second for 2 KB messages with many in flight, the same
one at a time (the reference measured in the same run), and 8 MiB messages.
Target (issue 3): at least 8,000 small messages/s acknowledged on one connection, no fsync.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import machine
import trio

from gateway import logs
from gateway.upstream import (
    EmbeddedNats,
    StreamSettings,
    Submission,
    Upstream,
    run_embedded_nats,
)
from gateway.upstream.embedded import embedded_max_payload

SMALL = b"From: a@example.com\r\nSubject: bench\r\n\r\n" + b"x" * 1970 + b"\r\n"  # 2 KB
BIG = b"y" * (8 * 1024 * 1024 - 2) + b"\r\n"
SETTINGS = StreamSettings()


def submission(i: int, run: str) -> Submission:
    return Submission(
        "bench", "127.0.0.1:1", "a@example.com", ("b@example.net",), f"{run}-{i}", f"Q{i}"
    )


async def publish_many(
    upstream: Upstream, n: int, concurrency: int, message: bytes, run: str
) -> float:
    """Seconds to have `n` messages acknowledged with `concurrency` publishers."""
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await upstream.publish(submission(i, run), message)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return time.perf_counter() - start


async def measure(sync_always: bool, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            server: EmbeddedNats = await nursery.start(
                partial(
                    run_embedded_nats,
                    Path(tmp),
                    max_payload=embedded_max_payload(SETTINGS.max_msg_size),
                    sync_always=sync_always,
                )
            )
            upstream = Upstream.create(server.websocket_url, SETTINGS, ack_timeout=60)
            await nursery.start(upstream.client.run)
            await publish_many(upstream, 500, args.concurrency, SMALL, "warm")
            many = await publish_many(upstream, args.small, args.concurrency, SMALL, "many")
            one = await publish_many(upstream, args.small // 10, 1, SMALL, "one")
            big = await publish_many(upstream, args.big, 2, BIG, "big")
            stats = upstream.statistics()
            assert stats.failed == 0, stats
            nursery.cancel_scope.cancel()
    return {
        "many": args.small / many,
        "one": (args.small // 10) / one,
        "big": args.big / big,
        "big_mb": args.big * len(BIG) / big / 1e6,
    }


async def main(args: argparse.Namespace) -> None:
    logs.configure("warning")
    print(machine.describe())
    rows = [
        ("no per-message fsync", await measure(False, args)),
        ("sync_interval: always", await measure(True, args)),
    ]
    print(
        f"{'server':24s} {'2 KB, ' + str(args.concurrency) + ' in flight':>18s} "
        f"{'2 KB, one at a time':>20s} {'8 MiB':>16s}"
    )
    for name, r in rows:
        print(
            f"{name:24s} {r['many']:13.0f} msg/s {r['one']:14.0f} msg/s "
            f"{r['big']:6.1f} msg/s ({r['big_mb']:.0f} MB/s)"
        )
    print(
        f"target: >= 8000 msg/s for 2 KB with many in flight, no per-message fsync; "
        f"in flight vs one at a time: {rows[0][1]['many'] / rows[0][1]['one']:.1f}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=20000, help="2 KB messages per run")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--big", type=int, default=20, help="8 MiB messages per run")
    trio.run(main, parser.parse_args())
