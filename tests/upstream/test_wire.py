"""The NATS wire parser and encoders, without I/O."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.upstream import wire

INFO = b'INFO {"server_id":"X","version":"2.15.1","max_payload":9437184,"headers":true}\r\n'
MSG = b"MSG _INBOX.a.1 1 11\r\nhello world\r\n"
MSG_TWO_SPACES = b"MSG mail.x 7  5\r\nhello\r\n"
MSG_REPLY = b"MSG foo 2 reply.to 3\r\nabc\r\n"
HMSG = b"HMSG _INBOX.a.2 1 34 39\r\nNATS/1.0\r\nA: 1\r\nA: 2\r\nB-c: x y\r\n\r\nhello\r\n"
_STATUS_BLOCK = b"NATS/1.0 503 No Responders\r\n\r\n"
STATUS = b"HMSG _INBOX.a.3 1 %d %d\r\n%s\r\n" % (
    len(_STATUS_BLOCK),
    len(_STATUS_BLOCK),
    _STATUS_BLOCK,
)
OPS = [
    INFO,
    MSG,
    MSG_TWO_SPACES,
    MSG_REPLY,
    HMSG,
    STATUS,
    b"PING\r\n",
    b"PONG\r\n",
    b"+OK\r\n",
    b"-ERR 'Authorization Violation'\r\n",
]
STREAM = b"".join(OPS)


def parse_all(chunks: list[bytes]) -> list[wire.ServerOp]:
    parser = wire.Parser()
    out: list[wire.ServerOp] = []
    for chunk in chunks:
        parser.feed(chunk)
        out.extend(parser)
    return out


EXPECTED = parse_all([STREAM])


def test_every_operation_is_understood() -> None:
    info, msg, msg2, msg3, hmsg, status, ping, pong, ok, err = EXPECTED
    assert isinstance(info, wire.Info)
    assert info.data["max_payload"] == 9437184
    assert msg == wire.Msg("_INBOX.a.1", "1", None, b"hello world")
    assert msg2 == wire.Msg("mail.x", "7", None, b"hello")
    assert msg3 == wire.Msg("foo", "2", "reply.to", b"abc")
    assert isinstance(hmsg, wire.Msg)
    assert hmsg.payload == b"hello"
    assert hmsg.headers == (("A", "1"), ("A", "2"), ("B-c", "x y"))
    assert hmsg.header("b-C") == "x y"
    assert isinstance(status, wire.Msg)
    assert (status.status, status.description, status.payload) == (503, "No Responders", b"")
    assert (ping, pong, ok) == (wire.PING, wire.PONG, wire.OK)
    assert err == wire.Err("Authorization Violation")


@pytest.mark.parametrize("op", OPS, ids=lambda o: o[:12].decode())
def test_each_operation_split_at_every_byte(op: bytes) -> None:
    whole = parse_all([op])
    assert len(whole) == 1
    for i in range(1, len(op)):
        assert parse_all([op[:i], op[i:]]) == whole, i
    assert parse_all([op[i : i + 1] for i in range(len(op))]) == whole


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=30))
def test_any_split_of_a_stream(cuts: list[int]) -> None:
    points = sorted({0, len(STREAM), *cuts})
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(points)]
    assert parse_all(chunks) == EXPECTED


def test_payload_may_hold_crlf_and_operation_names() -> None:
    payload = b"PING\r\nMSG x 1 2\r\n\r\n"
    frame = b"MSG s 1 %d\r\n%s\r\n" % (len(payload), payload) + b"PONG\r\n"
    assert parse_all([frame]) == [wire.Msg("s", "1", None, payload), wire.PONG]


def test_big_payload_arrives_in_pieces() -> None:
    payload = bytes(range(256)) * 40000
    frame = b"MSG s 1 %d\r\n%s\r\n" % (len(payload), payload)
    chunks = [frame[i : i + 65536] for i in range(0, len(frame), 65536)]
    [msg] = parse_all(chunks)
    assert isinstance(msg, wire.Msg)
    assert msg.payload == payload


@pytest.mark.parametrize(
    "garbage",
    [
        b"HELLO\r\n",
        b"MSG a\r\n",
        b"MSG a 1 x\r\n",
        b"MSG a 1 -5\r\n",
        b"HMSG a 1 10 5\r\n",
        b"MSG a 1 3\r\nabcXY",
        b"INFO {not json}\r\n",
        b"INFO [1]\r\n",
        b"HMSG a 1 6 6\r\nHTTP/1\r\n",
        b"HMSG a 1 14 14\r\nNATS/1.0 abc\r\n\r\n",
    ],
)
def test_garbage_is_a_protocol_error(garbage: bytes) -> None:
    parser = wire.Parser()
    parser.feed(garbage)
    with pytest.raises(wire.ProtocolError):
        list(parser)


def test_endless_control_line_is_refused() -> None:
    parser = wire.Parser()
    parser.feed(b"INFO " + b"x" * (wire.MAX_CONTROL_LINE + 10))
    with pytest.raises(wire.ProtocolError):
        parser.next_op()


@given(st.binary(max_size=500))
def test_random_bytes_give_operations_or_protocol_error(data: bytes) -> None:
    parser = wire.Parser()
    parser.feed(data)
    with contextlib.suppress(wire.ProtocolError):
        list(parser)


def test_hpub_encoding_round_trips_through_the_parser() -> None:
    headers = (("Nats-Msg-Id", "abc"), ("Gateway-Rcpt-To", "a@x"), ("Gateway-Rcpt-To", "b@y"))
    pieces = wire.pub("mail.submit", "_INBOX.z.9", b"body\r\n", headers)
    raw = b"".join(pieces)
    # What the client sends, seen as the server would deliver it.
    delivered = raw.replace(b"HPUB mail.submit _INBOX.z.9", b"HMSG mail.submit 1 _INBOX.z.9", 1)
    [msg] = parse_all([delivered])
    assert isinstance(msg, wire.Msg)
    assert msg.headers == headers
    assert msg.payload == b"body\r\n"
    assert msg.reply == "_INBOX.z.9"


def test_pub_without_headers() -> None:
    assert b"".join(wire.pub("s", None, b"xy")) == b"PUB s 2\r\nxy\r\n"
    assert b"".join(wire.pub("s", "r", b"")) == b"PUB s r 0\r\n\r\n"


@pytest.mark.parametrize(
    ("name", "value"),
    [("A:B", "x"), ("A B", "x"), ("", "x"), ("A", "x\r\nInjected: 1"), ("A", "x\ny")],
)
def test_header_injection_is_refused(name: str, value: str) -> None:
    with pytest.raises(ValueError, match="header field"):
        wire.header_block(((name, value),))


@pytest.mark.parametrize("subject", ["", "a b", "a\r\nPUB x 1", "a\tb"])
def test_bad_subjects_are_refused(subject: str) -> None:
    with pytest.raises(ValueError, match="subject"):
        wire.pub(subject, None, b"")


def test_header_block_limit() -> None:
    with pytest.raises(ValueError, match="over"):
        wire.header_block((("X", "y" * wire.MAX_HEADER_BLOCK),))


def test_connect_is_compact_json() -> None:
    assert wire.connect({"verbose": False}) == b'CONNECT {"verbose":false}\r\n'


def test_the_wire_format_imports_no_io() -> None:
    """wire.py is sans-IO: its own imports are the standard library's pure parts and attrs."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(wire.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "json", "re", "typing", "attrs"}, imported


def test_a_prefix_goes_before_the_payload_without_a_copy() -> None:
    payload = b"the message\r\n"
    pieces = wire.pub("s", "r", payload, (("A", "b"),), prefix=b"Received: x\r\n")
    assert any(piece is payload for piece in pieces)  # the megabytes are not copied
    assert b"".join(pieces) == (
        b"HPUB s r 18 44\r\nNATS/1.0\r\nA: b\r\n\r\nReceived: x\r\nthe message\r\n\r\n"
    )
    assert b"".join(wire.pub("s", None, b"xy", prefix=b"p")) == b"PUB s 3\r\npxy\r\n"
