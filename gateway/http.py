"""GET /healthz, /readyz and /metrics, over h11 (one request per connection)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import h11
import structlog
import trio

from .config import split_address

log = structlog.get_logger()

SECONDS = 1.0
REQUEST_TIMEOUT = 5 * SECONDS  # to send a whole request and read the answer
MAX_REQUEST = 16 * 1024  # octets of request head


async def _respond(
    stream: trio.abc.Stream,
    routes: dict[str, Callable[[], tuple[int, str]]],
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
    with trio.move_on_after(REQUEST_TIMEOUT):
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(MAX_REQUEST)))
                    continue
                if isinstance(event, h11.Request):
                    break
                return  # closed, or something that is not a request
            target = event.target.decode("ascii", "replace").split("?", 1)[0]
            route = routes.get(target)
            if event.method not in (b"GET", b"HEAD"):
                status, body = 405, "method not allowed\n"
            elif route is None:
                status, body = 404, "not found\n"
            else:
                status, body = route()
            data = body.encode()
            content_type = (
                b"text/plain; version=0.0.4; charset=utf-8"
                if target == "/metrics"
                else b"text/plain; charset=utf-8"
            )
            headers = [
                (b"content-type", content_type),
                (b"content-length", b"%d" % len(data)),
                (b"connection", b"close"),
            ]
            out = conn.send(h11.Response(status_code=status, headers=headers))
            if event.method != b"HEAD":  # a 404 or 405 has its body too
                out += conn.send(h11.Data(data=data))
            out += conn.send(h11.EndOfMessage())
            await stream.send_all(out)
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return


async def _handle(
    routes: dict[str, Callable[[], tuple[int, str]]], stream: trio.SocketStream
) -> None:
    try:
        await _respond(stream, routes)
    except Exception:
        # An exception here would end serve_listeners, and the node with it: one odd request
        # to the health port must never do that.
        log.exception("http.error")
    finally:
        await trio.aclose_forcefully(stream)


async def serve_http(
    address: str,
    routes: dict[str, Callable[[], tuple[int, str]]],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `routes` (path -> (status, text)) on `address` until cancelled; starts with the
    bound port."""
    host, port = split_address(address)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("http.listening", address=f"{host}:{bound}")
    task_status.started(bound)
    await trio.serve_listeners(partial(_handle, routes), listeners)
