"""The grouped parser input gives the stock parser's result on any CRLF message, however split."""

from __future__ import annotations

import base64
import binascii
import email.policy
import itertools
from email.message import Message
from email.parser import BytesFeedParser

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.message import Rules, check, header_section, new_parser
from gateway.message._lines import group_lines
from gateway.message.policy import _base64_size_of

# Lines chosen to exercise every reader of the feed parser: header sections, continuations,
# mbox From_ lines, boundaries of two nestings (open, close, near misses), blank lines, MIME
# headers that open multiparts, message/rfc822 and delivery-status parts, and body text with
# colons, dashes and white space in every position.
LINES = [
    "From: alice@example.com",
    "To: bob@example.net",
    "Subject: hello: world",
    "X-Odd:",
    ":starts with a colon",
    "no colon here",
    "text: with a colon after a word",
    "two words: then a colon",
    " continuation",
    "\tcontinuation with a tab",
    "From someone@example.com Sat Jan  3 01:05:34 1996",
    "From nowhere",
    "",
    "",
    "--B",
    "--B--",
    "--C",
    "--C--",
    "--B trailing",
    "-- signature",
    "- dash item",
    "---",
    'Content-Type: multipart/mixed; boundary="B"',
    'Content-Type: multipart/alternative; boundary="C"',
    "Content-Type: message/rfc822",
    "Content-Type: message/delivery-status",
    "Content-Type: text/plain",
    "Content-Transfer-Encoding: base64",
    "MIME-Version: 1.0",
    "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "http://example.com/path",
    "a-b-c",
    "\x80\xff high octets",
]


def dump(msg: Message) -> list[object]:
    """Everything the checks read, part by part."""
    out: list[object] = []
    for part in msg.walk():
        out.append(
            (
                part.get_content_type(),
                part.get_unixfrom(),
                list(part.raw_items()),
                [type(d).__name__ for d in part.defects],
                part.preamble,
                part.epilogue,
                None if part.is_multipart() else part.get_payload(),
            )
        )
    return out


def fed(parser: BytesFeedParser, data: bytes, cuts: list[int]) -> BytesFeedParser:
    at = 0
    for cut in sorted(cuts):
        parser.feed(data[at:cut])
        at = cut
    parser.feed(data[at:])
    return parser


def parse(parser: BytesFeedParser, data: bytes, cuts: list[int]) -> Message:
    return fed(parser, data, cuts).close()


messages = st.lists(st.sampled_from(LINES), max_size=60).map(
    lambda lines: "".join(line + "\r\n" for line in lines).encode("latin-1")
)


@settings(max_examples=600, deadline=None)
@given(data=messages, cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=6))
@example(
    data=b"Content-Type: message/delivery-status\r\n\r\nA: b\r\ninert\r\nmore\r\n\r\nC: d\r\n",
    cuts=[],
)
@example(data=b"From: a@b\r\n--B\r\n\r\n", cuts=[3, 12, 13])
def test_same_parse_as_the_stock_input(data: bytes, cuts: list[int]) -> None:
    stock = parse(BytesFeedParser(policy=email.policy.default), data, cuts)
    grouped = parse(new_parser(), data, cuts)
    assert dump(grouped) == dump(stock)
    rules = Rules(owns=lambda a: True, user="u")
    assert check(data, rules, fed(new_parser(), data, cuts)) == check(data, rules, fast=False)


@given(messages)
def test_groups_are_whole_lines_in_order(data: bytes) -> None:
    text = data.decode("latin-1")
    groups = group_lines(text)
    assert "".join(groups) == text
    assert all(g.endswith("\r\n") for g in groups)


def test_a_big_message_is_a_handful_of_groups() -> None:
    """The point of it all: 76-octet base64 and text lines go over in runs, not one by one."""
    body = base64.encodebytes(bytes(range(256)) * 4096).replace(b"\n", b"\r\n")
    data = (
        b'From: a@b\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n\r\n'
        + b"Plain text, line after line.\r\n" * 5000
        + b"--B\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + body
        + b"--B--\r\n"
    )
    groups = group_lines(data.decode("latin-1"))
    assert len(groups) < 20
    assert dump(parse(new_parser(), data, [])) == dump(
        parse(BytesFeedParser(policy=email.policy.default), data, [])
    )


def _strict_size(body: bytes) -> int | None:
    text = body.translate(None, b"\r\n \t")
    if len(text) % 4:
        return None
    try:
        return len(binascii.a2b_base64(text, strict_mode=True))
    except binascii.Error:
        return None


B64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\r\n \t!-"


@given(
    st.one_of(
        st.binary(max_size=40).map(base64.b64encode),
        st.lists(st.sampled_from(list(B64_CHARS)), max_size=20).map(bytes),
        st.tuples(
            st.binary(min_size=1, max_size=40).map(base64.b64encode),
            st.integers(min_value=0, max_value=60),
            st.sampled_from(list(B64_CHARS)),
        ).map(lambda t: t[0][: t[1] % len(t[0])] + bytes([t[2]]) + t[0][t[1] % len(t[0]) :]),
    ),
    st.integers(min_value=1, max_value=9),
)
def test_base64_size_agrees_with_a_strict_decode(body: bytes, step: int) -> None:
    """Whatever the slices it is checked in (a real body goes in half megabytes)."""
    pieces = (body[i : i + step] for i in range(0, len(body), step))
    assert _base64_size_of(pieces) == _strict_size(body)


@given(data=messages, cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=6))
@example(data=b"From: a@b\r\n\r\nbody\r\n", cuts=[10, 11, 12, 13])  # the blank line split
def test_chunks_are_checked_as_the_whole(data: bytes, cuts: list[int]) -> None:
    """The session checks and stores a message in the chunks it came in, never joined."""
    points = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    end = data.find(b"\r\n\r\n")
    assert header_section(chunks) == (data if end < 0 else data[: end + 2])
    rules = Rules(owns=lambda a: True, user="u")
    assert check(chunks, rules) == check(data, rules)
