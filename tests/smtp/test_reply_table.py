"""Every core-owned row of the reply catalogue, fed whole and one byte at a time."""

from __future__ import annotations

import pytest

from gateway.smtp import SessionConfig

from .driver import (
    AUTH,
    EHLO,
    IMPLICIT,
    IN_TXN,
    MAIL,
    NO_AUTH,
    PLAINTEXT,
    RCPT,
    READY,
    SUBMISSION,
    USER,
    b64,
    both_ways,
)

# (name, config, what comes before, the command, the expected code, enhanced code)
CASES: list[tuple[str, SessionConfig, bytes, bytes, int, str | None]] = [
    # always available
    ("noop", PLAINTEXT, b"", b"NOOP", 250, "2.0.0"),
    ("noop with argument", PLAINTEXT, b"", b"NOOP anything", 250, "2.0.0"),
    ("verbs are case-insensitive", PLAINTEXT, b"", b"nOoP", 250, "2.0.0"),
    ("rset", PLAINTEXT, b"", b"RSET", 250, "2.0.0"),
    ("rset with argument", PLAINTEXT, b"", b"RSET now", 501, "5.5.4"),
    ("help", PLAINTEXT, b"", b"HELP", 214, "2.0.0"),
    ("help with topic", PLAINTEXT, b"", b"HELP MAIL", 214, "2.0.0"),
    ("quit", PLAINTEXT, b"", b"QUIT", 221, "2.0.0"),
    ("quit with argument", PLAINTEXT, b"", b"QUIT now", 501, "5.5.4"),
    ("vrfy", PLAINTEXT, b"", b"VRFY bob", 252, "2.5.2"),
    ("vrfy needs no auth", NO_AUTH, EHLO, b"VRFY bob@example.net", 252, "2.5.2"),
    ("vrfy without argument", PLAINTEXT, b"", b"VRFY", 501, "5.5.4"),
    ("expn", PLAINTEXT, b"", b"EXPN staff", 502, "5.5.1"),
    ("unknown command", PLAINTEXT, b"", b"FROB x", 500, "5.5.2"),
    ("bdat is not offered", PLAINTEXT, READY, b"BDAT 10 LAST", 500, "5.5.2"),
    ("empty line", PLAINTEXT, b"", b"", 500, "5.5.2"),
    ("verb with digits", PLAINTEXT, b"", b"NO0P", 500, "5.5.2"),
    ("command too long", PLAINTEXT, b"", b"NOOP " + b"x" * 600, 500, "5.5.2"),
    # HELO / EHLO
    ("helo", PLAINTEXT, b"", b"HELO client.test", 250, None),
    ("ehlo", PLAINTEXT, b"", b"EHLO client.test", 250, None),
    ("helo without name", PLAINTEXT, b"", b"HELO", 501, "5.5.4"),
    ("ehlo without name", PLAINTEXT, b"", b"EHLO", 501, "5.5.4"),
    # STARTTLS
    ("starttls", SUBMISSION, EHLO, b"STARTTLS", 220, "2.0.0"),
    ("starttls before ehlo", SUBMISSION, b"", b"STARTTLS", 220, "2.0.0"),
    ("starttls with argument", SUBMISSION, EHLO, b"STARTTLS now", 501, "5.5.4"),
    ("starttls on a plain listener", PLAINTEXT, EHLO, b"STARTTLS", 502, "5.5.1"),
    ("starttls under implicit tls", IMPLICIT, EHLO, b"STARTTLS", 554, "5.5.1"),
    # STARTTLS first, on the submission port
    ("mail before starttls", SUBMISSION, EHLO, MAIL.rstrip(), 530, "5.7.0"),
    ("auth before starttls", SUBMISSION, EHLO, AUTH.rstrip(), 530, "5.7.0"),
    ("unknown before starttls", SUBMISSION, EHLO, b"FROB", 530, "5.7.0"),
    ("vrfy before starttls", SUBMISSION, EHLO, b"VRFY bob", 530, "5.7.0"),
    ("data before starttls", SUBMISSION, b"", b"DATA", 530, "5.7.0"),
    ("noop before starttls", SUBMISSION, b"", b"NOOP", 250, "2.0.0"),
    ("rset before starttls", SUBMISSION, b"", b"RSET", 250, "2.0.0"),
    ("help before starttls", SUBMISSION, b"", b"HELP", 214, "2.0.0"),
    ("too long before starttls", SUBMISSION, b"", b"NOOP " + b"x" * 600, 500, "5.5.2"),
    # AUTH where it is not allowed
    ("auth on a plain listener", NO_AUTH, EHLO, AUTH.rstrip(), 538, "5.7.11"),
    ("mail on a plain listener", NO_AUTH, EHLO, MAIL.rstrip(), 530, "5.7.0"),
    # order: HELO first, then AUTH, then the transaction
    ("auth before ehlo", PLAINTEXT, b"", AUTH.rstrip(), 503, "5.5.1"),
    ("mail before ehlo", PLAINTEXT, b"", MAIL.rstrip(), 503, "5.5.1"),
    ("mail before auth", PLAINTEXT, EHLO, MAIL.rstrip(), 530, "5.7.0"),
    ("rcpt before auth", PLAINTEXT, EHLO, RCPT.rstrip(), 530, "5.7.0"),
    ("data before auth", PLAINTEXT, EHLO, b"DATA", 530, "5.7.0"),
    ("bad mail before auth", PLAINTEXT, EHLO, b"MAIL FROM:<<<", 530, "5.7.0"),
    ("rcpt before mail", PLAINTEXT, READY, RCPT.rstrip(), 503, "5.5.1"),
    ("data before mail", PLAINTEXT, READY, b"DATA", 503, "5.5.1"),
    ("data before rcpt", PLAINTEXT, READY + MAIL, b"DATA", 503, "5.5.1"),
    ("data with argument before mail", PLAINTEXT, READY, b"DATA x", 503, "5.5.1"),
    ("nested mail", PLAINTEXT, READY + MAIL, MAIL.rstrip(), 503, "5.5.1"),
    ("second auth", PLAINTEXT, READY, AUTH.rstrip(), 503, "5.5.1"),
    ("rset ends the transaction", PLAINTEXT, READY + MAIL + b"RSET\r\n", b"DATA", 503, "5.5.1"),
    ("ehlo ends the transaction", PLAINTEXT, IN_TXN + EHLO, b"DATA", 503, "5.5.1"),
    ("ehlo keeps auth", PLAINTEXT, READY + EHLO, MAIL.rstrip(), 250, "2.1.0"),
    # AUTH
    ("auth plain", PLAINTEXT, EHLO, AUTH.rstrip(), 235, "2.7.0"),
    ("auth lower case", PLAINTEXT, EHLO, b"auth plain " + b64(f"\0{USER}\0s3cret"), 235, "2.7.0"),
    (
        "auth plain authzid = user",
        PLAINTEXT,
        EHLO,
        b"AUTH PLAIN " + b64(f"{USER}\0{USER}\0s3cret"),
        235,
        "2.7.0",
    ),
    (
        "auth plain other authzid",
        PLAINTEXT,
        EHLO,
        b"AUTH PLAIN " + b64(f"root\0{USER}\0s3cret"),
        535,
        "5.7.8",
    ),
    (
        "auth plain wrong password",
        PLAINTEXT,
        EHLO,
        b"AUTH PLAIN " + b64(f"\0{USER}\0nope"),
        535,
        "5.7.8",
    ),
    (
        "auth plain empty password",
        PLAINTEXT,
        EHLO,
        b"AUTH PLAIN " + b64(f"\0{USER}\0"),
        535,
        "5.7.8",
    ),
    ("auth plain bad base64", PLAINTEXT, EHLO, b"AUTH PLAIN !!!!", 501, "5.5.2"),
    ("auth plain one nul", PLAINTEXT, EHLO, b"AUTH PLAIN " + b64(f"{USER}\0s3cret"), 501, "5.5.2"),
    ("auth plain three nuls", PLAINTEXT, EHLO, b"AUTH PLAIN " + b64("\0a\0b\0c"), 501, "5.5.2"),
    ("auth plain bad utf-8", PLAINTEXT, EHLO, b"AUTH PLAIN " + b"AGFsaWNlAP8=", 501, "5.5.2"),
    ("auth plain challenge", PLAINTEXT, EHLO, b"AUTH PLAIN", 334, None),
    (
        "auth plain response",
        PLAINTEXT,
        EHLO + b"AUTH PLAIN\r\n",
        b64(f"\0{USER}\0s3cret"),
        235,
        "2.7.0",
    ),
    ("auth plain cancelled", PLAINTEXT, EHLO + b"AUTH PLAIN\r\n", b"*", 501, "5.7.0"),
    ("auth plain empty response", PLAINTEXT, EHLO + b"AUTH PLAIN\r\n", b"=", 501, "5.5.2"),
    ("auth plain bad response", PLAINTEXT, EHLO + b"AUTH PLAIN\r\n", b"@@@", 501, "5.5.2"),
    ("auth login", PLAINTEXT, EHLO, b"AUTH LOGIN", 334, None),
    ("auth login password step", PLAINTEXT, EHLO + b"AUTH LOGIN\r\n", b64(USER), 334, None),
    (
        "auth login done",
        PLAINTEXT,
        EHLO + b"AUTH LOGIN\r\n" + b64(USER) + b"\r\n",
        b64("s3cret"),
        235,
        "2.7.0",
    ),
    (
        "auth login initial response",
        PLAINTEXT,
        EHLO + b"AUTH LOGIN " + b64(USER) + b"\r\n",
        b64("s3cret"),
        235,
        "2.7.0",
    ),
    (
        "auth login wrong password",
        PLAINTEXT,
        EHLO + b"AUTH LOGIN " + b64(USER) + b"\r\n",
        b64("nope"),
        535,
        "5.7.8",
    ),
    (
        "auth login cancelled",
        PLAINTEXT,
        EHLO + b"AUTH LOGIN\r\n" + b64(USER) + b"\r\n",
        b"*",
        501,
        "5.7.0",
    ),
    ("auth login bad base64", PLAINTEXT, EHLO + b"AUTH LOGIN\r\n", b"%%", 501, "5.5.2"),
    ("auth unknown mechanism", PLAINTEXT, EHLO, b"AUTH CRAM-MD5", 504, "5.5.4"),
    ("auth without mechanism", PLAINTEXT, EHLO, b"AUTH", 501, "5.5.4"),
    ("auth line up to 12288 octets", PLAINTEXT, EHLO, b"AUTH PLAIN " + b"A" * 12000, 501, "5.5.2"),
    ("auth line over 12288 octets", PLAINTEXT, EHLO, b"AUTH PLAIN " + b"A" * 12280, 500, "5.5.2"),
    ("command after the exchange", PLAINTEXT, EHLO + b"AUTH PLAIN\r\n*\r\n", b"NOOP", 250, "2.0.0"),
    # MAIL
    ("mail", PLAINTEXT, READY, MAIL.rstrip(), 250, "2.1.0"),
    ("mail, space after colon", PLAINTEXT, READY, b"MAIL FROM: <alice@example.com>", 250, "2.1.0"),
    ("mail, lower case", PLAINTEXT, READY, b"mail from:<Alice@Example.com>", 250, "2.1.0"),
    ("mail without brackets", PLAINTEXT, READY, b"MAIL FROM:alice@example.com", 250, "2.1.0"),
    (
        "mail with size",
        PLAINTEXT,
        READY,
        b"MAIL FROM:<alice@example.com> SIZE=8388608",
        250,
        "2.1.0",
    ),
    (
        "mail with body and auth",
        PLAINTEXT,
        READY,
        b"MAIL FROM:<alice@example.com> BODY=8BITMIME AUTH=<> SMTPUTF8",
        250,
        "2.1.0",
    ),
    (
        "mail with body 7bit",
        PLAINTEXT,
        READY,
        b"MAIL FROM:<alice@example.com> body=7bit",
        250,
        "2.1.0",
    ),
    (
        "mail, source route",
        PLAINTEXT,
        READY,
        b"MAIL FROM:<@relay.test:alice@example.com>",
        250,
        "2.1.0",
    ),
    ("mail not owned", PLAINTEXT, READY, b"MAIL FROM:<mallory@example.com>", 553, "5.7.1"),
    ("null sender", PLAINTEXT, READY, b"MAIL FROM:<>", 553, "5.7.1"),
    ("mail without from", PLAINTEXT, READY, b"MAIL alice@example.com", 501, "5.5.4"),
    ("mail without path", PLAINTEXT, READY, b"MAIL FROM:", 501, "5.5.4"),
    ("mail unclosed bracket", PLAINTEXT, READY, b"MAIL FROM:<alice@example.com", 501, "5.5.4"),
    ("mail, junk after path", PLAINTEXT, READY, b"MAIL FROM:<alice@example.com>x", 501, "5.5.4"),
    ("mail bad address", PLAINTEXT, READY, b"MAIL FROM:<alice@@example.com>", 501, "5.1.7"),
    ("mail no domain", PLAINTEXT, READY, b"MAIL FROM:<alice>", 501, "5.1.7"),
    ("mail bad utf-8", PLAINTEXT, READY, b"MAIL FROM:<\xff@example.com>", 501, "5.1.7"),
    (
        "mail size not a number",
        PLAINTEXT,
        READY,
        b"MAIL FROM:<alice@example.com> SIZE=big",
        501,
        "5.5.4",
    ),
    (
        "mail size without value",
        PLAINTEXT,
        READY,
        b"MAIL FROM:<alice@example.com> SIZE",
        501,
        "5.5.4",
    ),
    (
        "mail size too big",
        PLAINTEXT,
        READY,
        b"MAIL FROM:<alice@example.com> SIZE=8388609",
        552,
        "5.3.4",
    ),
    ("mail body 9bit", PLAINTEXT, READY, b"MAIL FROM:<alice@example.com> BODY=9BIT", 501, "5.5.4"),
    (
        "mail smtputf8=yes",
        PLAINTEXT,
        READY,
        b"MAIL FROM:<alice@example.com> SMTPUTF8=YES",
        501,
        "5.5.4",
    ),
    (
        "mail duplicate parameter",
        PLAINTEXT,
        READY,
        b"MAIL FROM:<alice@example.com> SIZE=1 SIZE=2",
        501,
        "5.5.4",
    ),
    (
        "mail unknown parameter",
        PLAINTEXT,
        READY,
        b"MAIL FROM:<alice@example.com> RET=FULL",
        555,
        "5.5.4",
    ),
    (
        "mail unicode without smtputf8",
        PLAINTEXT,
        READY,
        "MAIL FROM:<ålice@exämple.com>".encode(),
        553,
        "5.6.7",
    ),
    (
        "mail unicode with smtputf8",
        PLAINTEXT,
        READY,
        "MAIL FROM:<ålice@exämple.com> SMTPUTF8".encode(),
        250,
        "2.1.0",
    ),
    # RCPT
    ("rcpt", PLAINTEXT, READY + MAIL, RCPT.rstrip(), 250, "2.1.5"),
    ("rcpt postmaster", PLAINTEXT, READY + MAIL, b"RCPT TO:<Postmaster>", 250, "2.1.5"),
    (
        "rcpt quoted local part",
        PLAINTEXT,
        READY + MAIL,
        b'RCPT TO:<"john doe"@example.net>',
        250,
        "2.1.5",
    ),
    ("rcpt address literal", PLAINTEXT, READY + MAIL, b"RCPT TO:<bob@[192.0.2.1]>", 250, "2.1.5"),
    (
        "rcpt ipv6 literal",
        PLAINTEXT,
        READY + MAIL,
        b"RCPT TO:<bob@[IPv6:2001:db8::1]>",
        250,
        "2.1.5",
    ),
    (
        "rcpt dsn parameters",
        PLAINTEXT,
        READY + MAIL,
        b"RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net",
        250,
        "2.1.5",
    ),
    (
        "rcpt unknown parameter",
        PLAINTEXT,
        READY + MAIL,
        b"RCPT TO:<bob@example.net> FOO=1",
        555,
        "5.5.4",
    ),
    ("rcpt without to", PLAINTEXT, READY + MAIL, b"RCPT bob@example.net", 501, "5.5.4"),
    ("rcpt bad address", PLAINTEXT, READY + MAIL, b"RCPT TO:<bob@>", 501, "5.1.3"),
    ("rcpt null", PLAINTEXT, READY + MAIL, b"RCPT TO:<>", 501, "5.1.3"),
    ("rcpt bad literal", PLAINTEXT, READY + MAIL, b"RCPT TO:<bob@[300.1.1.1]>", 501, "5.1.3"),
    (
        "rcpt local part too long",
        PLAINTEXT,
        READY + MAIL,
        b"RCPT TO:<" + b"b" * 65 + b"@example.net>",
        501,
        "5.1.3",
    ),
    (
        "rcpt unicode without smtputf8",
        PLAINTEXT,
        READY + MAIL,
        "RCPT TO:<bøb@example.net>".encode(),
        553,
        "5.6.7",
    ),
    (
        "rcpt unicode with smtputf8",
        PLAINTEXT,
        READY + b"MAIL FROM:<alice@example.com> SMTPUTF8\r\n",
        "RCPT TO:<bøb@exämple.net>".encode(),
        250,
        "2.1.5",
    ),
    # DATA
    ("data", PLAINTEXT, IN_TXN, b"DATA", 354, None),
    ("data with argument", PLAINTEXT, IN_TXN, b"DATA now", 501, "5.5.4"),
]


@pytest.mark.parametrize(
    ("config", "before", "command", "code", "enhanced"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
@pytest.mark.parametrize("ending", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_reply(
    config: SessionConfig,
    before: bytes,
    command: bytes,
    code: int,
    enhanced: str | None,
    ending: bytes,
) -> None:
    t = both_ways(before + command + ending, config)
    before_count = len(both_ways(before, config).replies) if before else 1
    sent = t.replies
    assert len(sent) > before_count, f"no reply to {command!r}: {t.codes}"
    reply = sent[before_count]
    assert (reply.code, reply.enhanced) == (code, enhanced), sent[before_count].lines
    # Every reply but the greeting, HELO/EHLO's and 3xx carries an enhanced status code.
    for r in sent[1:]:
        if r.code // 100 in (2, 4, 5) and not (r.code == 250 and r.enhanced is None):
            assert r.enhanced is not None, r


def test_ehlo_keywords_come_from_the_limits() -> None:
    config = SessionConfig(
        hostname="gw.example",
        tls_mode=SUBMISSION.tls_mode,
        max_message_size=1000,
        max_recipients=7,
    )
    t = both_ways(b"EHLO c\r\n", config)
    assert t.replies[1].lines == (
        "gw.example",
        "PIPELINING",
        "SIZE 1000",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "LIMITS RCPTMAX=7",
        "STARTTLS",
        "HELP",
    )


@pytest.mark.parametrize(
    ("config", "starttls", "auth"),
    [
        (SUBMISSION, True, False),
        (PLAINTEXT, False, True),
        (NO_AUTH, False, False),
        (IMPLICIT, False, True),
    ],
    ids=["submission", "plaintext-auth", "no-auth", "implicit"],
)
def test_ehlo_offers_starttls_and_auth_where_allowed(
    config: SessionConfig, starttls: bool, auth: bool
) -> None:
    lines = both_ways(EHLO, config).replies[1].lines
    assert ("STARTTLS" in lines) is starttls
    assert ("AUTH PLAIN LOGIN" in lines) is auth
    assert lines[-1] == "HELP"


def test_ehlo_after_auth_still_lists_auth() -> None:
    t = both_ways(READY + EHLO, PLAINTEXT)
    assert "AUTH PLAIN LOGIN" in t.replies[-1].lines
