"""Rules over a whole session: error and AUTH-failure limits, recipients, pipelining, STARTTLS."""

from __future__ import annotations

import pytest

from gateway.smtp import (
    NEED_DATA,
    Authenticate,
    ConnectionClosed,
    Hello,
    LocalProtocolError,
    MailFrom,
    MessageComplete,
    ServerConnection,
    State,
    replies,
)

from .driver import (
    AUTH,
    EHLO,
    IN_TXN,
    MAIL,
    PLAINTEXT,
    READY,
    SUBMISSION,
    USER,
    b64,
    both_ways,
    drive,
)


def test_tenth_bad_command_gets_its_reply_then_421() -> None:
    t = both_ways(b"FROB\r\n" * 9 + b"NOOP\r\n" + b"FROB\r\n" + b"NOOP\r\n")
    codes = t.codes
    assert codes[1:10] == [(500, "5.5.2")] * 9
    assert codes[10] == (250, "2.0.0")  # a good command does not reset the count
    assert codes[11:] == [(500, "5.5.2"), (421, "4.7.0")]  # and nothing after the 421
    assert "too many errors" in t.replies[-1].text
    assert t.closed


@pytest.mark.parametrize(
    "bad",
    [b"FROB", b"MAIL FROM:<x@y>", b"RSET x", b"EXPN a", b"AUTH FOO", b"NOOP " + b"x" * 600],
    ids=["500", "503/530", "501", "502", "504", "too long"],
)
def test_every_error_class_counts(bad: bytes) -> None:
    t = both_ways(EHLO + (bad + b"\r\n") * 10 + b"NOOP\r\n")
    assert t.codes[-1] == (421, "4.7.0")
    assert len(t.replies) == 1 + 1 + 10 + 1


def test_fifth_failed_auth_gets_535_then_421() -> None:
    bad = b"AUTH PLAIN " + b64(f"\0{USER}\0wrong") + b"\r\n"
    t = both_ways(EHLO + bad * 5 + AUTH)
    assert t.codes[2:] == [(535, "5.7.8")] * 5 + [(421, "4.7.0")]
    assert t.closed


def test_aborted_and_undecodable_auth_count_as_failures() -> None:
    t = both_ways(
        EHLO
        + b"AUTH PLAIN\r\n*\r\n"  # 334, 501 5.7.0
        + b"AUTH LOGIN\r\n!!\r\n"  # 334, 501 5.5.2
        + b"AUTH PLAIN !!\r\n"  # 501 5.5.2
        + b"AUTH LOGIN "
        + b64(USER)
        + b"\r\n"
        + b64("bad")
        + b"\r\n"  # 334, 535
        + b"AUTH CRAM-MD5\r\n"  # 504: not a failed AUTH
        + b"AUTH PLAIN "
        + b64(f"\0{USER}\0no")
        + b"\r\n"  # 535, the fifth: 421
    )
    assert [c for c, _ in t.codes[2:]] == [334, 501, 334, 501, 501, 334, 535, 504, 535, 421]


def test_auth_failures_are_visible_to_the_driver() -> None:
    conn = ServerConnection(PLAINTEXT)
    drive([EHLO + b"AUTH PLAIN " + b64(f"\0{USER}\0x") + b"\r\n"], conn=conn, eof=False)
    assert conn.auth_failures == 1
    assert not conn.authenticated


def test_hundred_recipients_then_452_and_the_transaction_goes_on() -> None:
    rcpts = b"".join(b"RCPT TO:<r%d@example.net>\r\n" % i for i in range(101))
    t = both_ways(READY + MAIL + rcpts + b"DATA\r\nhi\r\n.\r\n")
    codes = t.codes
    assert codes[4:104] == [(250, "2.1.5")] * 100
    assert codes[104] == (452, "4.5.3")
    assert codes[105:] == [
        (354, None),
        (250, "2.0.0"),
    ]
    done = next(e for e in t.events if isinstance(e, MessageComplete))
    assert len(done.envelope.rcpt_to) == 100
    assert done.envelope.rcpt_to[-1] == "r99@example.net"


def test_pipelined_commands_are_answered_in_order() -> None:
    wire = READY + MAIL + b"RCPT TO:<a@example.net>\r\nRCPT TO:<bad>\r\nRCPT TO:<c@example.net>\r\n"
    wire += b"NOOP\r\nDATA\r\n"
    t = drive([wire], eof=False)  # one read holding every command
    assert [c for c, _ in t.codes] == [220, 250, 235, 250, 250, 501, 250, 250, 354]


def test_events_carry_the_parsed_values() -> None:
    t = drive([READY + b"MAIL FROM:<alice@example.com> SIZE=42 BODY=8BITMIME\r\n"], eof=False)
    hello = next(e for e in t.events if isinstance(e, Hello))
    assert (hello.name, hello.extended) == ("client.test", True)
    auth = next(e for e in t.events if isinstance(e, Authenticate))
    assert (auth.mechanism, auth.username, auth.password) == ("PLAIN", USER, "s3cret")
    assert "s3cret" not in repr(auth)  # never in a log line
    mail = next(e for e in t.events if isinstance(e, MailFrom))
    assert (mail.address, mail.declared_size, mail.body, mail.smtputf8) == (
        "alice@example.com",
        42,
        "8BITMIME",
        False,
    )


def test_starttls_discards_pipelined_bytes_and_starts_over() -> None:
    conn = ServerConnection(SUBMISSION)
    conn.send(replies.greeting("mx.test"))
    # An attacker's injection rides in the same packet as STARTTLS.
    conn.receive_data(EHLO + b"STARTTLS\r\nMAIL FROM:<evil@example.com>\r\n")
    hello = conn.next_event()
    assert isinstance(hello, Hello)
    conn.send(hello.reply)
    starttls = conn.next_event()
    assert starttls.reply == replies.READY_TLS  # type: ignore[union-attr]
    assert conn.send(replies.READY_TLS) == b"220 2.0.0 Ready to start TLS\r\n"
    assert conn.state is State.TLS_HANDSHAKE
    assert conn.discarded_after_starttls == len(b"MAIL FROM:<evil@example.com>\r\n")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"plaintext during the handshake")
    conn.tls_established()
    # Everything is forgotten: HELO first again, and the injected MAIL never happened.
    assert conn.next_event() is NEED_DATA
    t = drive([MAIL], conn=conn, eof=False)
    assert t.codes == [(503, "5.5.1")]
    t = drive([EHLO + AUTH + MAIL], conn=conn, eof=False)
    assert [c for c, _ in t.codes] == [250, 235, 250]
    assert "STARTTLS" not in t.replies[0].lines
    assert "AUTH PLAIN LOGIN" in t.replies[0].lines


def test_starttls_forgets_authentication() -> None:
    config = SUBMISSION.__class__(
        hostname="mx.test", tls_mode=SUBMISSION.tls_mode, allow_plaintext_auth=True
    )
    conn = ServerConnection(config)
    t = drive([READY + b"STARTTLS\r\n"], conn=conn, eof=False)
    assert [c for c, _ in t.codes] == [250, 235, 220]
    assert not conn.authenticated
    t = drive([EHLO + MAIL], conn=conn, eof=False)
    assert t.codes[-1] == (530, "5.7.0")


def test_421_from_the_driver_closes() -> None:
    conn = ServerConnection(PLAINTEXT)
    conn.receive_data(EHLO + AUTH + b"NOOP\r\n")
    hello = conn.next_event()
    assert isinstance(hello, Hello)
    conn.send(hello.reply)
    assert isinstance(conn.next_event(), Authenticate)
    out = conn.send(replies.too_many_user_connections("mx.test"))
    assert out.startswith(b"421 4.7.0 ")
    assert conn.closed
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_driver_may_send_421_at_any_time() -> None:
    conn = ServerConnection(PLAINTEXT)
    conn.send(replies.greeting("mx.test"))
    conn.receive_data(b"NOOP")  # a partial command: the client stalled
    assert conn.next_event() is NEED_DATA
    assert conn.send(replies.timeout("mx.test")) == b"421 4.4.2 mx.test Error: timeout exceeded\r\n"
    assert conn.closed


def test_misuse_raises_local_protocol_error() -> None:
    conn = ServerConnection(PLAINTEXT)
    with pytest.raises(LocalProtocolError):
        conn.send(replies.OK)  # nothing asked for it
    conn.receive_data(b"NOOP\r\nNOOP\r\n")
    conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.next_event()  # the first NOOP's reply is owed
    with pytest.raises(LocalProtocolError):
        conn.tls_established()
    conn.send(replies.OK)
    conn.receive_data(b"")
    conn.receive_data(b"")  # a driver may see the end of input twice
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"more")
    conn.next_event()
    conn.send(replies.OK)
    assert isinstance(conn.next_event(), ConnectionClosed)
    with pytest.raises(LocalProtocolError):
        conn.send(replies.OK)


def test_quit_closes_and_ignores_what_follows() -> None:
    t = both_ways(b"QUIT\r\nNOOP\r\n")
    assert t.codes == [(220, None), (221, "2.0.0")]
    assert t.closed


def test_driver_refusing_data_keeps_the_transaction() -> None:
    conn = ServerConnection(PLAINTEXT)
    drive([IN_TXN], conn=conn, eof=False)
    conn.receive_data(b"DATA\r\n")
    event = conn.next_event()
    assert event.reply == replies.START_DATA  # type: ignore[union-attr]
    # The driver knows the queue is down: it answers 451 instead of the core's 354.
    assert conn.send(replies.QUEUE_UNAVAILABLE).startswith(b"451 4.3.0")
    assert conn.state is State.COMMAND
    t = drive([b"DATA\r\n"], conn=conn, eof=False)  # the client tries again
    assert t.codes == [(354, None)]


def test_line_limit_boundary() -> None:
    ok = b"NOOP " + b"x" * (512 - 7) + b"\r\n"  # exactly 512 octets with CRLF
    too_long = b"NOOP " + b"x" * (512 - 6) + b"\r\n"
    assert len(ok) == 512
    assert both_ways(ok).codes[-1] == (250, "2.0.0")
    assert both_ways(too_long).codes[-1] == (500, "5.5.2")


def test_over_long_line_is_read_to_its_end_without_buffering_it() -> None:
    conn = ServerConnection(PLAINTEXT)
    conn.send(replies.greeting("mx.test"))
    for _ in range(100):
        conn.receive_data(b"x" * 10_000)
        assert conn.next_event() is NEED_DATA
        assert len(conn._buf) <= 12288  # never more than a line's limit held
    conn.receive_data(b"tail\r\nNOOP\r\n")
    first = conn.next_event()
    assert first.reply == replies.COMMAND_TOO_LONG  # type: ignore[union-attr]
    conn.send(first.reply)  # type: ignore[union-attr]
    assert conn.next_event().reply == replies.OK  # type: ignore[union-attr]


def test_message_complete_carries_the_envelope() -> None:
    t = drive(
        [
            READY
            + b"MAIL FROM:<alice@example.com> BODY=8BITMIME SMTPUTF8 SIZE=9\r\n"
            + "RCPT TO:<ü@example.net>\r\nDATA\r\nhi\r\n.\r\n".encode()
        ]
    )
    done = next(e for e in t.events if isinstance(e, MessageComplete))
    assert done.envelope.mail_from == "alice@example.com"
    assert done.envelope.rcpt_to == ("ü@example.net",)
    assert (done.envelope.body, done.envelope.smtputf8, done.envelope.declared_size) == (
        "8BITMIME",
        True,
        9,
    )
    assert done.size == 4
