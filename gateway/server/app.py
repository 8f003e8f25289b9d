"""`serve`: the whole gateway on one node, from a Config."""

from __future__ import annotations

import errno
import os
import socket
import ssl
import sys
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import attrs
import structlog
import trio

from ..auth import Authenticator, UsersFileError, UserStore
from ..config import Config, Listener
from ..http import serve_http
from ..proxy_protocol import Header
from ..smtp import TlsMode
from ..upstream import StreamSettings, Upstream, run_embedded_nats
from ..upstream.embedded import embedded_max_payload
from .proxied import PrefixedStream, read_header, trusted
from .session import Gateway

log = structlog.get_logger()

GIL_SWITCH_INTERVAL = 0.002  # seconds
ACCEPT_RETRY = 0.1  # seconds to wait when accept fails for want of descriptors or memory
# accept(2) failures that mean "out of something", not "this socket is broken"
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
# accept(2) failures for a connection that went away before it was taken (as trio ignores)
_ACCEPT_GONE_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
ACCEPT_BATCH = 64  # connections taken at one wake-up before the other tasks get a turn


@attrs.frozen
class Running:
    """What `serve` started: the bound address of each listener, and the shared state."""

    gateway: Gateway
    addresses: tuple[tuple[Listener, str, int], ...]  # listener, bound host, bound port
    http_port: int
    _listeners: tuple[trio.CancelScope, ...]

    def port(self, tls: TlsMode) -> int:
        return next(port for listener, _, port in self.addresses if listener.tls is tls)

    def reload(self) -> None:
        """SIGHUP: read the users file and the TLS certificate again. Connections are not
        touched; new AUTHs and handshakes use the new ones. A file that does not load leaves
        the old one in place, said in the log."""
        gateway = self.gateway
        config = gateway.config
        try:
            store = UserStore.load(config.users.file)
        except UsersFileError as exc:
            log.error("reload.users_failed", reason=str(exc))
        else:
            gateway.authenticator.store = store
            log.info("reload.users", users=len(store.users))
        if gateway.ssl_context is not None:
            # A new context, swapped in only once it loaded: loading into the live one would
            # keep a new certificate whose key then failed to load (half a renewal), and
            # every handshake after that would fail. Open sessions keep the context they had.
            try:
                context = ssl_context(config)
            except (OSError, ssl.SSLError) as exc:
                log.error("reload.tls_failed", reason=str(exc))
            else:
                gateway.ssl_context = context
                log.info("reload.tls", certificate=str(config.tls.certificate))

    async def drain(self) -> None:
        """Stop taking connections and let transactions in flight finish, within
        drain_timeout; then return (the caller cancels the rest)."""
        gateway = self.gateway
        log.info("gateway.draining", open_connections=gateway.open_connections)
        gateway.start_draining()
        for scope in self._listeners:
            scope.cancel()
        with trio.move_on_after(gateway.config.limits.drain_timeout) as scope:
            await gateway.wait_all_closed()
        log.info(
            "gateway.drained",
            complete=not scope.cancelled_caught,
            open_connections=gateway.open_connections,
        )


def ssl_context(config: Config) -> ssl.SSLContext | None:
    if not any(listener.tls is not TlsMode.NONE for listener in config.listeners):
        return None
    assert config.tls.certificate is not None and config.tls.private_key is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls.certificate, config.tls.private_key)
    return context


def stream_settings(config: Config) -> StreamSettings:
    return StreamSettings(
        name=config.upstream.stream,
        subject=config.upstream.subject,
        duplicate_window=config.upstream.duplicate_window,
        max_message_size=config.limits.max_message_size,
    )


async def serve(
    config: Config,
    *,
    authenticator: Authenticator | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the gateway until cancelled."""
    # Message checks run Python code in worker threads; the event loop gets the GIL back
    # after at most this long (CPython's default is 5 ms).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    settings = stream_settings(config)
    if authenticator is None:
        authenticator = Authenticator(UserStore.load(config.users.file))
    context = ssl_context(config)
    async with trio.open_nursery() as nursery:
        url = config.upstream.url
        if url is None:
            embedded = await nursery.start(
                partial(
                    run_embedded_nats,
                    config.data_dir,
                    max_payload=embedded_max_payload(settings.max_msg_size),
                )
            )
            url = embedded.websocket_url
        upstream = Upstream.create(url, settings, config.upstream.ack_timeout)
        await nursery.start(upstream.client.run)
        gateway = Gateway.create(config, authenticator, upstream, context)
        # Sessions live in their own nursery: closing the listeners must not end them.
        sessions = await nursery.start(_sessions_nursery)
        listeners: list[trio.CancelScope] = []
        addresses = []
        for listener in config.listeners:
            sockets = [
                _detached(trio_listener)
                for trio_listener in await trio.open_tcp_listeners(
                    listener.port, host=listener.host
                )
            ]
            for sock in sockets:
                host, port = sock.getsockname()[:2]
                addresses.append((listener, host, port))
                log.info(
                    "listener.open",
                    address=f"{host}:{port}",
                    tls=listener.tls.value,
                    plaintext_auth=listener.allow_plaintext_auth,
                )
            listeners.append(trio.CancelScope())
            nursery.start_soon(_listen, listeners[-1], gateway, listener, sockets, sessions)
        http_port = await nursery.start(serve_http, config.http.address, _routes(gateway))
        log.info("gateway.ready", hostname=config.hostname, users=len(authenticator.store.users))
        task_status.started(Running(gateway, tuple(addresses), http_port, tuple(listeners)))


async def _sessions_nursery(*, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


async def _listen(
    scope: trio.CancelScope,
    gateway: Gateway,
    listener: Listener,
    sockets: list[socket.socket],
    sessions: trio.Nursery,
) -> None:
    with scope:
        async with trio.open_nursery() as nursery:
            for sock in sockets:
                nursery.start_soon(_accept_loop, gateway, listener, sock, sessions)
    log.info("listener.closed", listener=listener.address)


def _detached(trio_listener: trio.SocketListener) -> socket.socket:
    """The listening socket under a trio SocketListener (bound and listening as trio made it,
    dual-stack rules included), as a non-blocking socket of the standard library."""
    trio_sock = trio_listener.socket
    family, type_, proto = trio_sock.family, trio_sock.type, trio_sock.proto
    sock = socket.socket(family, type_, proto, fileno=trio_sock.detach())
    sock.setblocking(False)
    return sock


def _routes(gateway: Gateway) -> dict[str, Callable[[], tuple[int, str]]]:
    def healthz() -> tuple[int, str]:
        return 200, "ok\n"

    def readyz() -> tuple[int, str]:
        if gateway.draining:
            return 503, "draining\n"
        if not gateway.upstream.available:
            return 503, "upstream unavailable\n"
        return 200, "ready\n"

    def metrics() -> tuple[int, str]:
        gateway.metrics.set("upstream_connected", int(gateway.upstream.available))
        gateway.metrics.set("draining", int(gateway.draining))
        return 200, gateway.metrics.render()

    return {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}


def _format(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _accept_loop(
    gateway: Gateway, listener: Listener, sock: socket.socket, sessions: trio.Nursery
) -> None:
    """Accept connections on the non-blocking listening socket `sock`, which this loop owns
    and closes, and start each one's session in `sessions`.

    On the socket itself, not through trio.SocketListener: its accept ends with a turn for
    every other task and then asks for the peer's address the kernel just gave, a third of
    what accepting costs (42 against 31 us of CPU per connection here). This loop takes every
    connection waiting, up to ACCEPT_BATCH, at each wake-up. Not trio.serve_listeners either:
    its handler wrapper is one more frame kept for the life of every connection, and it
    closes every stream again after the session has (a cancel scope and a task switch per
    connection). Every coroutine `_accept` returns closes its own stream.
    """
    try:
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(ACCEPT_BATCH):
                try:
                    conn, peer = sock.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in _ACCEPT_GONE_ERRNOS:
                        continue
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    log.error(
                        "listener.accept_failed",
                        listener=listener.address,
                        error=os.strerror(exc.errno),
                    )
                    await trio.sleep(ACCEPT_RETRY)
                    break
                sessions.start_soon(_accept, gateway, listener, conn, peer)
    finally:
        trio.lowlevel.notify_closing(sock)
        sock.close()


def _accept(
    gateway: Gateway, listener: Listener, conn: socket.socket, peer: Any
) -> Coroutine[Any, Any, None]:
    """The coroutine that serves a new connection, and closes it at the end. Not a coroutine
    function itself: a frame of its own would be kept for the whole life of every
    connection."""
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
    host, port = peer[0], peer[1]
    if not listener.proxy_protocol:
        return gateway.handle(stream, listener, _format(host, port))
    return _accept_proxied(gateway, listener, stream, host, port)


async def _accept_proxied(
    gateway: Gateway, listener: Listener, stream: trio.SocketStream, host: str, port: int
) -> None:
    if not trusted(listener, host):
        log.warning("proxy.untrusted", peer=_format(host, port), listener=listener.address)
        await trio.aclose_forcefully(stream)
        return
    result: tuple[Header, bytes] | str = "no PROXY header in time"
    try:
        with trio.move_on_after(gateway.config.limits.proxy_timeout):
            try:
                result = await read_header(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                result = "connection lost"
    except BaseException:  # a shutdown's cancellation: nobody else will close it
        await trio.aclose_forcefully(stream)
        raise
    if isinstance(result, str):
        # A balancer's health check connects and closes: that is not worth a log line.
        level = log.debug if result == "closed without a byte" else log.warning
        level("proxy.refused", peer=_format(host, port), reason=result)
        await trio.aclose_forcefully(stream)
        return
    header, rest = result
    proxied = PrefixedStream(stream, rest)  # the session closes it
    if header.client is None:  # LOCAL: the balancer's own connection, served as such
        await gateway.handle(proxied, listener, _format(host, port), quiet=True)
    else:
        await gateway.handle(proxied, listener, _format(*header.client))
