"""A minimal driver for the core, standing in for the server: answers what the core leaves to
it with fixed rules, and records events and the bytes the client would read."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable

import attrs

from gateway.smtp import (
    NEED_DATA,
    Authenticate,
    CommandEvent,
    ConnectionClosed,
    DataChunk,
    Event,
    MailFrom,
    MessageComplete,
    Reply,
    ServerConnection,
    SessionConfig,
    State,
    TlsMode,
    replies,
)

HOST = "mx.test"
USER = "alice"
PASSWORD = "s3cret"
OWNED = frozenset({"alice@example.com", "ålice@exämple.com"})

PLAINTEXT = SessionConfig(hostname=HOST, tls_mode=TlsMode.NONE, allow_plaintext_auth=True)
NO_AUTH = SessionConfig(hostname=HOST, tls_mode=TlsMode.NONE)
SUBMISSION = SessionConfig(hostname=HOST, tls_mode=TlsMode.STARTTLS)
IMPLICIT = SessionConfig(hostname=HOST, tls_mode=TlsMode.IMPLICIT)


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


EHLO = b"EHLO client.test\r\n"
AUTH = b"AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}") + b"\r\n"
MAIL = b"MAIL FROM:<alice@example.com>\r\n"
RCPT = b"RCPT TO:<bob@example.net>\r\n"
READY = EHLO + AUTH  # a session ready for MAIL
IN_TXN = READY + MAIL + RCPT  # a transaction ready for DATA

_REPLY_LINE = re.compile(rb"(\d{3})([ -])(.*)\r\n")


def decide(event: CommandEvent) -> Reply:
    """The answers a server gives to what the core leaves to it."""
    if isinstance(event, Authenticate):
        ok = event.username == USER and event.password == PASSWORD
        return replies.AUTH_OK if ok else replies.AUTH_INVALID
    if isinstance(event, MailFrom):
        if event.address.lower() in OWNED:
            return replies.SENDER_OK
        return replies.sender_not_owned(event.address, USER)
    if isinstance(event, MessageComplete):
        return replies.queued("Q1")
    raise AssertionError(f"the core left {event!r} without a reply")


@attrs.frozen
class SentReply:
    code: int
    enhanced: str | None
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines)


def parse_replies(out: bytes) -> list[SentReply]:
    """Split what the server wrote into replies; asserts every line is well formed."""
    result: list[SentReply] = []
    lines: list[str] = []
    pos = 0
    while pos < len(out):
        m = _REPLY_LINE.match(out, pos)
        assert m is not None, f"malformed reply bytes at {pos}: {out[pos : pos + 80]!r}"
        pos = m.end()
        lines.append(m.group(3).decode())
        if m.group(2) == b" ":
            code = int(m.group(1))
            first = lines[0].split(" ", 1)[0]
            enhanced = first if re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", first) else None
            result.append(SentReply(code, enhanced, tuple(lines)))
            lines = []
    assert not lines, "an unfinished multi-line reply"
    return result


@attrs.define
class Transcript:
    events: list[Event] = attrs.field(factory=list)
    output: bytearray = attrs.field(factory=bytearray)
    data: bytearray = attrs.field(factory=bytearray)
    # The content of each message the core found nothing wrong with.
    messages: list[bytes] = attrs.field(factory=list)
    _current: bytearray = attrs.field(factory=bytearray)

    @property
    def replies(self) -> list[SentReply]:
        return parse_replies(bytes(self.output))

    @property
    def codes(self) -> list[tuple[int, str | None]]:
        return [(r.code, r.enhanced) for r in self.replies]

    @property
    def closed(self) -> bool:
        return bool(self.events) and isinstance(self.events[-1], ConnectionClosed)


def pump(
    conn: ServerConnection,
    t: Transcript,
    answer: Callable[[CommandEvent], Reply] = decide,
) -> None:
    """Take every event the core can give now, answering each."""
    while not t.closed:
        event = conn.next_event()
        if event is NEED_DATA:
            return
        t.events.append(event)
        if isinstance(event, ConnectionClosed):
            return
        if isinstance(event, DataChunk):
            t.data += event.data
            t._current += event.data
            continue
        if isinstance(event, MessageComplete):
            if event.reply is None:
                t.messages.append(bytes(t._current))
            t._current.clear()
        t.output += conn.send(event.reply or answer(event))
        if conn.state is State.TLS_HANDSHAKE:
            # What a server does next: the handshake. Here it simply succeeds; bytes the client
            # sends from now on are what it sends inside TLS.
            conn.tls_established()


def drive(
    chunks: Iterable[bytes],
    config: SessionConfig = PLAINTEXT,
    *,
    eof: bool = True,
    conn: ServerConnection | None = None,
    answer: Callable[[CommandEvent], Reply] = decide,
) -> Transcript:
    """Greet, feed `chunks` in order, then (with `eof`) close the client's side."""
    t = Transcript()
    if conn is None:
        conn = ServerConnection(config)
        t.output += conn.send(replies.greeting(config.hostname))
    for chunk in chunks:
        if t.closed:
            break
        conn.receive_data(chunk)
        pump(conn, t, answer)
    if eof and not t.closed:
        conn.receive_data(b"")
        pump(conn, t, answer)
    return t


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def both_ways(data: bytes, config: SessionConfig = PLAINTEXT) -> Transcript:
    """Drive `data` whole and one byte at a time; assert both give the same replies."""
    whole = drive([data], config)
    split = drive(bytewise(data), config)
    assert split.codes == whole.codes
    assert split.messages == whole.messages
    return whole
