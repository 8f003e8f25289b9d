"""The installed command starts, and says what it is."""

from __future__ import annotations

import subprocess
import sys

from gateway import __version__


def test_version_through_python_m() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"smtp-gateway {__version__}"


def test_no_command_is_a_usage_error() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "usage: smtp-gateway" in out.stderr
