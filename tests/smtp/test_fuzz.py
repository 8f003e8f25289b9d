"""Property tests: chunking never changes the outcome; no input makes the core raise or hang."""

from __future__ import annotations

import itertools
from unittest import mock

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.smtp import ConnectionClosed, DataChunk, Event, MessageComplete, _data

from .driver import AUTH, EHLO, IN_TXN, PLAINTEXT, SUBMISSION, Transcript, b64, drive

VALID_SESSION = (
    EHLO
    + AUTH
    + b"MAIL FROM:<alice@example.com> SIZE=100 BODY=8BITMIME\r\n"
    + b"RCPT TO:<bob@example.net>\r\nRCPT TO:<carol@example.org> NOTIFY=NEVER\r\n"
    + b"DATA\r\nFrom: alice@example.com\r\n\r\n..stuffed\r\nbody\r\n.\r\n"
    + b"RSET\r\nNOOP\r\nMAIL FROM:<alice@example.com>\r\nRCPT TO:<d@example.net>\r\n"
    + b"DATA\r\n.\r\nHELP\r\nVRFY x\r\nFROB\r\nQUIT\r\n"
)


def normalized(events: list[Event]) -> list[object]:
    """Events with consecutive DataChunks merged: chunk boundaries follow the reads."""
    out: list[object] = []
    for e in events:
        if isinstance(e, DataChunk) and out and isinstance(out[-1], bytes):
            out[-1] += e.data
        elif isinstance(e, DataChunk):
            out.append(e.data)
        else:
            out.append(e)
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


REFERENCE = drive([VALID_SESSION])


@given(st.lists(st.integers(min_value=0), max_size=60))
def test_any_split_of_a_valid_session_gives_the_same_events(cuts: list[int]) -> None:
    t = drive(split_at(VALID_SESSION, cuts))
    assert normalized(t.events) == normalized(REFERENCE.events)
    assert t.output == REFERENCE.output


def test_reference_session_is_what_we_think() -> None:
    assert [c for c, _ in REFERENCE.codes] == [
        220,
        250,
        235,
        250,
        250,
        250,
        354,
        250,
        250,
        250,
        250,
        250,
        354,
        250,
        214,
        252,
        500,
        221,
    ]
    done = [e for e in REFERENCE.events if isinstance(e, MessageComplete)]
    assert len(done) == 2


def assert_still_sane(t: Transcript) -> None:
    t.replies  # noqa: B018 - parsing asserts every reply line is well formed
    assert t.closed, "a client that closed its side always ends the session"
    assert isinstance(t.events[-1], ConnectionClosed)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000), st.lists(st.integers(min_value=0), max_size=20))
def test_random_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    assert_still_sane(drive(split_at(data, cuts)))
    assert_still_sane(drive(split_at(data, cuts), SUBMISSION))


_WORDS = [
    b"EHLO x",
    b"HELO x",
    b"AUTH PLAIN",
    b"AUTH LOGIN",
    b"AUTH PLAIN " + b64("\0alice\0s3cret"),
    b"*",
    b"=",
    b"MAIL FROM:<alice@example.com>",
    b"MAIL FROM:<>",
    b"RCPT TO:<b@example.net>",
    b"DATA",
    b".",
    b"..",
    b"RSET",
    b"NOOP",
    b"QUIT",
    b"STARTTLS",
    b"VRFY",
    b"HELP",
    b"\x00",
    b"\xff\xfe",
    b"MAIL FROM:<\xc3\xa5@x.org> SMTPUTF8",
    b"RCPT TO:<@a,@b:c@d>",
    b"x" * 600,
    b"SIZE=99999999999999999999999",
    b"<",
    b">",
    b" ",
    b"\r",
    b"\n",
    b"\r\n",
]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(_WORDS) | st.binary(max_size=20), max_size=80),
    st.sampled_from([b"\r\n", b"\n", b"\r", b""]),
    st.lists(st.integers(min_value=0), max_size=20),
)
def test_random_command_soup_never_raises(words: list[bytes], sep: bytes, cuts: list[int]) -> None:
    data = sep.join(words) + sep
    for prefix in (b"", EHLO + AUTH, IN_TXN + b"DATA\r\n"):
        assert_still_sane(drive(split_at(prefix + data, cuts)))


_LINE = st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@given(st.lists(_LINE, max_size=40), st.lists(st.integers(min_value=0), max_size=30))
def test_dot_stuffing_round_trip(lines: list[bytes], cuts: list[int]) -> None:
    """What a client dot-stuffs, the core gives back exactly, however the bytes arrive."""
    message = b"".join(line + b"\r\n" for line in lines)
    stuffed = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    t = drive(split_at(IN_TXN + b"DATA\r\n" + stuffed + b".\r\nQUIT\r\n", cuts))
    assert t.messages == [message]
    assert t.codes[-2:] == [(250, "2.0.0"), (221, "2.0.0")]


# --- DATA against a reference written line by line ----------------------------------------
# The reader checks whole regions with bytes methods (counts, one translate, a stepping rfind);
# this model says the same things the slow, obvious way. Small limits make long lines and
# oversized messages common.
SMALL_LIMITS = attrs.evolve(PLAINTEXT, max_text_line=12, max_message_size=150)


def reference(body: bytes) -> tuple[bytes, set[str]]:
    """The message a body before the final dot carries, and what is wrong with it."""
    problems = set()
    for i, octet in enumerate(body):
        if octet == 0x0D and body[i + 1 : i + 2] != b"\n":
            problems.add("bare")
        if octet == 0x0A and body[i - 1 : i] != b"\r":
            problems.add("bare")
    message = (b"\r\n" + body).replace(b"\r\n.", b"\r\n")[2:]
    if any(len(line) > SMALL_LIMITS.max_text_line for line in message.split(b"\r\n")):
        problems.add("long")
    if len(message) > SMALL_LIMITS.max_message_size:
        problems.add("size")
    return message, problems


REASONS = {"bare": "bare CR or LF", "long": "line longer than", "size": "too big"}


LINES = st.lists(
    st.tuples(
        st.sampled_from([b"", b"", b".", b".."]),  # a line-start dot, stuffed or not
        st.integers(0, 16),  # octets of text: the limit is 12
        st.sampled_from([b"", b"", b"", b"", b"", b"\r", b"\n"]),  # now and then a bare one
        st.integers(0, 16),  # where it goes
    ),
    max_size=10,
)


# Regions from _VIEW_FROM octets on leave the buffer through a memoryview: 0 puts every one
# of them on that path.
@pytest.mark.parametrize("view_from", [_data._VIEW_FROM, 0])
@given(LINES, st.lists(st.integers(0, 200), max_size=8))
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_data_reader_agrees_with_a_line_by_line_reference(
    view_from: int, lines: list[tuple[bytes, int, bytes, int]], cuts: list[int]
) -> None:
    with mock.patch.object(_data, "_VIEW_FROM", view_from):
        check_against_reference(lines, cuts)


def check_against_reference(lines: list[tuple[bytes, int, bytes, int]], cuts: list[int]) -> None:
    body = b""
    for dot, length, bare, at in lines:
        text = dot + b"x" * length
        text = text[:at] + bare + text[at:]
        if text != b".":  # a lone dot would end the message
            body += text + b"\r\n"
    message, problems = reference(body)
    t = drive(split_at(IN_TXN + b"DATA\r\n" + body + b".\r\nQUIT\r\n", cuts), SMALL_LIMITS)
    [done] = [e for e in t.events if isinstance(e, MessageComplete)]
    if not problems:
        assert done.reply is None
        assert bytes(t.data) == message
        assert done.size == len(message)
    else:
        assert done.reply is not None
        assert done.reply.code in (550, 552)
        if len(problems) == 1:  # with several, the first region to show one decides
            assert REASONS[problems.pop()] in done.reply.text
    assert t.replies[-1].code == 221  # and the session goes on after the message
