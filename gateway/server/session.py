"""One SMTP session: the sans-IO core driven over a Trio stream.

The core decides what the protocol decides; this module decides what needs the world: who the
user is, whether a sender is theirs, whether the queue stored the message, and when time is up.
"""

from __future__ import annotations

import itertools
import os
import ssl
from collections.abc import Callable, Coroutine
from email.parser import BytesFeedParser
from functools import partial
from typing import Any, Protocol

import attrs
import structlog
import trio

from ..auth import Authenticator, User
from ..config import Config, Listener
from ..message import Rules, header_section, new_parser, trace_headers
from ..message import check as check_message
from ..metrics import Metrics
from ..smtp import (
    NEED_DATA,
    AuthChallenge,
    Authenticate,
    CommandEvent,
    ConnectionClosed,
    DataChunk,
    DataStart,
    MailFrom,
    MessageComplete,
    Phase,
    Rejected,
    Reply,
    ServerConnection,
    SessionConfig,
    State,
    TlsMode,
    replies,
)
from ..upstream import (
    MessageTooLarge,
    PubAck,
    Submission,
    SubmissionDigest,
    UpstreamError,
)
from .limits import AuthFailures, UserSlots
from .timers import SocketTimers, SocketWait

log = structlog.get_logger()

SECONDS = 1.0
RECEIVE_SIZE = 64 * 1024  # octets per read
AUTH_DELAYS = (1 * SECONDS, 2 * SECONDS, 4 * SECONDS, 8 * SECONDS)  # after 1, 2, 3, 4+ failures
CLOSE_TIMEOUT = 2 * SECONDS  # a last reply and the TLS close, on the way out
INLINE_CHECK_LIMIT = 32 * 1024  # octets: smaller messages are checked on the event loop
# Octets a session may read from a plain socket without yielding to other tasks: commands read
# straight from the socket while they are there, but every DATA read of a big upload yields.
EAGER_BYTES = 16 * 1024
MAX_LOOK_SKIPS = 15  # waits without a look after a round, after misses in a row
_ids = itertools.count(1)


class Queue(Protocol):
    """Where accepted mail goes: gateway.upstream.Upstream (NATS JetStream) in production."""

    @property
    def available(self) -> bool: ...

    async def publish(
        self, submission: Submission, message: bytes | list[bytes], prefix: bytes = b""
    ) -> PubAck: ...


@attrs.define(eq=False)
class Gateway:
    """What every session of one node shares."""

    config: Config
    authenticator: Authenticator
    upstream: Queue
    slots: UserSlots
    failures: AuthFailures
    ssl_context: ssl.SSLContext | None = None
    # Message checks are Python in worker threads, holding the GIL: a second one at a time adds
    # no parallelism, only contention with the event loop (4 concurrent 8 MiB uploads: worst
    # NOOP 24-32 ms with two, 23-27 ms with one).
    checks: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1))
    open_connections: int = 0
    metrics: Metrics = attrs.field(factory=Metrics)
    draining: bool = False
    # Waits of sessions for a command outside a transaction: a drain ends them.
    idle_waits: set[trio.CancelScope | SocketWait] = attrs.field(factory=set)
    timers: SocketTimers = attrs.field(factory=SocketTimers)
    _connection_closed: trio.Event = attrs.field(factory=trio.Event)
    _session_configs: dict[Listener, SessionConfig] = attrs.field(factory=dict)

    def start_draining(self) -> None:
        """Refuse new work: idle sessions are told 421 4.3.2; transactions may finish."""
        self.draining = True
        self.metrics.set("draining", 1)
        for scope in list(self.idle_waits):
            scope.cancel()

    async def wait_all_closed(self) -> None:
        while self.open_connections:
            await self._connection_closed.wait()

    @classmethod
    def create(
        cls,
        config: Config,
        authenticator: Authenticator,
        upstream: Queue,
        ssl_context: ssl.SSLContext | None = None,
    ) -> Gateway:
        limits = config.limits
        return cls(
            config,
            authenticator,
            upstream,
            UserSlots(limits.max_connections_per_user),
            AuthFailures(limits.auth_failures_per_address, limits.auth_failure_window),
            ssl_context,
        )

    def session_config(self, listener: Listener) -> SessionConfig:
        """One per listener, shared by its sessions (thousands of copies were kilobytes)."""
        config = self._session_configs.get(listener)
        if config is None:
            limits = self.config.limits
            config = self._session_configs[listener] = SessionConfig(
                hostname=self.config.hostname,
                tls_mode=listener.tls,
                allow_plaintext_auth=listener.allow_plaintext_auth,
                max_message_size=limits.max_message_size,
                max_recipients=limits.max_recipients,
            )
        return config

    def handle(
        self, stream: trio.abc.Stream, listener: Listener, client: str, *, quiet: bool = False
    ) -> Coroutine[Any, Any, None]:
        """Serve one accepted connection: the coroutine to await. It never raises (that would
        end the listener). Not a coroutine function of its own: each level of coroutine is a
        frame kept for the connection's life, hundreds of octets times every idle connection."""
        return Session(self, listener, stream, client, quiet=quiet).run()

    def connection_opened(self, listener: Listener) -> bool:
        """Count a new connection in; whether the node has room for it."""
        self.open_connections += 1
        self.metrics.inc("connections_total", listener=listener.address)
        self.metrics.inc("connections_open", listener=listener.address)
        return self.open_connections <= self.config.limits.max_connections

    def connection_closed(self, listener: Listener) -> None:
        self.open_connections -= 1
        self._connection_closed.set()
        self._connection_closed = trio.Event()
        self.metrics.inc("connections_open", -1, listener=listener.address)


def _finish_message(
    chunks: list[bytes],
    parser: BytesFeedParser | None,
    rules: Rules,
    trace: Callable[[bytes], bytes],
) -> tuple[Reply | None, bytes]:
    """The checks on a message whose chunks but the last were fed to `parser` (None: a
    message of one chunk, not fed at all): the reply that refuses it or None, and the trace
    header lines to put before it. The chunks are never joined: each copy of megabytes holds
    the GIL, and the event loop waits for it."""
    if parser is not None and chunks:
        parser.feed(chunks[-1])
    # The core hands over CRLF lines only (a bare CR or LF has the message refused already).
    problem = check_message(chunks, rules, parser, crlf_only=True)
    if problem is not None:
        return problem, b""
    return None, trace(header_section(chunks))


@attrs.define(eq=False)
class Session:
    gateway: Gateway
    listener: Listener
    stream: trio.abc.Stream
    client: str  # address:port
    conn: ServerConnection = attrs.field(init=False)
    quiet: bool = False  # the balancer's own connection: open and close logged at debug
    conn_id: str = attrs.field(factory=lambda: f"c{next(_ids)}")
    user: User | None = None
    close_reason: str = "closed"
    bytes_in: int = 0
    bytes_out: int = 0
    messages: int = 0
    _out: list[bytes] = attrs.field(factory=list)
    _idle_deadline: float = 0.0
    _data_deadline: float = 0.0
    _chunks: list[bytes] | None = None  # during DATA
    _digest: SubmissionDigest | None = None
    _parser: BytesFeedParser | None = None
    # A plain TCP stream's descriptor, or -1: bytes then go through the socket without trio's
    # stream layer, which yields to the scheduler on every send and receive that did not have
    # to wait (a task switch each, several per message).
    _fd: int = -1
    _eager: int = 0  # octets read since this session last waited or yielded
    _looks_to_skip: int = 0  # see _read_after_a_round
    _looks_skipped: int = 0
    _socket_wait: SocketWait | None = None

    def __attrs_post_init__(self) -> None:
        self.conn = ServerConnection(self.gateway.session_config(self.listener))
        if type(self.stream) is trio.SocketStream:
            self._fd = self.stream.socket.fileno()

    @property
    def client_host(self) -> str:
        return self.client.rpartition(":")[0].strip("[]")

    # --- the session's life -----------------------------------------------------------------

    async def run(self) -> None:
        """The connection's whole life, the node's count of connections included. One frame
        for all of it: each level of coroutine is kept for the connection's life."""
        gateway = self.gateway
        try:
            if not gateway.connection_opened(self.listener):
                log.warning("limit.node_connections", client=self.client)
                gateway.metrics.inc("limit_hits_total", limit="node_connections")
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await self.stream.send_all(replies.too_many_connections(self._hostname).wire)
                return
            structlog.contextvars.bind_contextvars(conn_id=self.conn_id, client=self.client)
            started = trio.current_time()
            summary = log.debug if self.quiet else log.info
            summary("session.open", listener=self.listener.address, tls=self.listener.tls.value)
            try:
                await self._serve()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.close_reason = "connection lost"
            except trio.TooSlowError:
                self.close_reason = "client stopped reading replies"
                log.info("session.timeout", during="reply")
                self.gateway.metrics.inc("timeouts_total", phase="reply")
            except Exception:
                self.close_reason = "internal error"
                log.exception("session.error")
                if not self.conn.closed:
                    with trio.move_on_after(CLOSE_TIMEOUT) as scope:
                        scope.shield = True
                        try:
                            self._out = [self.conn.send(replies.internal_error(self._hostname))]
                            await self._flush()
                        except Exception:  # the stream may be what broke
                            pass
            finally:
                if self._socket_wait is not None:
                    gateway.timers.forget(self._socket_wait)
                self._release_slot()
                self.gateway.metrics.inc("bytes_received_total", self.bytes_in)
                self.gateway.metrics.inc("bytes_sent_total", self.bytes_out)
                summary(
                    "session.close",
                    reason=self.close_reason,
                    duration=round(trio.current_time() - started, 3),
                    bytes_in=self.bytes_in,
                    bytes_out=self.bytes_out,
                    messages=self.messages,
                )
                structlog.contextvars.unbind_contextvars("conn_id", "client", "user")
        except Exception:
            log.exception("session.crash", client=self.client)  # caught above; belt and braces
        finally:
            gateway.connection_closed(self.listener)
            if type(self.stream) is trio.SocketStream:
                # Nothing left to say on plain TCP: the close itself never waits (aclose would
                # add a cancel scope and a task switch to every connection's end).
                self.stream.socket.close()
            else:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(self.stream)

    @property
    def _hostname(self) -> str:
        return self.gateway.config.hostname

    async def _serve(self) -> None:
        limits = self.gateway.config.limits
        conn = self.conn
        if self.listener.tls is TlsMode.IMPLICIT and not await self._tls_handshake():
            return
        self._queue(conn.send(replies.greeting(self._hostname)))
        self._idle_deadline = trio.current_time() + limits.idle_timeout
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                # A client that was just answered is most likely waiting for the answer: a
                # read now would nearly always find nothing (a system call and an exception
                # per reply, wasted). Otherwise, what is already there is read at once.
                answered = bool(self._out)
                await self._flush()
                in_data = conn.state is State.DATA
                deadline = self._data_deadline if in_data else self._idle_deadline
                idle = not in_data and conn.phase is Phase.IDLE
                data: bytes | bytearray | None = None
                if not (idle and self.gateway.draining):
                    fd = self._fd
                    if fd >= 0 and not answered and self._eager < EAGER_BYTES:
                        data = self._read_now(fd)  # what is already there, with no task switch
                    elif fd >= 0 and answered:
                        data = await self._read_after_a_round(fd)
                    # A drain may have begun during that round: an idle session does not wait.
                    if data is None and not (idle and self.gateway.draining):
                        self._eager = 0
                        if fd >= 0:
                            data = await self._wait_socket(fd, deadline, idle)
                        else:
                            # A bare CancelScope: move_on_at's contextmanager wrapper is a
                            # measurable share of a small message's CPU.
                            with trio.CancelScope(deadline=deadline) as scope:
                                if idle:
                                    self.gateway.idle_waits.add(scope)
                                try:
                                    data = await self.stream.receive_some(RECEIVE_SIZE)
                                finally:
                                    self.gateway.idle_waits.discard(scope)
                if data is None and idle and self.gateway.draining:
                    self.close_reason = "shutting down"
                    self._queue(conn.send(replies.shutting_down(self._hostname)))
                    await self._flush()
                    return
                if data is None:
                    self.close_reason = "DATA timeout" if in_data else "idle timeout"
                    log.info("session.timeout", during="DATA" if in_data else "command")
                    self.gateway.metrics.inc(
                        "timeouts_total", phase="DATA" if in_data else "command"
                    )
                    self._queue(conn.send(replies.timeout(self._hostname)))
                    await self._flush()
                    return
                self.bytes_in += len(data)
                self._eager += len(data)
                if in_data:
                    self._data_deadline = trio.current_time() + limits.data_progress_timeout
                conn.receive_data(data)
                continue
            if isinstance(event, DataChunk):
                chunks = self._chunks
                assert chunks is not None, "DATA without a started message"
                chunks.append(event.data)
                if self._digest is not None:
                    self._digest.update(event.data)
                if len(chunks) > 1:
                    # Parsed as it arrives, one chunk behind: the parse costs a little per
                    # read, and the last chunk, which closes every open part (joins of
                    # megabytes), is parsed with the check, off the event loop. A message
                    # of one chunk, most small ones, may need no parser at all.
                    if self._parser is None:
                        self._parser = new_parser()
                    self._parser.feed(chunks[-2])
                continue
            if isinstance(event, ConnectionClosed):
                self.close_reason = event.reason
                await self._flush()
                return
            reply = await self._answer(event)
            # A command answered: the wait for the next one starts now (an AUTH may have
            # waited for its check, a DATA for the queue's ack).
            self._idle_deadline = trio.current_time() + limits.idle_timeout
            self._queue(conn.send(reply))
            if conn.state is State.TLS_HANDSHAKE:
                await self._flush()
                if not await self._tls_handshake():
                    return
                conn.tls_established()
            elif conn.state is State.DATA and isinstance(event, DataStart):
                self._data_deadline = trio.current_time() + limits.data_progress_timeout
                self._start_message()

    async def _wait_socket(self, fd: int, deadline: float, idle: bool) -> bytes | None:
        """What the socket brings by `deadline` (b"" at its end), or None: the deadline passed
        or a drain ended an idle wait. On the socket itself, timed by the node's SocketTimers:
        no cancel scope per wait (see timers.py)."""
        wait = self._socket_wait
        if wait is None:
            wait = self._socket_wait = SocketWait(fd)
        if not self.gateway.timers.arm(wait, deadline):
            return None
        if idle:
            self.gateway.idle_waits.add(wait)
        try:
            while True:
                try:
                    await trio.lowlevel.wait_readable(fd)
                except trio.ClosedResourceError:
                    if wait.expired:
                        return None
                    raise
                data = self._read_now(fd)
                if data is not None:
                    return data
        finally:
            wait.waiting = False
            self.gateway.idle_waits.discard(wait)

    async def _read_after_a_round(self, fd: int) -> bytes | None:
        """What the socket holds after every other runnable task has had its turn, or None.

        A client that was just answered takes a round trip to send more. While the event loop
        is busy, a round of its tasks usually takes longer than that: a read after it finds
        the next command, with no epoll registration and no wake-up by the poller (small
        messages: about a tenth of their CPU). While it is calm the read finds nothing and
        costs a round and a failed read, so each miss in a row doubles the waits before the
        next look (at most MAX_LOOK_SKIPS).
        """
        if self._looks_skipped < self._looks_to_skip:
            self._looks_skipped += 1
            return None
        await trio.lowlevel.checkpoint()
        self._eager = 0
        data = self._read_now(fd)
        self._looks_skipped = 0
        if data is None:
            self._looks_to_skip = min(2 * self._looks_to_skip + 1, MAX_LOOK_SKIPS)
        else:
            self._looks_to_skip = 0
        return data

    def _queue(self, data: bytes) -> None:
        self._out.append(data)

    def _read_now(self, fd: int) -> bytes | None:
        """What the socket holds now (b"" at its end), or None when it holds nothing yet."""
        try:
            return os.read(fd, RECEIVE_SIZE)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise trio.BrokenResourceError(f"receive failed: {exc}") from exc

    async def _flush(self) -> None:
        if not self._out:
            return
        data = b"".join(self._out)
        self._out = []
        if self._fd >= 0:
            # Replies are small: the socket's buffer nearly always takes them whole.
            try:
                sent = os.write(self._fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise trio.BrokenResourceError(f"send failed: {exc}") from exc
            self.bytes_out += sent
            if sent == len(data):
                return
            data = data[sent:]
        # A client that stops reading our replies is as idle as one that stops writing.
        deadline = trio.current_time() + self.gateway.config.limits.idle_timeout
        with trio.CancelScope(deadline=deadline) as scope:
            await self.stream.send_all(data)
        if scope.cancelled_caught:
            raise trio.TooSlowError
        self.bytes_out += len(data)

    async def _tls_handshake(self) -> bool:
        context = self.gateway.ssl_context
        assert context is not None, "a TLS listener without an SSL context"
        tls = trio.SSLStream(self.stream, context, server_side=True)
        with trio.move_on_after(self.gateway.config.limits.idle_timeout) as scope:
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError as exc:
                self.close_reason = "TLS handshake failed"
                log.info("session.tls_failed", error=str(exc.__cause__ or exc))
                return False
        if scope.cancelled_caught:
            self.close_reason = "TLS handshake timeout"
            log.info("session.timeout", during="TLS handshake")
            self.gateway.metrics.inc("timeouts_total", phase="TLS handshake")
            return False
        self.stream = tls
        self._fd = -1  # the bytes on the socket are TLS records now
        log.debug("session.tls", version=tls.version(), cipher=(tls.cipher() or ("",))[0])
        return True

    # --- decisions ----------------------------------------------------------------------------

    async def _answer(self, event: CommandEvent) -> Reply:
        conn = self.conn
        starts_auth = conn.state is State.COMMAND and (
            isinstance(event, (AuthChallenge, Authenticate))
            or (isinstance(event, Rejected) and event.verb == "AUTH")
        )
        if starts_auth:
            if self.gateway.failures.blocked(self.client_host):
                log.warning("limit.auth_failures_per_address", address=self.client_host)
                self.gateway.metrics.inc("limit_hits_total", limit="auth_failures_per_address")
                return replies.AUTH_TEMPORARY_FAILURE
            if conn.auth_failures:
                await self._flush()  # earlier pipelined replies are not held back
                delay = AUTH_DELAYS[min(conn.auth_failures, len(AUTH_DELAYS)) - 1]
                await trio.sleep(delay)
        if isinstance(event, Authenticate):
            reply = await self._authenticate(event)
        elif isinstance(event, MailFrom):
            reply = self._mail_from(event)
        elif isinstance(event, DataStart):
            reply = event.reply if self.gateway.upstream.available else replies.QUEUE_UNAVAILABLE
        elif isinstance(event, MessageComplete):
            reply = await self._message_complete(event)
        else:
            assert event.reply is not None
            reply = event.reply
        if (
            isinstance(event, (AuthChallenge, Authenticate, Rejected))
            and (not isinstance(event, Rejected) or event.verb == "AUTH")
            and reply.code in (501, 535)
        ):
            self.gateway.failures.record(self.client_host)
        return reply

    async def _authenticate(self, event: Authenticate) -> Reply:
        user = await self.gateway.authenticator.verify(event.username, event.password)
        if user is None:
            log.info("auth.failure", mechanism=event.mechanism, username=event.username)
            self.gateway.metrics.inc("auth_total", result="failure")
            return replies.AUTH_INVALID
        if not self.gateway.slots.acquire(user.name):
            log.warning("limit.user_connections", user=user.name)
            self.gateway.metrics.inc("limit_hits_total", limit="user_connections")
            self.close_reason = "too many connections for this user"
            return replies.too_many_user_connections(self._hostname)
        self.user = user
        structlog.contextvars.bind_contextvars(user=user.name)
        log.info("auth.success", mechanism=event.mechanism)
        self.gateway.metrics.inc("auth_total", result="success")
        return replies.AUTH_OK

    def _count_rejection(self, reply: Reply) -> None:
        self.gateway.metrics.inc(
            "messages_total", outcome="rejected", reply=f"{reply.code} {reply.enhanced}"
        )

    def _release_slot(self) -> None:
        if self.user is not None:
            self.gateway.slots.release(self.user.name)
            self.user = None

    def _mail_from(self, event: MailFrom) -> Reply:
        assert self.user is not None
        if not self.gateway.upstream.available:
            log.info("message.deferred", reason="upstream unavailable", at="MAIL")
            self.gateway.metrics.inc("messages_total", outcome="deferred", reply="451 4.3.0")
            return replies.QUEUE_UNAVAILABLE
        if self.user.owns(event.address):
            return replies.SENDER_OK
        log.info(
            "message.rejected",
            code=553,
            enhanced="5.7.1",
            sender=event.address,
            reason="sender not owned by user",
        )
        return replies.sender_not_owned(event.address, self.user.name)

    def _start_message(self) -> None:
        envelope = self.conn.envelope
        assert envelope is not None and self.user is not None
        self._chunks = []
        self._digest = SubmissionDigest(self.user.name, envelope.mail_from, envelope.rcpt_to)
        self._parser = None

    async def _message_complete(self, event: MessageComplete) -> Reply:
        chunks, self._chunks = self._chunks or [], None
        digest, self._digest = self._digest, None
        parser, self._parser = self._parser, None
        envelope = event.envelope
        if event.reply is not None:
            self._count_rejection(event.reply)
            log.info(
                "message.rejected",
                code=event.reply.code,
                enhanced=event.reply.enhanced,
                reason=event.reply.text,
                sender=envelope.mail_from,
                size=event.size,
            )
            return event.reply
        assert self.user is not None and digest is not None
        limits = self.gateway.config.limits
        rules = Rules(
            owns=self.user.owns,
            user=self.user.name,
            smtputf8=envelope.smtputf8,
            max_attachment_size=limits.max_attachment_size,
        )
        queue_id = digest.queue_id()
        trace = partial(
            trace_headers,
            hostname=self._hostname,
            helo=self.conn.helo_name or "unknown",
            client_ip=self.client_host,
            tls=isinstance(self.stream, trio.SSLStream),
            smtputf8=envelope.smtputf8,
            queue_id=queue_id,
            rcpt_to=envelope.rcpt_to,
        )
        if event.size <= INLINE_CHECK_LIMIT:
            # A few milliseconds at most: cheaper here than the ~250 us of a thread hand-off.
            problem, trace_lines = _finish_message(chunks, parser, rules, trace)
        else:
            # A pure-Python parse holds the GIL, but in a thread it yields it to the event
            # loop at every switch interval.
            problem, trace_lines = await trio.to_thread.run_sync(
                _finish_message, chunks, parser, rules, trace, limiter=self.gateway.checks
            )
        if problem is not None:
            self._count_rejection(problem)
            log.info(
                "message.rejected",
                code=problem.code,
                enhanced=problem.enhanced,
                reason=problem.text,
                sender=envelope.mail_from,
                size=event.size,
            )
            return problem
        submission = Submission(
            user=self.user.name,
            client=self.client,
            mail_from=envelope.mail_from,
            rcpt_to=envelope.rcpt_to,
            msg_id=digest.msg_id(),
            queue_id=queue_id,
        )
        started = trio.current_time()
        try:
            # The chunks as received, the trace lines before them: nothing joins megabytes.
            ack = await self.gateway.upstream.publish(submission, chunks, prefix=trace_lines)
        except MessageTooLarge as exc:
            self.gateway.metrics.inc("messages_total", outcome="rejected", reply="552 5.3.4")
            log.info("message.rejected", code=552, enhanced="5.3.4", reason=str(exc))
            return replies.message_too_big(self.gateway.config.limits.max_message_size)
        except UpstreamError as exc:
            log.warning("message.deferred", reason=str(exc), queue_id=submission.queue_id)
            self.gateway.metrics.inc("messages_total", outcome="deferred", reply="451 4.3.0")
            return replies.QUEUE_UNAVAILABLE
        self.messages += 1
        self.gateway.metrics.inc("messages_total", outcome="accepted", reply="250 2.0.0")
        self.gateway.metrics.observe_latency(trio.current_time() - started)
        log.info(
            "message.accepted",
            queue_id=submission.queue_id,
            sender=envelope.mail_from,
            recipients=len(envelope.rcpt_to),
            size=event.size,
            upstream_latency=round(trio.current_time() - started, 4),
            seq=ack.seq,
            duplicate=ack.duplicate,
        )
        return replies.queued(submission.queue_id)
