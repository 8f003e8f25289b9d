from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trustme

from gateway.auth import User, UserStore, hash_password
from gateway.config import parse
from gateway.server.app import Running, serve

from .harness import Client

PASSWORD = "correct horse battery"


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


def write_tls(ca: trustme.CA, directory: Path) -> dict[str, str]:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(directory / "cert.pem"), append=True)
    cert.private_key_pem.write_to_path(str(directory / "key.pem"))
    return {"certificate": "cert.pem", "private_key": "key.pem"}


def gateway_config(directory: Path, ca: trustme.CA, **overrides: Any) -> dict[str, Any]:
    UserStore(
        {
            "alice": User("alice", hash_password(PASSWORD), ("alice@example.com",)),
            "bob": User("bob", hash_password(PASSWORD), ("@bob.example",)),
        }
    ).save(directory / "users.toml")
    document: dict[str, Any] = {
        "hostname": "mx.test",
        "data_dir": "var",
        "listener": [
            {"address": "127.0.0.1:0", "tls": "none", "allow_plaintext_auth": True},
            {"address": "127.0.0.1:0", "tls": "starttls"},
            {"address": "127.0.0.1:0", "tls": "implicit"},
        ],
        "tls": write_tls(ca, directory),
        "users": {"file": "users.toml"},
        "http": {"address": "127.0.0.1:0"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            document[key] = {**document[key], **value}
        else:
            document[key] = value
    return document


@pytest.fixture
async def running(tmp_path: Path, ca: trustme.CA, nursery: trio.Nursery) -> Running:
    config = parse(gateway_config(tmp_path, ca), tmp_path)
    started: Running = await nursery.start(serve, config)
    return started


@pytest.fixture
async def tcp() -> AsyncIterator[Callable[[int], Awaitable[Client]]]:
    """Opens real TCP clients to 127.0.0.1, and closes every one of them at the end."""
    opened: list[Client] = []

    async def open_client(port: int) -> Client:
        client = Client(await trio.open_tcp_stream("127.0.0.1", port))
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        await client.stream.aclose()


@attrs.define(eq=False)
class GatewayProcess:
    """`smtp-gateway serve` in a process of its own, and what it has logged so far."""

    process: trio.Process
    log: bytes = b""
    port: int = 0  # of its one plaintext listener

    async def wait_for(self, text: bytes) -> None:
        """Read the log until `text` is in it (a process that ends first fails the test)."""
        assert self.process.stdout is not None
        with trio.fail_after(30):  # a real process: not a timing assertion
            while text not in self.log:
                chunk = await self.process.stdout.receive_some(65536)
                assert chunk, self.log.decode(errors="replace")
                self.log += chunk

    async def stop(self) -> int:
        """SIGTERM; the exit code, once the whole log is read."""
        assert self.process.stdout is not None
        self.process.terminate()
        with trio.fail_after(60):
            while chunk := await self.process.stdout.receive_some(65536):
                self.log += chunk
            return await self.process.wait()


@asynccontextmanager
async def gateway_process(directory: Path, extra_toml: str = "") -> AsyncIterator[GatewayProcess]:
    """A gateway with one plaintext listener (plaintext AUTH allowed) and the users file
    `directory/users.toml`, ready for connections; killed at the end if still running."""
    (directory / "gateway.toml").write_text(
        'hostname = "mx.test"\ndata_dir = "var"\n[users]\nfile = "users.toml"\n'
        '[[listener]]\naddress = "127.0.0.1:0"\ntls = "none"\nallow_plaintext_auth = true\n'
        '[http]\naddress = "127.0.0.1:0"\n' + extra_toml
    )
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gateway", "serve", "--config", "gateway.toml"],
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    gateway = GatewayProcess(process)
    try:
        await gateway.wait_for(b"gateway.ready")
        head = gateway.log.split(b'"listener.open"')[0]
        gateway.port = int(head.rsplit(b"127.0.0.1:", 1)[1].split(b'"')[0])
        yield gateway
    finally:
        process.kill()
        await process.stdout.aclose()
