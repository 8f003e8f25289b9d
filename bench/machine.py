"""The state of this machine while a benchmark runs.

These VMs run at two speeds (the host throttles them): sum(range(100)) takes about 0.8 us at
full speed and about 1.4 us when throttled. Benchmarks print this beside their figures so that
a reader knows which speed they were taken at.
"""

from __future__ import annotations

import timeit

FULL_SPEED_US = 0.8


def calibration_us() -> float:
    """Microseconds for sum(range(100)), the best of 20 short samples."""
    return min(timeit.repeat("sum(range(100))", number=20000, repeat=20)) / 20000 * 1e6


def describe() -> str:
    now = calibration_us()
    phase = "full speed" if now < FULL_SPEED_US * 1.25 else "throttled"
    return (
        f"machine: sum(range(100)) takes {now:.2f} us now "
        f"({phase}; about {FULL_SPEED_US} at full speed)"
    )
