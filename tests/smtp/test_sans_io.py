"""The protocol core does no I/O: importing it loads neither trio, structlog nor socket."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ["trio", "structlog", "socket", "ssl", "asyncio", "selectors", "gateway.server"]


def test_importing_the_core_loads_no_io() -> None:
    code = (
        "import sys, gateway.smtp\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"gateway.smtp imported {out}"


def test_the_check_itself_can_fail() -> None:
    code = "import sys, socket, gateway.smtp; print('socket' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
