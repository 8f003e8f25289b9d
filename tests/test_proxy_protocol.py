"""The PROXY protocol parser, v1 and v2, without I/O."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import proxy_protocol as pp

V1_TCP4 = b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 25\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 587\r\n"
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"


def v2(command: int, family: int, body: bytes) -> bytes:
    return pp.V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


V2_TCP4 = v2(
    1,
    0x11,
    socket.inet_pton(socket.AF_INET, "198.51.100.9")
    + socket.inet_pton(socket.AF_INET, "10.0.0.1")
    + struct.pack("!HH", 51000, 587),
)
V2_TCP6 = v2(
    1,
    0x21,
    socket.inet_pton(socket.AF_INET6, "2001:db8::9")
    + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    + struct.pack("!HH", 52000, 465),
)
V2_TLVS = v2(1, 0x11, V2_TCP4[16:] + b"\x04\x00\x03abc")  # a TLV after the addresses
V2_LOCAL = v2(0, 0x00, b"")

GOOD = [
    (V1_TCP4, ("192.0.2.7", 40000)),
    (V1_TCP6, ("2001:db8::7", 40000)),
    (V1_UNKNOWN, None),
    (V2_TCP4, ("198.51.100.9", 51000)),
    (V2_TCP6, ("2001:db8::9", 52000)),
    (V2_TLVS, ("198.51.100.9", 51000)),
    (V2_LOCAL, None),
]


@pytest.mark.parametrize(("header", "client"), GOOD)
def test_valid_headers(header: bytes, client: tuple[str, int] | None) -> None:
    assert pp.parse(header + b"EHLO x\r\n") == pp.Header(len(header), client)


@pytest.mark.parametrize(("header", "client"), GOOD)
def test_every_truncation_needs_more(header: bytes, client: tuple[str, int] | None) -> None:
    for i in range(len(header)):
        assert pp.parse(header[:i]) is pp.NEED_MORE, i


@pytest.mark.parametrize(
    "data",
    [
        b"EHLO client\r\n",
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello where a header should be
        b"PROXY TCP4 192.0.2.7 10.0.0.1 40000\r\n",
        b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.300 10.0.0.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 99999 25\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 0040 25\r\n",
        b"PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n",
        b"PROXY " + b"x" * 200,
        pp.V2_SIGNATURE + b"\x10\x11\x00\x0c" + bytes(12),  # version 1 in a v2 header
        pp.V2_SIGNATURE + b"\x2f\x11\x00\x0c" + bytes(12),  # unknown command
        pp.V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12),  # UDP
        pp.V2_SIGNATURE + b"\x21\x31\x00\x0c" + bytes(12),  # AF_UNIX
        pp.V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),  # shorter than its addresses
        pp.V2_SIGNATURE + b"\x21\x11\xff\xff",  # far too long
        b"\r\n\r\n\x00\r\nQUIX\n" + bytes(8),  # a signature that is almost right
    ],
)
def test_invalid_headers(data: bytes) -> None:
    assert isinstance(pp.parse(data), pp.Invalid)


@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = pp.parse(data)
    assert isinstance(result, (pp.Header, pp.Invalid, pp.NeedMore))
    if isinstance(result, pp.Header):
        assert 0 < result.length <= len(data)
