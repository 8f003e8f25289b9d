"""The PROXY protocol header, versions 1 and 2 (HAProxy's proxy-protocol.txt), sans-IO.

`parse(data)` looks at the first bytes of a connection and says: need more, invalid, or a
header of N octets carrying the client's address (None for a LOCAL command or UNKNOWN family:
the balancer's own connection, e.g. a health check).
"""

from __future__ import annotations

import ipaddress
import struct

import attrs

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # octets with CRLF (proxy-protocol.txt §2.1)
V2_HEADER = 16  # octets before the addresses
V2_MAX_LENGTH = 2048  # octets of addresses and TLVs we accept (the spec allows 65535)
_V2_LENGTHS = {0x1: 12, 0x2: 36}  # TCP over IPv4 / IPv6: addresses and ports


class NeedMore:
    """Not enough bytes yet to decide."""


NEED_MORE = NeedMore()


@attrs.frozen
class Invalid:
    reason: str


@attrs.frozen
class Header:
    length: int  # octets the header took; what follows belongs to the client
    client: tuple[str, int] | None  # None: LOCAL / UNKNOWN (the balancer itself)


def parse(data: bytes) -> Header | Invalid | NeedMore:
    """Decide from the start of a connection's bytes."""
    if data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)]:
        if len(data) < V2_HEADER:
            return NEED_MORE
        return _v2(data)
    if V1_PREFIX.startswith(data[: len(V1_PREFIX)]) and len(data) < len(V1_PREFIX):
        return NEED_MORE
    if data.startswith(V1_PREFIX):
        return _v1(data)
    return Invalid("no PROXY protocol header")


def _v1(data: bytes) -> Header | Invalid | NeedMore:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        return NEED_MORE if len(data) < V1_MAX else Invalid("v1 header too long")
    fields = data[:end].split(b" ")
    if fields[1:2] == [b"UNKNOWN"]:
        return Header(end + 2, None)
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        return Invalid("v1 header malformed")
    _, family, source, _destination, sport, _dport = fields
    try:
        address = ipaddress.ip_address(source.decode("ascii"))
        port = int(sport)
    except (ValueError, UnicodeDecodeError):
        return Invalid("v1 address or port malformed")
    if address.version != (4 if family == b"TCP4" else 6) or not 0 <= port <= 65535:
        return Invalid("v1 address does not match its family")
    if not sport.isdigit() or (len(sport) > 1 and sport.startswith(b"0")):
        return Invalid("v1 port malformed")
    return Header(end + 2, (str(address), port))


def _v2(data: bytes) -> Header | Invalid | NeedMore:
    version_command, family, length = struct.unpack("!BBH", data[12:16])
    if version_command >> 4 != 2:
        return Invalid("v2 header with an unknown version")
    command = version_command & 0xF
    if command not in (0, 1) or length > V2_MAX_LENGTH:
        return Invalid("v2 header with an unknown command or an oversized length")
    total = V2_HEADER + length
    if len(data) < total:
        return NEED_MORE
    if command == 0:  # LOCAL: the balancer's own connection
        return Header(total, None)
    address_family, transport = family >> 4, family & 0xF
    if address_family == 0:  # UNSPEC
        return Header(total, None)
    need = _V2_LENGTHS.get(address_family)
    if need is None or transport != 1:
        return Invalid("v2 header with an unsupported family (only TCP over IPv4 and IPv6)")
    if length < need:
        return Invalid("v2 header shorter than its addresses")
    body = data[V2_HEADER:total]
    if address_family == 1:
        source = ipaddress.IPv4Address(body[0:4])
        port = struct.unpack("!H", body[8:10])[0]
    else:
        source = ipaddress.IPv6Address(body[0:16])  # type: ignore[assignment]
        port = struct.unpack("!H", body[32:34])[0]
    return Header(total, (str(source), port))
