"""The `smtp-gateway` command (also `python -m gateway`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio

from . import __version__, logs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smtp-gateway",
        description="SMTP submission gateway forwarding accepted mail to NATS JetStream.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    queue = commands.add_parser("queue", help="look at the upstream queue")
    queue_commands = queue.add_subparsers(dest="queue_command", metavar="QUEUE_COMMAND")
    tail = queue_commands.add_parser(
        "tail", help="follow the stream and print the envelope of each new message"
    )
    tail.add_argument("--url", help="NATS WebSocket URL (default: the embedded server's)")
    tail.add_argument(
        "--data-dir", type=Path, default=Path("var"), help="where the embedded server runs"
    )
    tail.add_argument("--stream", default="MAIL", help="stream name (default: MAIL)")
    tail.add_argument("--all", action="store_true", help="start from the first stored message")
    tail.add_argument("--count", type=int, help="stop after this many messages")
    tail.add_argument("--json", action="store_true", help="one JSON object per message")
    return parser


def _queue_tail(args: argparse.Namespace) -> int:
    from .upstream import UpstreamError
    from .upstream.tail import embedded_url, format_line, tail

    url = args.url or embedded_url(args.data_dir)
    if url is None:
        print(
            f"smtp-gateway: no --url given and no embedded NATS server running under "
            f"{args.data_dir}/ (start the gateway with `make run`, or pass --url)",
            file=sys.stderr,
        )
        return 1

    def emit(envelope: dict[str, Any]) -> None:
        line = json.dumps(envelope) if args.json else format_line(envelope)
        print(line, flush=True)

    logs.configure("warning", stream=sys.stderr)
    code = 0
    try:
        trio.run(partial(tail, url, args.stream, emit, from_start=args.all, count=args.count))
    except* UpstreamError as group:
        for exc in group.exceptions:
            print(f"smtp-gateway: {exc}", file=sys.stderr)
        code = 1
    except* KeyboardInterrupt:
        code = 130
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "queue" and args.queue_command == "tail":
        return _queue_tail(args)
    parser.print_usage(sys.stderr)
    print("smtp-gateway: no command given; see --help", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
