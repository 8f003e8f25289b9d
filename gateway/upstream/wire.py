"""The NATS client protocol, sans-IO: a byte-stream parser for what the server sends, and
encoders for what the client sends (https://docs.nats.io/reference/reference-protocols/nats-protocol).

A WebSocket frame may hold part of an operation or several of them: the parser takes bytes in
any split and gives back whole operations. It imports nothing but the standard library and attrs.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs

MAX_CONTROL_LINE = 64 * 1024  # octets; INFO carries the server's JSON and may be long
MAX_HEADER_BLOCK = 64 * 1024  # octets, the server's own limit on a header block
HEADER_VERSION = b"NATS/1.0"

Headers = tuple[tuple[str, str], ...]


class ProtocolError(Exception):
    """The server sent something that is not the NATS protocol: the connection is unusable."""


@attrs.frozen
class Info:
    """INFO: the server's description of itself (may come again at any time)."""

    data: dict[str, Any]


@attrs.frozen
class Msg:
    """MSG or HMSG: a message for one of our subscriptions."""

    subject: str
    sid: str
    reply: str | None
    payload: bytes = attrs.field(repr=lambda p: f"<{len(p)} bytes>")
    headers: Headers = ()
    status: int | None = None  # the status of a header-only reply, e.g. 503 no responders
    description: str = ""

    def header(self, name: str) -> str | None:
        lower = name.lower()
        for key, value in self.headers:
            if key.lower() == lower:
                return value
        return None


@attrs.frozen
class Ping:
    pass


@attrs.frozen
class Pong:
    pass


@attrs.frozen
class Ok:
    pass


@attrs.frozen
class Err:
    """-ERR: the server's complaint; most close the connection."""

    message: str


ServerOp = Info | Msg | Ping | Pong | Ok | Err
PING = Ping()
PONG = Pong()
OK = Ok()


def parse_headers(block: bytes) -> tuple[int | None, str, Headers]:
    """A header block (`NATS/1.0[ status [description]]` CRLF, fields, CRLF): the status, its
    description and the fields in order (a name may repeat)."""
    lines = block.split(b"\r\n")
    first = lines[0]
    if not first.startswith(HEADER_VERSION):
        raise ProtocolError(f"bad header block start: {first[:40]!r}")
    status: int | None = None
    description = ""
    rest = first[len(HEADER_VERSION) :].strip()
    if rest:
        code, _, desc = rest.partition(b" ")
        if not code.isdigit():
            raise ProtocolError(f"bad status in header block: {first[:40]!r}")
        status = int(code)
        description = desc.decode("utf-8", "replace")
    fields: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            raise ProtocolError(f"bad header line: {line[:40]!r}")
        fields.append((name.decode("utf-8", "replace"), value.strip().decode("utf-8", "replace")))
    return status, description, tuple(fields)


@attrs.define(eq=False)
class Parser:
    """Turns the server's byte stream into operations."""

    _buf: bytearray = attrs.field(factory=bytearray)
    # A MSG/HMSG whose control line is read and whose payload is still arriving:
    # (subject, sid, reply, header length, total length).
    _pending: tuple[str, str, str | None, int, int] | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data

    def __iter__(self) -> Parser:
        return self

    def __next__(self) -> ServerOp:
        op = self.next_op()
        if op is None:
            raise StopIteration
        return op

    def next_op(self) -> ServerOp | None:
        """The next whole operation, or None until more bytes arrive."""
        if self._pending is not None:
            return self._payload()
        buf = self._buf
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) > MAX_CONTROL_LINE:
                raise ProtocolError("control line too long")
            return None
        line = bytes(buf[:end])
        del buf[: end + 2]
        verb, _, rest = line.partition(b" ")
        verb = verb.upper()
        if verb == b"MSG" or verb == b"HMSG":
            self._pending = self._msg_line(verb, rest)
            return self._payload()
        if verb == b"PING":
            return PING
        if verb == b"PONG":
            return PONG
        if verb == b"+OK":
            return OK
        if verb == b"-ERR":
            return Err(rest.strip().strip(b"'").decode("utf-8", "replace"))
        if verb == b"INFO":
            try:
                data = json.loads(rest)
            except ValueError as exc:
                raise ProtocolError(f"INFO is not JSON: {exc}") from None
            if not isinstance(data, dict):
                raise ProtocolError("INFO is not a JSON object")
            return Info(data)
        raise ProtocolError(f"unknown operation {line[:40]!r}")

    @staticmethod
    def _msg_line(verb: bytes, rest: bytes) -> tuple[str, str, str | None, int, int]:
        # The server may put two spaces where an optional field is absent: split on runs.
        fields = rest.split()
        try:
            if verb == b"MSG":
                if len(fields) == 3:
                    subject, sid, size = fields
                    reply = None
                elif len(fields) == 4:
                    subject, sid, reply_b, size = fields
                    reply = reply_b.decode()
                else:
                    raise ProtocolError(f"bad MSG line: {rest[:80]!r}")
                total = int(size)
                hdr = 0
            else:
                if len(fields) == 4:
                    subject, sid, hdr_b, size = fields
                    reply = None
                elif len(fields) == 5:
                    subject, sid, reply_b, hdr_b, size = fields
                    reply = reply_b.decode()
                else:
                    raise ProtocolError(f"bad HMSG line: {rest[:80]!r}")
                hdr = int(hdr_b)
                total = int(size)
        except (ValueError, UnicodeDecodeError):
            raise ProtocolError(f"bad {verb.decode()} line: {rest[:80]!r}") from None
        if total < 0 or hdr < 0 or hdr > total or hdr > MAX_HEADER_BLOCK:
            raise ProtocolError(f"bad sizes in {verb.decode()} line: {rest[:80]!r}")
        return subject.decode("utf-8", "replace"), sid.decode(), reply, hdr, total

    def _payload(self) -> Msg | None:
        assert self._pending is not None
        subject, sid, reply, hdr, total = self._pending
        buf = self._buf
        if len(buf) < total + 2:
            return None
        if buf[total : total + 2] != b"\r\n":
            raise ProtocolError("message payload not followed by CRLF")
        with memoryview(buf) as view:  # one copy (bytes(buf[:total]) makes two: see _data.py)
            raw = view[:total].tobytes()
        del buf[: total + 2]
        self._pending = None
        if hdr:
            status, description, headers = parse_headers(raw[:hdr])
            return Msg(subject, sid, reply, raw[hdr:], headers, status, description)
        return Msg(subject, sid, reply, raw)


# --- what the client sends ------------------------------------------------------------------


_WHITESPACE = re.compile(r"\s")
_BAD_HEADER_NAME = re.compile(r"[\s:]")
_SENDABLE_NAMES: set[str] = set()


def _check_token(value: str, what: str) -> bytes:
    if not value or _WHITESPACE.search(value):
        raise ValueError(f"invalid {what}: {value!r}")
    return value.encode()


def connect(options: dict[str, Any]) -> bytes:
    return b"CONNECT " + json.dumps(options, separators=(",", ":")).encode() + b"\r\n"


def ping() -> bytes:
    return b"PING\r\n"


def pong() -> bytes:
    return b"PONG\r\n"


def sub(subject: str, sid: str) -> bytes:
    return b"SUB %s %s\r\n" % (_check_token(subject, "subject"), _check_token(sid, "sid"))


def unsub(sid: str) -> bytes:
    return b"UNSUB %s\r\n" % _check_token(sid, "sid")


def header_block(headers: Headers) -> bytes:
    """`NATS/1.0` CRLF, one `Name: value` CRLF per field, CRLF."""
    text = "".join([f"{name}: {value}\r\n" for name, value in headers])
    for name, value in headers:
        if name not in _SENDABLE_NAMES:
            if not name or _BAD_HEADER_NAME.search(name):
                raise ValueError(f"header field cannot be sent: {name!r}")
            if len(_SENDABLE_NAMES) < 1024:  # the gateway's own few names, checked once
                _SENDABLE_NAMES.add(name)
        if "\r" in value or "\n" in value:
            raise ValueError(f"header field cannot be sent: {name!r}")
    block = b"NATS/1.0\r\n" + text.encode() + b"\r\n"
    if len(block) > MAX_HEADER_BLOCK:
        raise ValueError(f"header block of {len(block)} octets is over {MAX_HEADER_BLOCK}")
    return block


def pub(
    subject: str,
    reply: str | None,
    payload: bytes | list[bytes],
    headers: Headers = (),
    prefix: bytes = b"",
) -> list[bytes]:
    """HPUB (with headers) or PUB: the pieces to write, payload not copied. The message is
    `prefix` then `payload`, which may come in pieces: a message as received, in its DATA
    chunks, with a few header lines before it, goes out without a copy of its megabytes."""
    subj = _check_token(subject, "subject")
    rep = b" " + _check_token(reply, "reply subject") if reply else b""
    body = [payload] if isinstance(payload, bytes) else list(payload)
    if prefix:
        body.insert(0, prefix)
    size = sum(map(len, body))
    if headers:
        block = header_block(headers)
        head = b"HPUB %s%s %d %d\r\n" % (subj, rep, len(block), len(block) + size)
        return [head, block, *body, b"\r\n"]
    return [b"PUB %s%s %d\r\n" % (subj, rep, size), *body, b"\r\n"]
