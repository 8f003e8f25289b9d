"""The `smtp-gateway` command (also `python -m gateway`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smtp-gateway",
        description="SMTP submission gateway forwarding accepted mail to NATS JetStream.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("smtp-gateway: no command given; see --help", file=sys.stderr)
        return 2
    return 0  # pragma: no cover - every command returns through its own handler


if __name__ == "__main__":
    sys.exit(main())
