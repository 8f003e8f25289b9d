"""The state of this machine while a benchmark runs.

Machines of this kind differ, and one machine changes speed: sum(range(100)) took about 0.8 us
on the machine of sessions 1 to 4 at full speed and about 1.4 us when its host throttled it,
and 0.44 to 0.48 us on an AMD EPYC on 2026-12-07. Benchmarks print this and the CPU's model
beside their figures, so that a reader knows what they were taken on; compare figures only
within one run.
"""

from __future__ import annotations

import timeit
from functools import cache
from pathlib import Path


def calibration_us() -> float:
    """Microseconds for sum(range(100)), the best of 20 short samples."""
    return min(timeit.repeat("sum(range(100))", number=20000, repeat=20)) / 20000 * 1e6


@cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def describe() -> str:
    return f"machine: sum(range(100)) takes {calibration_us():.2f} us now ({cpu_model()})"
