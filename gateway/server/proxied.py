"""Accepting connections behind a load balancer that speaks the PROXY protocol."""

from __future__ import annotations

import ipaddress

import structlog
import trio

from .. import proxy_protocol
from ..config import Listener

log = structlog.get_logger()

READ = 512  # octets per read while looking for the header


class PrefixedStream(trio.abc.Stream):
    """A stream whose first bytes were already read: they are given back first."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


def trusted(listener: Listener, host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in listener.trusted_proxies)


async def read_header(stream: trio.abc.Stream) -> tuple[proxy_protocol.Header, bytes] | str:
    """The PROXY header and the bytes read past it, or why there is none. No deadline of
    its own: the caller's cancel scope bounds it."""
    data = b""
    while True:
        result = proxy_protocol.parse(data)
        if isinstance(result, proxy_protocol.Header):
            return result, data[result.length :]
        if isinstance(result, proxy_protocol.Invalid):
            return result.reason
        chunk = await stream.receive_some(READ)
        if not chunk:
            return "closed before a PROXY header" if data else "closed without a byte"
        data += chunk
