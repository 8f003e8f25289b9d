"""bench/loadgen.py against the real gateway: what an operator's load test relies on.

Every mode of the generator (pipelined or not, AUTH PLAIN or LOGIN, STARTTLS, reconnecting,
a fixed rate, attachments, the per-user storm) gets the replies it expects, and the count of
250s equals the messages in the stream.
"""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import trio
import trustme

from gateway.server.app import Running
from gateway.smtp import TlsMode

from .conftest import PASSWORD
from .test_e2e import client_of

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
import loadgen


async def in_stream(running: Running) -> int:
    info = await client_of(running).request_json("$JS.API.STREAM.INFO.MAIL")
    return int(info["state"]["messages"])


def load(running: Running, mode: TlsMode = TlsMode.NONE, **kwargs: object) -> loadgen.Load:
    base = loadgen.Load(running.port(mode), PASSWORD, ["alice"], domain="example.com")
    for key, value in kwargs.items():
        setattr(base, key, value)
    return base


async def test_pipelined_sessions_every_250_is_in_the_stream(running: Running) -> None:
    result = await loadgen.run(load(running, sessions=3, messages=4))
    assert (result.accepted, result.failed, result.errors) == (12, 0, {})
    assert len(result.latencies) == 12
    assert await in_stream(running) == 12


async def test_starttls_auth_login_unpipelined_reconnecting(
    running: Running, ca: trustme.CA
) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    spec = load(
        running,
        TlsMode.STARTTLS,
        sessions=2,
        messages=3,
        recipients=3,
        reconnect_every=1,
        pipelining=False,
        auth="LOGIN",
        starttls=True,
        tls_context=context,
    )
    result = await loadgen.run(spec)
    assert (result.accepted, result.failed) == (6, 0)
    assert result.connections == 2 + 2 * 2  # one each, then a new one per further message
    assert await in_stream(running) == 6


async def test_fixed_rate_and_an_attachment(running: Running) -> None:
    spec = load(running, sessions=2, messages=6, rate=50, size=200_000, attachment=100_000)
    result = await loadgen.run(spec)
    assert (result.accepted, result.failed) == (6, 0)
    assert result.wall >= 5 / 50  # the last message starts 5 intervals after the first
    assert await in_stream(running) == 6


async def test_a_refused_message_is_counted_as_a_failure(running: Running) -> None:
    spec = load(running, sessions=1, messages=2, domain="not-alices.example")
    result = await loadgen.run(spec)
    assert (result.accepted, result.failed) == (0, 2)
    # 553 for the sender; RCPT and DATA then have no transaction: 503 each.
    assert result.errors == {"envelope answered [553, 503, 503]": 2}
    assert await in_stream(running) == 0


async def test_storm_meets_the_per_user_limit(running: Running) -> None:
    result = await loadgen.storm(load(running), 15)
    assert (result.admitted, result.refused_limit, result.other) == (10, 5, {})
    # Once the storm's connections are closed, the user gets in again.
    with trio.fail_after(10):
        await running.gateway.wait_all_closed()
    assert running.gateway.slots.in_use("alice") == 0
    conn = await loadgen.open_session(load(running), "alice", loadgen.Result())
    await conn.close()


async def test_stall_probe_measures_round_trips(running: Running) -> None:
    probe = loadgen.StallProbe()
    async with trio.open_nursery() as nursery:
        await nursery.start(probe.run, "127.0.0.1", running.port(TlsMode.NONE))
        await loadgen.run(load(running, sessions=1, messages=2))
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert probe.round_trips
    assert 0 < probe.worst < 5
