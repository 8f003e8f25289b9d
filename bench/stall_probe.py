"""NOOP round trips on one connection, in a process of its own, until its stdin closes.

    python bench/stall_probe.py HOST PORT

Prints one JSON line: how many round trips, their median and the worst, in ms. The worst is
how long the server kept every other session waiting. Its own process, so that the load
generator's pauses (building an 8 MiB message) are not counted against the server.
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import threading
import time


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    round_trips: list[float] = []
    with socket.create_connection((host, port), timeout=600) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""

        def reply() -> None:
            nonlocal buf
            while not (buf.endswith(b"\r\n") and buf.rsplit(b"\r\n", 2)[-2][3:4] == b" "):
                data = sock.recv(4096)
                if not data:
                    raise ConnectionError("the server closed the probe's connection")
                buf += data
            buf = b""

        reply()  # the greeting
        print("ready", flush=True)
        while not stop.is_set():
            start = time.perf_counter()
            sock.sendall(b"NOOP\r\n")
            reply()
            round_trips.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "count": len(round_trips),
                "p50_ms": statistics.median(round_trips) * 1e3 if round_trips else None,
                "max_ms": max(round_trips) * 1e3 if round_trips else None,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
