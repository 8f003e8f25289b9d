"""bench/loadgen.py against the real gateway: what an operator's load test relies on.

Every mode of the generator (pipelined or not, AUTH PLAIN or LOGIN, STARTTLS, reconnecting,
a fixed rate, attachments, the per-user storm) gets the replies it expects, and the count of
250s equals the messages in the stream.
"""

from __future__ import annotations

import socket
import ssl
import sys
from pathlib import Path

import pytest
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


ENGINES = pytest.mark.parametrize("engine", ["epoll", "trio"])


@ENGINES
async def test_pipelined_sessions_every_250_is_in_the_stream(running: Running, engine: str) -> None:
    result = await loadgen.run(load(running, sessions=3, messages=4, engine=engine))
    assert (result.accepted, result.failed, result.errors) == (12, 0, {})
    assert len(result.latencies) == 12
    assert result.connections == 3
    assert result.wall > 0
    assert await in_stream(running) == 12


@ENGINES
async def test_auth_login_unpipelined_reconnecting_many_recipients(
    running: Running, engine: str
) -> None:
    spec = load(
        running,
        sessions=3,
        messages=4,
        recipients=100,
        reconnect_every=2,
        pipelining=False,
        auth="LOGIN",
        engine=engine,
        opening=2,  # sessions queue for the right to log in
    )
    result = await loadgen.run(spec)
    assert (result.accepted, result.failed, result.errors) == (12, 0, {})
    assert result.connections == 3 * 2
    assert await in_stream(running) == 12


@ENGINES
async def test_big_messages_go_out_in_pieces(running: Running, engine: str) -> None:
    # 6 MiB a message: more than a loopback socket takes at once, so sends wait for room.
    spec = load(running, sessions=2, messages=2, size=6 << 20, attachment=2 << 20, engine=engine)
    result = await loadgen.run(spec)
    assert (result.accepted, result.failed, result.errors) == (4, 0, {})
    assert await in_stream(running) == 4


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


@ENGINES
async def test_a_refused_message_is_counted_as_a_failure(running: Running, engine: str) -> None:
    spec = load(running, sessions=1, messages=2, domain="not-alices.example", engine=engine)
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


async def _misbehaving_server(
    behaviour: str,
    seen: list[int] | None = None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A server on loopback that never answers ("silent"), hangs up after EHLO ("hang up"),
    or refuses every login ("refuse"). `seen` gets the count of connections open after each
    new one."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    open_now = 0

    async def serve(stream: trio.SocketStream) -> None:
        nonlocal open_now
        open_now += 1
        if seen is not None:
            seen.append(open_now)
        async with stream:
            try:
                await answer(stream)
            finally:
                open_now -= 1

    async def answer(stream: trio.SocketStream) -> None:
        if behaviour == "silent":
            await stream.receive_some()  # until the client gives up
            return
        await stream.send_all(b"220 hello\r\n")
        await stream.receive_some()  # EHLO
        if behaviour == "hang up":
            return  # nothing unread: the client sees the end, not a reset
        await stream.send_all(b"250-hello\r\n250 AUTH PLAIN\r\n")
        await stream.receive_some()  # AUTH
        await stream.send_all(b"535 5.7.8 no\r\n")
        await stream.receive_some()  # QUIT, or the end

    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(serve, listeners)


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "behaviour", ["silent", "hang up", "refuse", "nobody listens", "no such host"]
)
async def test_both_engines_count_a_server_that_fails_them_alike(
    behaviour: str, nursery: trio.Nursery
) -> None:
    host = "bad host" if behaviour == "no such host" else "127.0.0.1"  # refused by the resolver
    if behaviour in ("nobody listens", "no such host"):
        port = _unused_port()
    else:
        port = await nursery.start(_misbehaving_server, behaviour)
    results = {}
    for engine in ("epoll", "trio"):
        spec = loadgen.Load(
            port,
            PASSWORD,
            ["alice"],
            sessions=3,
            messages=2,
            reply_timeout=0.3,
            engine=engine,
            host=host,
        )
        with trio.fail_after(10):
            results[engine] = await loadgen.run(spec)
    expected = {
        "silent": "TooSlowError: ",
        "hang up": "ConnectionError: server closed the connection",
        "refuse": "AuthRefused: AUTH answered 535 5.7.8 no",
        "nobody listens": "ConnectionRefusedError: "
        + f"[Errno 111] connect to 127.0.0.1:{port}: Connection refused"[:60],
        # The resolver's own words ("Name or service not known", or a temporary failure).
        "no such host": next(iter(results["trio"].errors), ""),
    }[behaviour]
    if behaviour == "no such host":
        assert expected.startswith("gaierror: ")
    for result in results.values():
        # Each session fails once, at login, and ends: nothing is sent.
        assert (result.accepted, result.failed, result.errors) == (0, 3, {expected: 3})
    assert results["epoll"].connections == results["trio"].connections


@ENGINES
async def test_no_more_than_opening_sessions_log_in_at_once(
    engine: str, nursery: trio.Nursery
) -> None:
    seen: list[int] = []
    port = await nursery.start(_misbehaving_server, "silent", seen)
    spec = loadgen.Load(
        port, PASSWORD, ["alice"], sessions=4, reply_timeout=0.2, opening=2, engine=engine
    )
    with trio.fail_after(10):
        result = await loadgen.run(spec)
    assert result.errors == {"TooSlowError: ": 4}
    assert len(seen) == 4
    assert max(seen) == 2  # two wait for the first two to time out


async def _early_server(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Logs anyone in, and answers 250 to DATA at once, before the message has come (then
    reads the message to its end): a reply that arrives while the client is still sending."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"220 hello\r\n")
            buf = b""
            in_data = False
            while data := await stream.receive_some():
                buf += data
                while True:
                    if in_data:
                        end = buf.find(b"\r\n.\r\n")
                        if end < 0:
                            buf = buf[-4:]  # what may begin the end
                            break
                        buf, in_data = buf[end + 5 :], False
                        continue
                    line, sep, rest = buf.partition(b"\r\n")
                    if not sep:
                        break
                    buf = rest
                    verb = line[:4].upper()
                    if verb == b"DATA":
                        await stream.send_all(b"354 go\r\n250 2.0.0 taken early\r\n")
                        buf, in_data = b"\r\n" + buf, True
                    elif verb == b"AUTH":
                        await stream.send_all(b"235 ok\r\n")
                    elif verb == b"QUIT":
                        return
                    else:
                        await stream.send_all(b"250 ok\r\n")

    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(serve, listeners)


@ENGINES
async def test_a_reply_that_comes_while_the_message_is_still_sent(
    engine: str, nursery: trio.Nursery
) -> None:
    port = await nursery.start(_early_server)
    spec = loadgen.Load(
        port, PASSWORD, ["alice"], sessions=2, messages=3, size=6 << 20, engine=engine
    )
    with trio.fail_after(30):
        result = await loadgen.run(spec)
    assert (result.accepted, result.failed, result.errors) == (6, 0, {})
