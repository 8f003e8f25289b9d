"""A real nats-server for tests: started on loopback, killed, frozen and restarted at will."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from gateway.upstream import NatsClient, StreamSettings, Upstream
from gateway.upstream.embedded import embedded_max_payload, find_nats_server, write_config

SETTINGS = StreamSettings()
DEFAULT_MAX_PAYLOAD = embedded_max_payload(SETTINGS.max_msg_size)


@attrs.define(eq=False)
class NatsProcess:
    directory: Path
    max_payload: int = DEFAULT_MAX_PAYLOAD
    extra_config: str = ""
    client_port: int = -1
    websocket_port: int = -1
    websocket_tls: tuple[Path, Path] | None = None  # (certificate, key): wss:// on localhost
    jetstream: bool = True  # False: a plain NATS server, as a misconfigured deployment has
    process: trio.Process | None = None

    @property
    def ws_url(self) -> str:
        if self.websocket_tls is not None:
            return f"wss://localhost:{self.websocket_port}"
        return f"ws://127.0.0.1:{self.websocket_port}"

    async def start(self) -> None:
        config = write_config(
            self.directory,
            max_payload=self.max_payload,
            client_port=self.client_port,
            websocket_port=self.websocket_port,
            extra=self.extra_config,
        )
        if not self.jetstream:
            text = config.read_text()
            start = text.index("jetstream {")
            config.write_text(text[:start] + text[text.index("}\n", start) + 2 :])
        if self.websocket_tls is not None:
            cert, key = self.websocket_tls
            tls = f'  tls {{\n    cert_file: "{cert}"\n    key_file: "{key}"\n  }}\n'
            config.write_text(config.read_text().replace("  no_tls: true\n", tls))
        ports_dir = self.directory / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*"):
            stale.unlink()
        log = (self.directory / "nats.log").open("ab")
        self.process = await trio.lowlevel.open_process(
            [find_nats_server(), "-c", str(config), "--ports_file_dir", str(ports_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        with trio.fail_after(15):  # a real process starting: not a timing assertion
            while True:
                files = list(ports_dir.glob(f"*_{self.process.pid}.ports"))
                if files:
                    try:
                        ports = json.loads(files[0].read_text())
                    except ValueError:
                        ports = None
                    if ports and ports.get("websocket"):
                        break
                assert self.process.returncode is None, (self.directory / "nats.log").read_text()
                await trio.sleep(0.02)
        self.client_port = int(ports["nats"][0].rsplit(":", 1)[1])
        self.websocket_port = int(ports["websocket"][0].rsplit(":", 1)[1])

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.thaw()
            self.process.kill()
            with trio.move_on_after(10) as scope:
                scope.shield = True
                await self.process.wait()

    async def restart(self) -> None:
        """The same ports and store, after kill()."""
        assert self.process is not None
        with trio.fail_after(10):
            await self.process.wait()
        await self.start()


@asynccontextmanager
async def started(server: NatsProcess) -> AsyncIterator[NatsProcess]:
    """`server` running for the block, in a directory of its own; stopped after."""
    server.directory.mkdir()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def running_upstream(
    url: str, nursery: trio.Nursery, settings: StreamSettings = SETTINGS, ack_timeout: float = 10
) -> AsyncIterator[Upstream]:
    upstream = Upstream.create(url, settings, ack_timeout)
    await nursery.start(upstream.client.run)
    yield upstream


async def direct_get(client: NatsClient, seq: int, stream: str = "MAIL") -> Any:
    """A stored message by sequence, raw (the stream has allow_direct)."""
    return await client.request(
        f"$JS.API.DIRECT.GET.{stream}", json.dumps({"seq": seq}).encode(), ready=False
    )


async def stream_info(client: NatsClient, stream: str = "MAIL") -> Any:
    return await client.request_json(f"$JS.API.STREAM.INFO.{stream}")
