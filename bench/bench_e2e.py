"""The whole gateway under load: 50 authenticated sessions sending small messages.

    python bench/bench_e2e.py [--sessions 50] [--messages 40]

Starts `smtp-gateway serve` in its own process on loopback with the embedded nats-server
(sync_interval: always), drives it from this process with raw sockets (EHLO, AUTH PLAIN, then
MAIL/RCPT/DATA pipelined per message), and prints throughput and the gateway's CPU per message
read from /proc. Every reply is checked; the count of 250s must equal the messages stored.
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
from servers import (
    cpu_seconds,
    embedded_nats_url,
    running_process,
    stored_messages,
    write_gateway,
)

PASSWORD = "bench-password"
BODY = b"Subject: bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * 26  # about 2 KB


async def read_reply(stream: trio.SocketStream, buf: bytearray) -> int:
    while True:
        end = buf.find(b"\r\n")
        while end >= 0:
            line = bytes(buf[: end + 2])
            del buf[: end + 2]
            if line[3:4] == b" ":
                return int(line[:3])
            end = buf.find(b"\r\n")
        data = await stream.receive_some(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        buf += data


async def session(
    port: int,
    user: str,
    first: int,
    count: int,
    results: dict[str, int],
    logged_in: trio.MemorySendChannel[None],
    go: trio.Event,
) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    buf = bytearray()
    async with stream:
        assert await read_reply(stream, buf) == 220
        await stream.send_all(b"EHLO bench\r\n")
        assert await read_reply(stream, buf) == 250
        token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode())
        await stream.send_all(b"AUTH PLAIN " + token + b"\r\n")
        assert await read_reply(stream, buf) == 235
        await logged_in.send(None)
        await go.wait()
        envelope = f"MAIL FROM:<{user}@bench.example>\r\nRCPT TO:<sink@example.net>\r\n"
        sender = f"From: {user}@bench.example\r\n".encode()
        for i in range(first, first + count):
            await stream.send_all(envelope.encode() + b"DATA\r\n")
            codes = [await read_reply(stream, buf) for _ in range(3)]
            if codes != [250, 250, 354]:
                results["failed"] += 1
                continue
            await stream.send_all(sender + b"Message-Number: %d\r\n" % i + BODY + b".\r\n")
            code = await read_reply(stream, buf)
            results["accepted" if code == 250 else "failed"] += 1
        await stream.send_all(b"QUIT\r\n")
        await read_reply(stream, buf)


async def main(args: argparse.Namespace) -> None:
    print(machine.describe())
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        users = [f"user{i}" for i in range(args.sessions)]
        port = write_gateway(
            directory, users, PASSWORD, limits=f"max_connections = {args.sessions * 2}", log="info"
        )
        command = [sys.executable, "-m", "gateway", "serve", "--config", "gateway.toml"]
        async with running_process(command, directory, port) as gateway_pid:
            results = {"accepted": 0, "failed": 0}
            go = trio.Event()
            logged_in, logins = trio.open_memory_channel[None](len(users))
            auth_cpu_before = cpu_seconds(gateway_pid)
            async with trio.open_nursery() as nursery:
                for n, user in enumerate(users):
                    nursery.start_soon(
                        session,
                        port,
                        user,
                        n * args.messages,
                        args.messages,
                        results,
                        logged_in,
                        go,
                    )
                for _ in users:
                    await logins.receive()
                cpu_before = cpu_seconds(gateway_pid)
                auth_cpu = cpu_before - auth_cpu_before
                own_before = time.process_time()
                start = time.perf_counter()
                go.set()
            wall = time.perf_counter() - start
            gateway_cpu = cpu_seconds(gateway_pid) - cpu_before
            own_cpu = time.process_time() - own_before
            stored = await stored_messages(embedded_nats_url(directory / "var"))
    total = results["accepted"]
    print(
        f"{args.sessions} sessions x {args.messages} messages of {len(BODY)} B, "
        f"AUTH PLAIN, pipelined MAIL/RCPT/DATA, JetStream with sync_interval: always"
    )
    print(
        f"  accepted (250)         {total:8d}   failed {results['failed']}, "
        f"stored in the stream {stored}"
    )
    print(f"  throughput             {total / wall:8.0f} msg/s over {wall:.1f} s")
    print(
        f"  gateway CPU            {gateway_cpu / total * 1e6:8.0f} us per message "
        f"({gateway_cpu / wall * 100:.0f}% of a core)"
    )
    print(f"  load generator CPU     {own_cpu / total * 1e6:8.0f} us per message")
    print(
        f"  AUTH (scrypt, threads) {auth_cpu / len(users) * 1e3:8.0f} ms of gateway CPU per login "
        f"(connect, EHLO, AUTH; before the messages)"
    )
    print(machine.describe())
    assert stored == total, "every 250 must be a stored message"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--messages", type=int, default=40)
    trio.run(main, parser.parse_args())
