from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

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
