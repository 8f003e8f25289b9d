from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .natsproc import NatsProcess


@pytest.fixture
async def nats(tmp_path: Path) -> AsyncIterator[NatsProcess]:
    server = NatsProcess(tmp_path / "nats")
    server.directory.mkdir()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
