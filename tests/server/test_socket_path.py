"""A session on a plain TCP socket reads and writes the socket directly, without trio's stream
layer: these tests hold it to what the stream layer guaranteed. Other sessions get their turn
during a flood, a reply too big for the socket's buffer goes out whole and in order, a client
that stops reading is still cut off, and a client that vanishes ends only its own session."""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Any

import pytest
import structlog.testing
import trio
import trio.testing

from gateway.server import app, timers
from gateway.server import session as session_module
from gateway.smtp import Phase

from .harness import PLAIN, Client, MemoryQueue, make_gateway, plain_auth

BUFFER = 4 * 1024 * 1024


def socket_pair(
    server_send_buffer: int | None = None,
) -> tuple[trio.SocketStream, trio.SocketStream]:
    """Connected client and server streams over a real socket pair."""
    a, b = trio.socket.socketpair()
    for sock in (a, b):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    if server_send_buffer is not None:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, server_send_buffer)
    return trio.SocketStream(a), trio.SocketStream(b)


def session_input(body: bytes) -> bytes:
    return (
        b"EHLO client.test\r\n"
        + plain_auth()
        + b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n"
        + body
        + b".\r\nQUIT\r\n"
    )


async def test_a_flood_of_input_does_not_keep_other_tasks_waiting(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Everything the client will ever send is in the socket before the session starts, so
    # every read finds data at once: only the session's own rule makes it yield.
    events: list[int] = []  # octets read, and -1 for each wait on the socket
    real_read, real_wait = os.read, trio.lowlevel.wait_readable
    client_stream, server_stream = socket_pair()
    server_fd = server_stream.socket.fileno()

    def read(fd: int, n: int) -> bytes:
        data: bytes = real_read(fd, n)
        if fd == server_fd:
            events.append(len(data))
        return data

    async def wait_readable(fd: int) -> None:
        events.append(-1)
        await real_wait(fd)

    monkeypatch.setattr(os, "read", read)
    monkeypatch.setattr(trio.lowlevel, "wait_readable", wait_readable)
    queue = MemoryQueue()
    gateway = make_gateway(queue)
    body = b"From: alice@example.com\r\nSubject: flood\r\n\r\n"
    body += (b"y" * 510 + b"\r\n") * 1200  # about 600 KiB
    await client_stream.send_all(session_input(body))
    nursery.start_soon(gateway.handle, server_stream, PLAIN, "192.0.2.1:1")
    client = Client(client_stream)
    codes = [(await client.reply()).code for _ in range(7)]
    assert codes == [220, 250, 235, 250, 250, 354, 250]
    assert (await client.reply()).code == 221
    assert len(queue.messages) == 1
    # The most read between two yields: a read or two, never the whole flood (about 600 KiB).
    most = run = 0
    for octets in events:
        run = 0 if octets < 0 else run + octets
        most = max(most, run)
    assert sum(o for o in events if o > 0) > len(body)
    assert most <= 128 * 1024
    await client_stream.aclose()


async def test_replies_bigger_than_the_socket_buffer_arrive_whole_and_in_order(
    nursery: trio.Nursery,
) -> None:
    gateway = make_gateway()
    client_stream, server_stream = socket_pair(server_send_buffer=4096)
    nursery.start_soon(gateway.handle, server_stream, PLAIN, "192.0.2.1:1")
    client = Client(client_stream)
    assert (await client.reply()).code == 220
    # Pipelined, and not read until all are sent: the server's writes meet a full buffer.
    commands = [b"HELP\r\n", b"NOOP\r\n", b"VRFY someone\r\n"] * 700
    await client.send(b"EHLO client.test\r\n" + b"".join(commands) + b"QUIT\r\n")
    assert (await client.reply()).code == 250
    codes = [(await client.reply()).code for _ in commands]
    assert codes == [214, 250, 252] * 700
    assert (await client.reply()).code == 221
    assert await client.closed()
    await client_stream.aclose()


async def test_a_client_that_stops_reading_is_cut_off(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    gateway = make_gateway()
    client_stream, server_stream = socket_pair(server_send_buffer=4096)
    client_stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    nursery.start_soon(gateway.handle, server_stream, PLAIN, "192.0.2.1:1")
    # A flood of HELP, never read: the replies fill both buffers and the server must wait.
    await client_stream.send_all(b"EHLO client.test\r\n" + b"HELP\r\n" * 2000)
    await trio.testing.wait_all_tasks_blocked()
    assert gateway.open_connections == 1
    await trio.sleep(session_module.SECONDS * 31)  # the idle rule: 30 s
    await trio.testing.wait_all_tasks_blocked()
    assert gateway.open_connections == 0
    await client_stream.aclose()


async def test_a_client_that_vanishes_ends_only_its_own_session(nursery: trio.Nursery) -> None:
    gateway = make_gateway()
    client_stream, server_stream = socket_pair()
    nursery.start_soon(gateway.handle, server_stream, PLAIN, "192.0.2.1:1")
    client = Client(client_stream)
    await client.login()
    # Commands sent, then gone before the replies: the writes meet a closed socket.
    await client.send(b"HELP\r\n" * 100)
    await client_stream.aclose()
    with trio.fail_after(5):
        await gateway.wait_all_closed()
    other_client, other_server = socket_pair()
    nursery.start_soon(gateway.handle, other_server, PLAIN, "192.0.2.1:2")
    other = Client(other_client)
    await other.login()
    assert (await other.command(b"NOOP")).code == 250
    await other_client.aclose()


class _FailsOnce(socket.socket):
    """A real listening socket whose first accept fails as accept(2) can: at the descriptor
    limit, or for a connection the client gave up before it was taken. Faults a test cannot
    cause at will without starving its own process."""

    errno = errno.EMFILE
    failed = False

    def accept(self) -> tuple[socket.socket, Any]:
        if not self.failed:
            self.failed = True
            raise OSError(self.errno, os.strerror(self.errno))
        return super().accept()


class _OutOfDescriptorsOnce(_FailsOnce):
    errno = errno.EMFILE


class _AbortedOnce(_FailsOnce):
    errno = errno.ECONNABORTED


def _listening(cls: type[socket.socket] = socket.socket) -> socket.socket:
    sock = cls(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)  # every connection of a test waits to be taken, none refused
    sock.setblocking(False)
    return sock


@pytest.mark.parametrize(
    ("cls", "waits"), [(_OutOfDescriptorsOnce, app.ACCEPT_RETRY), (_AbortedOnce, 0.0)]
)
async def test_accept_failure_is_waited_out_or_passed_over_and_serving_goes_on(
    nursery: trio.Nursery, cls: type[_FailsOnce], waits: float
) -> None:
    """Out of descriptors: said in the log, and accept is tried again ACCEPT_RETRY later. A
    connection aborted before it was taken: passed over at once."""
    gateway = make_gateway()
    flaky = _listening(cls)
    port = flaky.getsockname()[1]
    with structlog.testing.capture_logs() as logs:
        nursery.start_soon(app._accept_loop, gateway, PLAIN, flaky, nursery)
        started = trio.current_time()
        client = Client(await trio.open_tcp_stream("127.0.0.1", port))
        await client.login()  # the greeting came: the connection was taken
    assert isinstance(flaky, _FailsOnce)
    assert flaky.failed
    assert trio.current_time() - started >= waits
    failed = [line for line in logs if line["event"] == "listener.accept_failed"]
    assert len(failed) == (1 if waits else 0)
    assert (await client.command(b"QUIT")).code == 221
    assert await client.closed()  # the session closed its own socket
    await client.stream.aclose()


async def test_accept_takes_every_waiting_connection_and_closes_its_socket() -> None:
    """Connections that wait together are each served, more than one wake-up takes; one the
    client reset before it was taken is served and ends on its own without stopping the
    loop; the loop closes its listening socket when it ends."""
    gateway = make_gateway()
    sock = _listening()
    port = sock.getsockname()[1]
    n = app.ACCEPT_BATCH * 2 + 5
    async with trio.open_nursery() as nursery:
        gone = socket.create_connection(("127.0.0.1", port))
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()  # a reset while it waits to be taken
        clients = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(n)]
        nursery.start_soon(app._accept_loop, gateway, PLAIN, sock, nursery)
        sessions = [Client(stream) for stream in clients]
        for client in sessions:
            assert (await client.reply()).code == 220
        for client in sessions:
            await client.send(b"QUIT\r\n")
        for client in sessions:
            assert (await client.reply()).code == 221
            await client.stream.aclose()
        with trio.fail_after(5):
            await gateway.wait_all_closed()
        nursery.cancel_scope.cancel()
    assert sock.fileno() == -1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)


async def test_idle_deadlines_of_many_sessions_are_each_kept_exactly(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """One task keeps every socket session's deadline (timers.py): sessions that start at
    different times, and sessions whose deadline moves on with each command, are each cut
    off exactly 30 s after their last command, and the heap holds no more than a few entries
    per session however many commands they sent."""
    gateway = make_gateway()
    closed_at: dict[int, float] = {}
    last_command: dict[int, float] = {}

    async def session(k: int, start: float, commands: int) -> None:
        await trio.sleep_until(start)
        client_stream, server_stream = socket_pair()
        nursery.start_soon(gateway.handle, server_stream, PLAIN, f"192.0.2.1:{k}")
        client = Client(client_stream)
        await client.login("bob" if k % 2 else "alice")  # 10 connections a user at most
        last_command[k] = trio.current_time()
        for _ in range(commands):  # a NOOP every 7 s moves the deadline on each time
            await trio.sleep(7)
            assert (await client.command(b"NOOP")).code == 250
            last_command[k] = trio.current_time()
        reply = await client.reply()
        assert (reply.code, reply.enhanced) == (421, "4.4.2")
        assert await client.closed()
        closed_at[k] = trio.current_time()
        await client_stream.aclose()

    start = trio.current_time()
    with trio.fail_after(300):  # virtual seconds: a deadline never kept fails, not hangs
        async with trio.open_nursery() as clients:
            for k in range(12):
                clients.start_soon(session, k, start + 2.5 * k, (k % 4) * 3)
            await trio.sleep(20)
            assert len(gateway.timers._heap) <= 2 * 12
    assert len(closed_at) == 12
    for k in range(12):
        assert closed_at[k] - last_command[k] == 30, k
    await trio.testing.wait_all_tasks_blocked()
    assert gateway.open_connections == 0


async def test_a_drain_ends_idle_socket_sessions_and_lets_transactions_finish(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    queue = MemoryQueue()
    gateway = make_gateway(queue)
    streams = [socket_pair() for _ in range(2)]
    for k, (_, server_stream) in enumerate(streams):
        nursery.start_soon(gateway.handle, server_stream, PLAIN, f"192.0.2.1:{k}")
    idle, busy = (Client(client_stream) for client_stream, _ in streams)
    await idle.login()
    await busy.login()
    assert (await busy.command(b"MAIL FROM:<alice@example.com>")).code == 250
    await trio.sleep(10)
    drained_at = trio.current_time()
    gateway.start_draining()
    with trio.fail_after(60):
        reply = await idle.reply()
    assert (reply.code, reply.enhanced) == (421, "4.3.2")
    assert trio.current_time() == drained_at  # at once, not at the idle deadline
    assert await idle.closed()
    # The transaction goes on to its end; then the session is idle, and is sent away too.
    assert (await busy.command(b"RCPT TO:<bob@example.net>")).code == 250
    assert (await busy.command(b"DATA")).code == 354
    reply = await busy.command(b"From: alice@example.com\r\n\r\nhi\r\n.")
    assert (reply.code, reply.enhanced) == (250, "2.0.0")
    reply = await busy.reply()
    assert (reply.code, reply.enhanced) == (421, "4.3.2")
    assert len(queue.messages) == 1
    for client_stream, _ in streams:
        await client_stream.aclose()


async def test_a_drain_that_begins_while_a_session_looks_after_a_round_ends_it_at_once(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look after a round is a turn for every other task: a drain may begin in it. The
    idle session is then told 421 4.3.2 at once, not at its idle deadline."""
    gateway = make_gateway()
    real = session_module.Session._read_after_a_round

    async def drain_meanwhile(self: session_module.Session, fd: int) -> bytes | None:
        if self.conn.phase is Phase.IDLE and self.user is not None:
            gateway.start_draining()  # as if during the round
        return await real(self, fd)

    monkeypatch.setattr(session_module.Session, "_read_after_a_round", drain_meanwhile)
    client_stream, server_stream = socket_pair()
    nursery.start_soon(gateway.handle, server_stream, PLAIN, "192.0.2.1:1")
    client = Client(client_stream)
    await client.login()
    drained_at = trio.current_time()
    with trio.fail_after(60):
        reply = await client.reply()
    assert (reply.code, reply.enhanced) == (421, "4.3.2")
    assert trio.current_time() == drained_at
    assert await client.closed()
    await client_stream.aclose()


async def test_ended_sessions_do_not_pile_up_in_the_timer_heap(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Fast churn leaves an entry a connection for up to an idle timeout: past PRUNE_FROM
    they are dropped, and a session still waiting keeps its deadline exactly."""
    gateway = make_gateway()
    client_stream, server_stream = socket_pair()
    nursery.start_soon(gateway.handle, server_stream, PLAIN, "192.0.2.1:1")
    waiting = Client(client_stream)
    assert (await waiting.reply()).code == 220
    started = trio.current_time()
    for k in range(3 * timers.PRUNE_FROM):
        churned_client, churned_server = socket_pair()
        nursery.start_soon(gateway.handle, churned_server, PLAIN, f"192.0.2.2:{k}")
        churned = Client(churned_client)
        assert (await churned.reply()).code == 220
        assert (await churned.command(b"QUIT")).code == 221
        assert await churned.closed()
        await churned_client.aclose()
        assert len(gateway.timers._heap) <= 2 * timers.PRUNE_FROM + 2
    assert trio.current_time() == started  # no virtual time passed: nothing came due
    with trio.fail_after(60):  # virtual: a deadline lost in the pruning fails, not hangs
        reply = await waiting.reply()
    assert (reply.code, reply.enhanced) == (421, "4.4.2")
    assert trio.current_time() - started == 30
    await client_stream.aclose()


@pytest.fixture
def looks(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often sessions looked for the client's next bytes after a round, and found some."""
    counts = {"looks": 0, "found": 0}
    real = session_module.Session._read_after_a_round

    async def counting(self: session_module.Session, fd: int) -> bytes | None:
        skipped = self._looks_skipped < self._looks_to_skip
        data = await real(self, fd)
        if not skipped:
            counts["looks"] += 1
            counts["found"] += data is not None
        return data

    monkeypatch.setattr(session_module.Session, "_read_after_a_round", counting)
    return counts


async def test_busy_sessions_find_their_clients_next_command_after_a_round(
    nursery: trio.Nursery, looks: dict[str, int]
) -> None:
    """Twenty clients, each sending its next command as soon as it has the reply: after
    answering, a session gives the others a round, and then often finds the next command
    waiting (a third of its looks here), without waiting on its socket. Every command is
    answered in order."""
    gateway = make_gateway()

    async def client(k: int) -> None:
        client_stream, server_stream = socket_pair()
        nursery.start_soon(gateway.handle, server_stream, PLAIN, f"192.0.2.1:{k}")
        client = Client(client_stream)
        await client.login("bob" if k % 2 else "alice")
        for i in range(30):
            reply = await client.command(b"NOOP %d" % i if i % 2 else b"HELP")
            assert reply.code in (250, 214)
        assert (await client.command(b"QUIT")).code == 221
        await client_stream.aclose()

    async with trio.open_nursery() as clients:
        for k in range(20):
            clients.start_soon(client, k)
    assert looks["found"] >= 20


async def test_a_slow_client_costs_its_session_few_looks(
    nursery: trio.Nursery, looks: dict[str, int]
) -> None:
    """A client that takes its time between commands is never there after a round: each miss
    in a row doubles the waits before the next look, so 40 commands cost 5 looks, not 40."""
    gateway = make_gateway()
    client_stream, server_stream = socket_pair()
    nursery.start_soon(gateway.handle, server_stream, PLAIN, "192.0.2.1:1")
    client = Client(client_stream)
    await client.login()
    before = dict(looks)
    for _ in range(40):
        await trio.sleep(0.002)
        assert (await client.command(b"NOOP")).code == 250
    assert looks["found"] == before["found"]
    assert looks["looks"] - before["looks"] <= 5
    assert (await client.command(b"QUIT")).code == 221
    await client_stream.aclose()
