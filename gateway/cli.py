"""The `smtp-gateway` command (also `python -m gateway`)."""

from __future__ import annotations

import argparse
import gc
import getpass
import json
import signal
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio

from . import __version__, logs
from .config import Config, ConfigError, load


def _fail(message: str) -> int:
    print(f"smtp-gateway: {message}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smtp-gateway",
        description="SMTP submission gateway forwarding accepted mail to NATS JetStream.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config", type=Path, help="configuration file (default: ./gateway.toml if present)"
        )

    serve = commands.add_parser("serve", help="run the gateway until SIGTERM or SIGINT")
    with_config(serve)

    check = commands.add_parser("check-config", help="validate a configuration")
    with_config(check)

    users = commands.add_parser("users", help="manage the users file")
    users_commands = users.add_subparsers(dest="users_command", metavar="USERS_COMMAND")
    add = users_commands.add_parser(
        "add", help="create or update a user (password from standard input or a prompt)"
    )
    add.add_argument("name")
    add.add_argument(
        "--sender",
        action="append",
        required=True,
        metavar="ADDR",
        help="an address the user may send from, or @domain (repeatable)",
    )
    listing = users_commands.add_parser("list", help="one line per user: name and senders")
    remove = users_commands.add_parser("remove", help="remove a user")
    remove.add_argument("name")
    for p in (add, listing, remove):
        with_config(p)
        p.add_argument("--users-file", type=Path, help="default: [users] file of the config")

    queue = commands.add_parser("queue", help="look at the upstream queue")
    queue_commands = queue.add_subparsers(dest="queue_command", metavar="QUEUE_COMMAND")
    tail = queue_commands.add_parser(
        "tail", help="follow the stream and print the envelope of each new message"
    )
    with_config(tail)
    tail.add_argument("--url", help="NATS WebSocket URL (default: from the configuration)")
    tail.add_argument("--data-dir", type=Path, help="where the embedded server runs")
    tail.add_argument("--stream", help="stream name (default: from the configuration)")
    tail.add_argument("--all", action="store_true", help="start from the first stored message")
    tail.add_argument("--count", type=int, help="stop after this many messages")
    tail.add_argument("--json", action="store_true", help="one JSON object per message")
    return parser


# --- serve ------------------------------------------------------------------------------------


async def _run_until_signalled(config: Config) -> None:
    from .server.app import serve

    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            running = await nursery.start(serve, config)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    running.reload()
                    continue
                structlog.get_logger().info("gateway.stopping", signal=signal.Signals(signum).name)
                await running.drain()
                nursery.cancel_scope.cancel()
                break


def _tune_gc() -> None:
    """Fewer collections of the cyclic garbage collector for a long-running server.

    What start-up made (modules, configuration, the user store) is frozen out of every later
    collection, and the youngest generation is collected after 50,000 new objects rather than
    700: a small message allocates a few hundred, most freed at once by reference counting, so
    the default collected several times a second and walked every session's objects each time.
    In alternating runs this took the CPU of a small message from 131-137 to 120-129 us.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _serve(config: Config) -> int:
    from .auth import UsersFileError
    from .upstream import EmbeddedServerError, UpstreamError

    logs.configure(config.log.level, config.log.format)
    code = 0
    _tune_gc()
    try:
        trio.run(_run_until_signalled, config)
    except* (UpstreamError, EmbeddedServerError, UsersFileError) as problems:
        for exc in problems.exceptions:
            _fail(str(exc))
        code = 1
    except* OSError as socket_errors:
        for error in socket_errors.exceptions:
            _fail(f"cannot listen: {error}")
        code = 1
    return code


# --- users ------------------------------------------------------------------------------------


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Password (again): "):
        raise ValueError("the two passwords differ")
    return first


def _users(args: argparse.Namespace, config: Config) -> int:
    from .auth import (
        User,
        UsersFileError,
        UserStore,
        check_name,
        check_sender,
        hash_password,
    )

    path = args.users_file or config.users.file
    try:
        store = UserStore.load(path)
    except UsersFileError as exc:
        return _fail(str(exc))
    if args.users_command == "list":
        for user in sorted(store.users.values(), key=lambda u: u.name):
            print(f"{user.name} {' '.join(user.senders)}")
        return 0
    if args.users_command == "remove":
        if store.get(args.name) is None:
            return _fail(f"no user {args.name!r} in {path}")
        store.without(args.name).save(path)
        return 0
    try:
        name = check_name(args.name)
        # Each address once, as first given: ownership ignores case, so the list does too.
        unique: dict[str, str] = {}
        for sender in args.sender:
            unique.setdefault(check_sender(sender).lower(), sender)
        senders = tuple(unique.values())
        password = _read_password()
        if not password:
            raise ValueError("an empty password is refused")
    except ValueError as exc:
        return _fail(str(exc))
    store.with_user(User(name, hash_password(password), senders)).save(path)
    print(f"{'updated' if store.get(name) else 'added'} {name} in {path}")
    return 0


# --- queue tail -------------------------------------------------------------------------------


def _queue_tail(args: argparse.Namespace, config: Config) -> int:
    from .upstream import UpstreamError
    from .upstream.tail import embedded_url, format_line, tail

    data_dir = args.data_dir or config.data_dir
    url = args.url or config.upstream.url or embedded_url(data_dir)
    if url is None:
        return _fail(
            f"no --url given and no embedded NATS server running under {data_dir}/ "
            f"(start the gateway with `make run`, or pass --url)"
        )

    def emit(envelope: dict[str, Any]) -> None:
        line = json.dumps(envelope) if args.json else format_line(envelope)
        print(line, flush=True)

    logs.configure("warning", stream=sys.stderr)
    stream = args.stream or config.upstream.stream
    code = 0
    try:
        trio.run(partial(tail, url, stream, emit, from_start=args.all, count=args.count))
    except* UpstreamError as group:
        for exc in group.exceptions:
            _fail(str(exc))
        code = 1
    except* KeyboardInterrupt:
        code = 130
    return code


# --- main -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        return _fail("no command given; see --help") + 1
    try:
        config = load(getattr(args, "config", None))
    except ConfigError as exc:
        if args.command == "check-config":
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            return 1
        for problem in exc.problems:
            _fail(f"configuration: {problem}")
        return 1
    if args.command == "check-config":
        print("ok")
        return 0
    if args.command == "serve":
        return _serve(config)
    if args.command == "users" and args.users_command:
        return _users(args, config)
    if args.command == "queue" and args.queue_command == "tail":
        return _queue_tail(args, config)
    parser.parse_args([args.command, "--help"])
    return 2


if __name__ == "__main__":
    sys.exit(main())
