"""The session's timers and limits with a virtual clock: exact durations. Every test runs on
memory streams and again on a socket pair, where the session waits on the socket itself and
its deadlines are kept by the node's SocketTimers instead of a cancel scope."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from . import harness
from .harness import PLAIN, Client, MemoryQueue, connect, make_gateway, plain_auth

IDLE = 30


@pytest.fixture(autouse=True, params=["memory", "socket"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # Not an async fixture: pytest-trio would not wait for it before the test starts.
    monkeypatch.setattr(harness, "TRANSPORT", request.param)
    yield str(request.param)
    while harness.CLIENT_SOCKETS:  # outside trio now: its close() would call into trio
        fd = harness.CLIENT_SOCKETS.pop().socket.detach()
        if fd >= 0:  # -1: the test closed it
            os.close(fd)


async def test_idle_client_is_cut_off_after_exactly_30_seconds(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(nursery, make_gateway())
    assert (await client.reply()).code == 220
    start = trio.current_time()
    reply = await client.reply()
    assert (reply.code, reply.enhanced) == (421, "4.4.2")
    assert trio.current_time() - start == IDLE
    assert await client.closed()


async def test_each_command_restarts_the_idle_clock(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(nursery, make_gateway())
    await client.reply()
    start = trio.current_time()
    await trio.sleep(20)
    assert (await client.command(b"NOOP")).code == 250
    reply = await client.reply()
    assert reply.code == 421
    assert trio.current_time() - start == 20 + IDLE


async def test_trickling_bytes_do_not_restart_the_idle_clock(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(nursery, make_gateway())
    await client.reply()
    start = trio.current_time()
    for byte in b"NOO":  # a command that never completes, one byte every 10 s
        await client.send(bytes([byte]))
        await trio.sleep(10)
    reply = await client.reply()
    assert reply.code == 421
    assert trio.current_time() - start == IDLE


async def _to_data(nursery: trio.Nursery, **limits: object) -> tuple[Client, MemoryQueue]:
    queue = MemoryQueue()
    client = await connect(nursery, make_gateway(queue, **limits))
    await client.login()
    assert (await client.command(b"MAIL FROM:<alice@example.com>")).code == 250
    assert (await client.command(b"RCPT TO:<bob@example.net>")).code == 250
    assert (await client.command(b"DATA")).code == 354
    return client, queue


async def test_slow_but_steady_data_is_never_cut_off(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client, queue = await _to_data(nursery)
    header = b"From: alice@example.com\r\nSubject: slow\r\n\r\n"
    await client.send(header)
    start = trio.current_time()
    for i in range(20):  # 400 s of upload, a line every 20 s
        await client.send(b"line %d\r\n" % i)
        await trio.sleep(20)
    reply = await client.command(b".")
    assert (reply.code, reply.enhanced) == (250, "2.0.0")
    assert trio.current_time() - start == 400
    body = b"".join(b"line %d\r\n" % i for i in range(20))
    assert queue.messages[0][1].endswith(header + body)


async def test_stalled_data_is_cut_off_on_the_data_timer(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client, queue = await _to_data(nursery, data_timeout=45)
    await client.send(b"Subject: x\r\n\r\npartial")
    start = trio.current_time()
    reply = await client.reply()
    assert (reply.code, reply.enhanced) == (421, "4.4.2")
    assert trio.current_time() - start == 45
    assert queue.messages == []


async def test_failed_auth_delays_grow_and_the_fifth_closes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(nursery, make_gateway())
    await client.reply()
    await client.command(b"EHLO c")
    waits = []
    for _ in range(5):
        start = trio.current_time()
        reply = await client.command(plain_auth(password="wrong"))
        waits.append(trio.current_time() - start)
        assert (reply.code, reply.enhanced) == (535, "5.7.8")
    assert waits == [0, 1, 2, 4, 8]
    closing = await client.reply()
    assert (closing.code, closing.enhanced) == (421, "4.7.0")
    assert await client.closed()


async def test_delay_applies_to_the_first_answer_of_the_next_auth(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await connect(nursery, make_gateway())
    await client.reply()
    await client.command(b"EHLO c")
    assert (await client.command(plain_auth(password="wrong"))).code == 535
    start = trio.current_time()
    assert (await client.command(b"AUTH LOGIN")).code == 334  # the challenge waits 1 s
    assert trio.current_time() - start == 1


async def test_an_address_that_keeps_failing_gets_454_until_the_window_passes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    gateway = make_gateway(auth_failures_per_address=3, auth_failure_window=600)
    for _ in range(3):
        client = await connect(nursery, gateway, client_address="198.51.100.7:1")
        await client.reply()
        await client.command(b"EHLO c")
        assert (await client.command(plain_auth(password="wrong"))).code == 535
        await client.command(b"QUIT")
    client = await connect(nursery, gateway, client_address="198.51.100.7:2")
    await client.reply()
    await client.command(b"EHLO c")
    reply = await client.command(plain_auth())  # even the right password
    assert (reply.code, reply.enhanced) == (454, "4.7.0")
    other = await connect(nursery, gateway, client_address="198.51.100.8:1")
    await other.login()  # another address is not affected
    await trio.sleep(600)
    client = await connect(nursery, gateway, client_address="198.51.100.7:3")
    await client.login()


async def test_eleventh_connection_of_a_user_gets_421_and_slots_come_back(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    gateway = make_gateway()
    clients = []
    for _ in range(10):
        client = await connect(nursery, gateway)
        await client.login()
        clients.append(client)
    assert gateway.slots.in_use("alice") == 10
    eleventh = await connect(nursery, gateway)
    await eleventh.reply()
    await eleventh.command(b"EHLO c")
    reply = await eleventh.command(plain_auth())
    assert (reply.code, reply.enhanced) == (421, "4.7.0")
    assert "too many connections for this user" in reply.text
    assert await eleventh.closed()
    bob = await connect(nursery, gateway)
    await bob.login("bob")  # other users are not affected
    # Released after QUIT ...
    assert (await clients[0].command(b"QUIT")).code == 221
    await clients[0].closed()
    await trio.testing.wait_all_tasks_blocked()
    assert gateway.slots.in_use("alice") == 9
    # ... after the client drops the connection ...
    await clients[1].stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert gateway.slots.in_use("alice") == 8
    # ... and after the idle timeout.
    await trio.sleep(IDLE)
    await trio.testing.wait_all_tasks_blocked()
    assert gateway.slots.in_use("alice") == 0
    assert gateway.slots.users == 0  # bob's went too: the dict does not grow without end
    again = await connect(nursery, gateway)
    await again.login()


async def test_queue_down_gives_451_at_mail_before_any_upload(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    queue = MemoryQueue(available=False)
    client = await connect(nursery, make_gateway(queue))
    await client.login()
    reply = await client.command(b"MAIL FROM:<alice@example.com>")
    assert (reply.code, reply.enhanced) == (451, "4.3.0")


async def test_queue_lost_during_data_gives_451_and_nothing_stored(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client, queue = await _to_data(nursery)
    queue.available = False
    reply = await client.command(b"From: alice@example.com\r\n\r\nbody\r\n.")
    assert (reply.code, reply.enhanced) == (451, "4.3.0")
    assert queue.messages == []


async def test_node_connection_cap_refuses_before_the_greeting(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    gateway = make_gateway(max_connections=2)
    first = await connect(nursery, gateway)
    second = await connect(nursery, gateway)
    assert (await first.reply()).code == 220
    assert (await second.reply()).code == 220
    third = await connect(nursery, gateway)
    reply = await third.reply()
    assert (reply.code, reply.enhanced) == (421, "4.7.0")
    assert "too many connections" in reply.text
    assert await third.closed()


async def test_a_crash_inside_a_session_is_a_421_and_never_escapes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    class BrokenQueue(MemoryQueue):
        async def publish(self, *args: object) -> object:  # type: ignore[override]
            raise RuntimeError("a bug")  # the one fault with no real cause to trigger

    gateway = make_gateway(BrokenQueue())
    client = await connect(nursery, gateway)
    await client.login()
    await client.command(b"MAIL FROM:<alice@example.com>")
    await client.command(b"RCPT TO:<bob@example.net>")
    await client.command(b"DATA")
    reply = await client.command(b"From: alice@example.com\r\n\r\nhello\r\n.")
    assert (reply.code, reply.enhanced) == (421, "4.3.0")
    assert await client.closed()
    await trio.testing.wait_all_tasks_blocked()
    assert gateway.slots.in_use("alice") == 0
    assert gateway.open_connections == 0
    again = await connect(nursery, gateway)  # and the gateway goes on serving
    assert (await again.reply()).code == 220


async def test_a_client_that_stops_reading_is_cut_off_too(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    gateway = make_gateway()
    client_stream, server_stream = trio.testing.lockstep_stream_pair()  # no buffering at all
    nursery.start_soon(gateway.handle, server_stream, PLAIN, "192.0.2.1:1")
    await trio.testing.wait_all_tasks_blocked()
    assert gateway.open_connections == 1
    # We never read the greeting: the reply cannot be written, and the idle rule ends it.
    await trio.sleep(IDLE - 1)
    await trio.testing.wait_all_tasks_blocked()
    assert gateway.open_connections == 1
    await trio.sleep(1)
    await trio.testing.wait_all_tasks_blocked()
    assert gateway.open_connections == 0
    await client_stream.aclose()
