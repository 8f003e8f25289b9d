"""DATA: the real end of data, dot-unstuffing, and every rejection after the final dot."""

from __future__ import annotations

import pytest

from gateway.smtp import DataChunk, MessageComplete, SessionConfig, TlsMode

from .driver import IN_TXN, PLAINTEXT, Transcript, both_ways, bytewise, drive

HEADER = b"From: alice@example.com\r\nSubject: t\r\n\r\n"


def send_message(body: bytes, config: SessionConfig = PLAINTEXT) -> Transcript:
    return both_ways(IN_TXN + b"DATA\r\n" + body + b"QUIT\r\n", config)


def completed(t: Transcript) -> list[MessageComplete]:
    return [e for e in t.events if isinstance(e, MessageComplete)]


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"hello\r\n.\r\n", b"hello\r\n"),
        (b".\r\n", b""),
        (b"\r\n.\r\n", b"\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"...\r\n.\r\n", b"..\r\n"),
        (b".leading dot\r\n.\r\n", b"leading dot\r\n"),
        (b"a\r\n..b\r\n.c\r\n.\r\n", b"a\r\n.b\r\nc\r\n"),
        (b"a\r\n. \r\n.\r\n", b"a\r\n \r\n"),
        (b"no dot. here.\r\n.\r\n", b"no dot. here.\r\n"),
        (b"tail .\r\n.\r\n", b"tail .\r\n"),
        (b"x\r\n.\r\n.\r\n", b"x\r\n"),  # the second "." line is a command after the message
    ],
)
def test_dot_unstuffing_and_end(wire: bytes, message: bytes) -> None:
    t = send_message(wire)
    assert bytes(t.data) == message
    [done] = completed(t)
    assert done.size == len(message)
    assert done.reply is None
    after_354 = t.codes.index((354, None)) + 1
    assert t.codes[after_354] == (250, "2.0.0")  # queued
    assert t.codes[-1] == (221, "2.0.0")


# The SMTP smuggling vectors: none of these ends the message; each makes it rejected.
SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r.\n", b"\n.\r"]


@pytest.mark.parametrize("vector", SMUGGLING, ids=repr)
def test_smuggling_vectors_never_end_the_message(vector: bytes) -> None:
    smuggled = b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
    body = HEADER + b"text" + vector + smuggled + b"evil\r\n.\r\n"
    t = send_message(body)
    # One message, ending at the real CRLF.CRLF, rejected for its bare line end.
    [done] = completed(t)
    assert done.reply is not None
    assert (done.reply.code, done.reply.enhanced) == (550, "5.6.0")
    # The smuggled commands were never commands: replies are 220 EHLO AUTH MAIL RCPT 354 550 221.
    assert [c for c, _ in t.codes] == [220, 250, 235, 250, 250, 354, 550, 221]
    assert not any(isinstance(e, DataChunk) and b"victim" in e.data for e in t.events)


@pytest.mark.parametrize(
    "body",
    [
        *(b"bare\nLF\r\n", b"bare\rCR\r\n", b"\nx\r\n", b"\rx\r\n", b"end\r\r\n", b"x\n\r\n"),
        # As many CRs as LFs, but not in pairs: an LF then a CR.
        *(b"a\n\rb\r\n", b"a\nb\rc\r\n", b"\n\r\r\n", b"a\r\r\n\nb\r\n"),
    ],
    ids=repr,
)
def test_bare_cr_or_lf_rejected_after_the_final_dot(body: bytes) -> None:
    t = send_message(body + b".\r\n")
    [done] = completed(t)
    assert done.reply is not None
    assert (done.reply.code, done.reply.enhanced) == (550, "5.6.0")
    assert "bare CR or LF" in done.reply.text


def test_no_reply_until_the_final_dot() -> None:
    """The error comes after the final dot, never in the middle of the data."""
    config = SessionConfig(
        hostname="mx.test", tls_mode=TlsMode.NONE, allow_plaintext_auth=True, max_message_size=100
    )
    start = drive([IN_TXN + b"DATA\r\n"], config, eof=False)
    replies_before = len(start.replies)
    conn_t = drive([IN_TXN + b"DATA\r\n" + b"bare\n" + b"x" * 5000 + b"\r\n"], config, eof=False)
    assert len(conn_t.replies) == replies_before  # nothing said yet, however bad the data


@pytest.mark.parametrize(("length", "ok"), [(998, True), (999, False)])
def test_line_length_limit(length: int, ok: bool) -> None:
    t = send_message(HEADER + b"a" * length + b"\r\n.\r\n")
    [done] = completed(t)
    if ok:
        assert done.reply is None
    else:
        assert done.reply is not None
        assert (done.reply.code, done.reply.enhanced) == (550, "5.6.0")


def test_line_length_counts_after_unstuffing() -> None:
    # 999 octets on the wire, 998 in the message.
    t = send_message(b"." + b"a" * 998 + b"\r\n.\r\n")
    [done] = completed(t)
    assert done.reply is None


def test_long_line_split_across_many_reads_is_caught() -> None:
    config = PLAINTEXT
    wire = IN_TXN + b"DATA\r\n" + b"ab" * 600 + b"\r\n.\r\n"
    chunks = [wire[i : i + 7] for i in range(0, len(wire), 7)]
    t = drive(chunks, config)
    [done] = completed(t)
    assert done.reply is not None
    assert done.reply.code == 550


MAX = 8 * 1024 * 1024


@pytest.mark.parametrize(("size", "ok"), [(MAX, True), (MAX + 1, False)])
def test_size_limit_exact(size: int, ok: bool) -> None:
    line = b"x" * 98 + b"\r\n"  # 100 octets
    last = size % 100  # 8 or 9: one short last line
    body = line * (size // 100) + b"y" * (last - 2) + b"\r\n"
    assert len(body) == size
    wire = IN_TXN + b"DATA\r\n" + body + b".\r\nQUIT\r\n"
    chunks = [wire[i : i + 65536] for i in range(0, len(wire), 65536)]
    t = drive(chunks)
    [done] = completed(t)
    if ok:
        assert done.reply is None
        assert done.size == size
        assert len(t.data) == size
        assert t.codes[-2] == (250, "2.0.0")
    else:
        assert done.reply is not None
        assert (done.reply.code, done.reply.enhanced) == (552, "5.3.4")
        assert t.codes[-2] == (552, "5.3.4")
    assert t.codes[-1] == (221, "2.0.0")  # the session goes on after the message


def test_oversize_message_is_read_to_its_end_and_discarded() -> None:
    config = SessionConfig(
        hostname="mx.test", tls_mode=TlsMode.NONE, allow_plaintext_auth=True, max_message_size=1000
    )
    body = (b"z" * 78 + b"\r\n") * 100
    t = both_ways(IN_TXN + b"DATA\r\n" + body + b".\r\nNOOP\r\n", config)
    assert t.codes[-2:] == [(552, "5.3.4"), (250, "2.0.0")]
    assert len(t.data) <= 1000  # what went out before the limit was crossed, never more


def test_data_arrives_in_chunks_as_it_comes() -> None:
    wire = IN_TXN + b"DATA\r\n"
    body = (b"0123456789" * 7 + b"\r\n") * 1000
    t = drive([wire, body[:30000], body[30000:], b".\r\n"], eof=False)
    chunks = [e for e in t.events if isinstance(e, DataChunk)]
    assert len(chunks) >= 2
    assert b"".join(c.data for c in chunks) == body


def test_pipelined_commands_after_the_final_dot() -> None:
    t = send_message(HEADER + b"body\r\n.\r\nMAIL FROM:<alice@example.com>\r\n")
    assert [c for c, _ in t.codes][-3:] == [250, 250, 221]


def test_client_disconnects_mid_data() -> None:
    t = drive([IN_TXN + b"DATA\r\n" + HEADER + b"partial"])
    assert t.closed
    assert not completed(t)
    assert "during DATA" in t.events[-1].reason  # type: ignore[union-attr]


def test_second_message_in_one_session() -> None:
    one = HEADER + b"first\r\n"
    two = HEADER + b"second\r\n"
    t = both_ways(
        IN_TXN + b"DATA\r\n" + one + b".\r\nMAIL FROM:<alice@example.com>\r\n"
        b"RCPT TO:<b@example.net>\r\nDATA\r\n" + two + b".\r\n"
    )
    assert bytes(t.data) == one + two
    first, second = completed(t)
    assert first.envelope.rcpt_to == ("bob@example.net",)
    assert second.envelope.rcpt_to == ("b@example.net",)
    assert t.codes.count((235, "2.7.0")) == 1  # one AUTH serves both transactions


def test_byte_at_a_time_data_equals_whole() -> None:
    body = HEADER + b"..a\r\n.b\r\nc\r\n\r\n"
    wire = IN_TXN + b"DATA\r\n" + body + b".\r\n"
    whole = drive([wire])
    split = drive(bytewise(wire))
    assert bytes(whole.data) == bytes(split.data) == HEADER + b".a\r\nb\r\nc\r\n\r\n"
