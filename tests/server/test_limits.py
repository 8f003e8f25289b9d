"""The node-wide limits' own bookkeeping stays bounded, whatever clients do."""

from __future__ import annotations

import trio
import trio.testing

from gateway.server.limits import AuthFailures


async def test_addresses_that_never_come_back_are_forgotten_after_the_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # One failed AUTH from each of many addresses (an IPv6 /64 has plenty), none seen again.
    failures = AuthFailures(limit=20, window=600)
    for i in range(1000):
        failures.record(f"2001:db8::{i:x}")
    assert failures.addresses == 1000
    await trio.sleep(601)
    failures.record("192.0.2.1")
    assert failures.addresses == 1
    assert not failures.blocked("2001:db8::1")


async def test_at_most_max_addresses_are_tracked_the_oldest_go_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    failures = AuthFailures(limit=3, window=600, max_addresses=100)
    for _ in range(3):
        failures.record("192.0.2.1")
        await trio.sleep(1)
    assert failures.blocked("192.0.2.1")
    for i in range(150):
        failures.record(f"2001:db8::{i:x}")
    assert failures.addresses == 100
    # The oldest entry made room; the newest still count.
    assert not failures.blocked("192.0.2.1")
    for _ in range(2):
        failures.record("2001:db8::95")
    assert failures.blocked("2001:db8::95")


async def test_an_address_that_keeps_failing_stays_blocked_for_the_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    failures = AuthFailures(limit=3, window=600, max_addresses=100)
    for _ in range(3):
        failures.record("192.0.2.7")
    for i in range(50):  # others come and go meanwhile
        failures.record(f"198.51.100.{i}")
    assert failures.blocked("192.0.2.7")
    await trio.sleep(599)
    assert failures.blocked("192.0.2.7")
    await trio.sleep(1)
    assert not failures.blocked("192.0.2.7")
