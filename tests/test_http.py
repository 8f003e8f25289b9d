"""The small HTTP endpoint: every request gets an answer and none can stop the node. A balancer,
a scanner or a typo sends whatever it likes to this port."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.http import serve_http

ROUTES: dict[str, Callable[[], tuple[int, str]]] = {
    "/healthz": lambda: (200, "ok\n"),
    "/readyz": lambda: (503, "draining\n"),
}


async def exchange(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        await stream.send_eof()  # all of it: the server need not wait for more
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                data += chunk
    return data


def status_and_body(response: bytes) -> tuple[int, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    ("request_line", "status", "body"),
    [
        (b"GET /healthz HTTP/1.1", 200, b"ok\n"),
        (b"GET /readyz HTTP/1.1", 503, b"draining\n"),
        (b"GET /nothing HTTP/1.1", 404, b"not found\n"),
        (b"HEAD /healthz HTTP/1.1", 200, b""),
        (b"POST /healthz HTTP/1.1", 405, b"method not allowed\n"),
        (b"PUT /healthz HTTP/1.1", 405, b"method not allowed\n"),
        (b"OPTIONS * HTTP/1.1", 405, b"method not allowed\n"),
        (b"DELETE /metrics HTTP/1.0", 405, b"method not allowed\n"),
    ],
)
async def test_every_method_gets_a_whole_answer(
    nursery: trio.Nursery, request_line: bytes, status: int, body: bytes
) -> None:
    port = await nursery.start(serve_http, "127.0.0.1:0", ROUTES)
    extra = b"Content-Length: 0\r\n" if request_line.startswith((b"POST", b"PUT")) else b""
    response = await exchange(port, request_line + b"\r\nHost: gw\r\n" + extra + b"\r\n")
    assert status_and_body(response) == (status, body)
    # and the endpoint is still there
    assert status_and_body(await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")) == (
        200,
        b"ok\n",
    )


PIECES = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"CONNECT ",
    b"/healthz",
    b"*",
    b" HTTP/1.1\r\n",
    b" HTTP/1.0\r\n",
    b"Host: x\r\n",
    b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: keep-alive\r\n",
    b"\r\n",
    b"hello",
    b"\x00",
    b"\xff",
]


@given(st.lists(st.sampled_from(PIECES) | st.binary(max_size=20), max_size=12))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
async def test_no_request_stops_the_endpoint(pieces: list[bytes]) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, "127.0.0.1:0", ROUTES)
        await exchange(port, b"".join(pieces))
        answer = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert status_and_body(answer) == (200, b"ok\n")
        nursery.cancel_scope.cancel()
