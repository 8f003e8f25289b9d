from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .natsproc import NatsProcess, started


@pytest.fixture
async def nats(tmp_path: Path) -> AsyncIterator[NatsProcess]:
    async with started(NatsProcess(tmp_path / "nats")) as server:
        yield server
