"""The message policy on a corpus of good and bad messages."""

from __future__ import annotations

import base64
import datetime
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.message import Rules, check, trace_headers

OWNED = {"alice@example.com"}
RULES = Rules(owns=lambda a: a.lower() in OWNED, user="alice")
UTF8 = Rules(owns=RULES.owns, user="alice", smtputf8=True)
MiB = 1024 * 1024


def b64_lines(data: bytes) -> bytes:
    text = base64.b64encode(data)
    return b"".join(text[i : i + 76] + b"\r\n" for i in range(0, len(text), 76))


def mail(headers: bytes, body: bytes = b"Hello.\r\n") -> bytes:
    return headers + b"\r\n" + body


PLAIN = mail(b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: hi\r\n")


def multipart(*parts: bytes, kind: bytes = b"mixed", boundary: bytes = b"XYZ") -> bytes:
    body = b"".join(b"--" + boundary + b"\r\n" + p for p in parts) + b"--" + boundary + b"--\r\n"
    return mail(
        b"From: alice@example.com\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/" + kind + b'; boundary="' + boundary + b'"\r\n',
        body,
    )


def attachment(size: int, name: bytes = b"data.bin") -> bytes:
    return (
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="'
        + name
        + b'"\r\n\r\n'
        + b64_lines(b"\x00" * size)
    )


TEXT = b"Content-Type: text/plain; charset=utf-8\r\n\r\nHello.\r\n"
HTML = b"Content-Type: text/html; charset=utf-8\r\n\r\n<p>Hello.</p>\r\n"
QP = (
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n" + b"caf=C3=A9 " * 20 + b"=\r\nsoft break\r\n"
)

GOOD = {
    "plain": PLAIN,
    "alternative": multipart(TEXT, HTML, kind=b"alternative"),
    "attachment": multipart(TEXT, attachment(100_000)),
    "inline image": multipart(
        TEXT,
        b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: inline\r\nContent-ID: <img1>\r\n\r\n" + b64_lines(b"\x89PNG" * 50),
        kind=b"related",
    ),
    "nested rfc822": multipart(
        TEXT, b"Content-Type: message/rfc822\r\n\r\n" + PLAIN.replace(b"alice@", b"carol@")
    ),
    "quoted-printable": multipart(QP),
    "long encoded lines": mail(
        b"From: alice@example.com\r\nSubject: =?utf-8?q?"
        + b"a" * 60
        + b"?=\r\n\t=?utf-8?q?"
        + b"b" * 60
        + b"?=\r\n"
    ),
    "encoded-word subject": mail(
        b"From: =?utf-8?q?Al=C3=AFce?= <alice@example.com>\r\nSubject: =?utf-8?b?w6lsw6k=?=\r\n"
    ),
    "attachment of exactly 4 MiB": multipart(TEXT, attachment(4 * MiB)),
    "nested multiparts": multipart(
        b'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n'
        b"--inner\r\n" + TEXT + b"--inner\r\n" + HTML + b"--inner--\r\n"
    ),
}


@pytest.mark.parametrize("message", GOOD.values(), ids=GOOD.keys())
def test_good_messages_pass(message: bytes) -> None:
    assert check(message, RULES) is None


def test_utf8_headers_pass_under_smtputf8() -> None:
    message = "From: Ålice <alice@example.com>\r\nSubject: Grüße\r\n\r\nHi.\r\n".encode()
    assert check(message, UTF8) is None


def nested(depth: int) -> bytes:
    inner = TEXT
    for level in range(depth):
        b = b"b%d" % level
        inner = (
            b'Content-Type: multipart/mixed; boundary="'
            + b
            + b'"\r\n\r\n--'
            + b
            + b"\r\n"
            + inner
            + b"--"
            + b
            + b"--\r\n"
        )
    return mail(
        b"From: alice@example.com\r\nMIME-Version: 1.0\r\n"
        + inner.split(b"\r\n\r\n", 1)[0]
        + b"\r\n",
        inner.split(b"\r\n\r\n", 1)[1],
    )


BAD = {
    "missing From": (mail(b"To: bob@example.net\r\nSubject: x\r\n"), 550, "5.6.0", "no From"),
    "two From": (
        mail(b"From: alice@example.com\r\nFrom: alice@example.com\r\n"),
        550,
        "5.6.0",
        "2 From headers",
    ),
    "two Subject": (
        mail(b"From: alice@example.com\r\nSubject: a\r\nSubject: b\r\n"),
        550,
        "5.6.0",
        "2 Subject headers",
    ),
    "header line with no colon": (
        b"From: alice@example.com\r\nThis line has no colon\r\nSubject: x\r\n\r\nbody\r\n",
        550,
        "5.6.0",
        "no colon",
    ),
    "unclosed multipart": (
        mail(
            b'From: alice@example.com\r\nContent-Type: multipart/mixed; boundary="B"\r\n',
            b"--B\r\n" + TEXT,
        ),
        550,
        "5.6.0",
        "never closed",
    ),
    "missing boundary": (
        mail(b"From: alice@example.com\r\nContent-Type: multipart/mixed\r\n", b"x\r\n"),
        550,
        "5.6.0",
        "no boundary",
    ),
    "bad base64": (
        multipart(
            b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            b"!!!!not*base64$$$$\r\n"
        ),
        550,
        "5.6.0",
        "base64",
    ),
    "attachment of 4 MiB + 1": (
        multipart(TEXT, attachment(4 * MiB + 1, b"big.bin")),
        552,
        "5.3.4",
        "big.bin",
    ),
    "nesting past the limit": (nested(34), 550, "5.6.0", "nested more than 32"),
    "8-bit header without SMTPUTF8": (
        "From: alice@example.com\r\nSubject: Grüße\r\n\r\nHi.\r\n".encode(),
        550,
        "5.6.0",
        "8-bit characters in the header",
    ),
    "unknown encoding": (
        multipart(
            b"Content-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nx\r\n"
        ),
        550,
        "5.6.0",
        "unknown Content-Transfer-Encoding",
    ),
    "From not the user's": (
        mail(b"From: mallory@example.com\r\n"),
        550,
        "5.7.1",
        "not permitted for user alice",
    ),
    "Sender not the user's": (
        mail(b"From: alice@example.com\r\nSender: mallory@example.com\r\n"),
        550,
        "5.7.1",
        "not permitted",
    ),
    "From with a second, foreign address": (
        mail(b"From: alice@example.com, mallory@example.com\r\nSender: alice@example.com\r\n"),
        550,
        "5.7.1",
        "not permitted",
    ),
    "From that does not parse": (mail(b"From: <<<>>>\r\n"), 550, "5.6.0", "From header"),
    "Sender with two addresses": (  # RFC 5322 §3.6.2: a single mailbox
        mail(b"From: alice@example.com\r\nSender: alice@example.com, Alice@example.com\r\n"),
        550,
        "5.6.0",
        "exactly one address",
    ),
    "base64 with data after its padding": (
        multipart(
            b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            b"QUJD\r\nQQ==\r\nQUJD\r\n"
        ),
        550,
        "5.6.0",
        "base64",
    ),
    "base64 with three pads": (
        multipart(
            b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            b"QUJDQ===\r\n"
        ),
        550,
        "5.6.0",
        "base64",
    ),
    "NUL": (mail(b"From: alice@example.com\r\n", b"a\x00b\r\n"), 550, "5.6.0", "NUL"),
    "8-bit octets in quoted-printable": (
        multipart(
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf\xc3\xa9 =C3=A9\r\n"
        ),
        550,
        "5.6.0",
        "quoted-printable of a part",
    ),
    "8-bit octets in base64": (
        multipart(
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n"
            b"\r\nY2Fm\xc3\xa9\r\n"
        ),
        550,
        "5.6.0",
        "base64 of a part",
    ),
    # Counted in octets, not in the characters its charset makes of them: 4 MiB + 2 octets of
    # three-octet characters is under 1.4 million characters.
    "8-bit attachment over 4 MiB in octets": (
        multipart(
            TEXT,
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            b'Content-Disposition: attachment; filename="big.txt"\r\n\r\n'
            + ("\u20ac" * 99 + "\r\n").encode()
            * (4 * MiB // 299 + 1),
        ),
        552,
        "5.3.4",
        "big.txt",
    ),
}


@pytest.mark.parametrize(("message", "code", "enhanced", "reason"), BAD.values(), ids=BAD.keys())
def test_bad_messages_are_refused_with_a_reason(
    message: bytes, code: int, enhanced: str, reason: str
) -> None:
    reply = check(message, RULES)
    assert reply is not None
    assert (reply.code, reply.enhanced) == (code, enhanced)
    assert reason in reply.text


def test_nesting_at_the_limit_passes() -> None:
    assert check(nested(31), RULES) is None


NOW = datetime.datetime(2026, 11, 29, 12, 0, tzinfo=datetime.UTC)


def test_trace_headers() -> None:
    added = trace_headers(
        PLAIN,
        hostname="mx.test",
        helo="client.example",
        client_ip="192.0.2.7",
        tls=True,
        smtputf8=False,
        queue_id="QID",
        rcpt_to=("bob@example.net",),
        now=NOW,
    ).decode()
    assert added.startswith(
        "Received: from client.example ([192.0.2.7])\r\n"
        "\tby mx.test (smtp-gateway) with ESMTPSA id QID\r\n\tfor <bob@example.net>;\r\n"
        "\tSun, 29 Nov 2026 12:00:00 +0000\r\n"
    )
    assert "\r\nDate: Sun, 29 Nov 2026 12:00:00 +0000\r\n" in added
    assert "\r\nMessage-ID: <QID." in added
    assert added.endswith("@mx.test>\r\n")


def test_message_ids_differ_even_for_the_same_submission() -> None:
    def message_id() -> str:
        added = trace_headers(
            mail(b"From: alice@example.com\r\n"),
            hostname="mx.test",
            helo="c",
            client_ip="192.0.2.7",
            tls=False,
            smtputf8=False,
            queue_id="QID",
            rcpt_to=("bob@example.net",),
            now=NOW,
        ).decode()
        [line] = [x for x in added.split("\r\n") if x.startswith("Message-ID: ")]
        return line.removeprefix("Message-ID: ")

    ids = {message_id() for _ in range(1000)}
    assert len(ids) == 1000
    for found in ids:
        # RFC 5322 msg-id: "<" dot-atom-text "@" dot-atom-text ">"
        assert re.fullmatch(r"<QID\.[0-9a-f]+@mx\.test>", found), found


def test_trace_keeps_existing_date_and_message_id_and_names_no_recipient_of_many() -> None:
    message = mail(
        b"From: alice@example.com\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nmessage-id: <x@y>\r\n"
    )
    added = trace_headers(
        message,
        hostname="mx.test",
        helo="c",
        client_ip="192.0.2.7",
        tls=False,
        smtputf8=True,
        queue_id="Q",
        rcpt_to=("a@x", "b@y"),
        now=NOW,
    ).decode()
    assert "with UTF8SMTPA id Q;" in added
    assert "Date:" not in added
    assert "Message-ID:" not in added
    assert "for <" not in added


def test_a_hostile_helo_cannot_break_the_header() -> None:
    added = trace_headers(
        PLAIN,
        hostname="mx.test",
        helo="evil\rInjected: yes (x)",
        client_ip="::1",
        tls=False,
        smtputf8=False,
        queue_id="Q",
        rcpt_to=(),
        now=NOW,
    )
    assert b"\rInjected" not in added
    assert added.count(b"\r") == added.count(b"\r\n")
    assert b"from evil?Injected:?yes??x? ([::1])" in added


def test_utf8_address_owned_under_smtputf8() -> None:
    rules = Rules(owns=lambda a: a == "ålice@exämple.com", user="ålice", smtputf8=True)
    assert check("From: ålice@exämple.com\r\n\r\nHi.\r\n".encode(), rules) is None


def test_address_parses_are_remembered_only_for_short_fields() -> None:
    from gateway.message import policy

    policy._address_field.cache_clear()
    short = mail(b"From: alice@example.com\r\n")
    long_name = b"A" * 600
    long = mail(b'From: "' + long_name + b'" <alice@example.com>\r\n')
    for _ in range(3):
        assert check(short, RULES) is None
        assert check(long, RULES) is None
    info = policy._address_field.cache_info()
    assert (info.hits, info.misses, info.currsize) == (2, 1, 1)  # the long one never cached
    spoof = mail(b"From: mallory@example.com\r\n")
    assert check(spoof, RULES) is not None  # a cached parse never changes the verdict
    assert check(spoof, RULES) is not None


@given(st.text(max_size=300))
def test_trace_tokens_are_safe_whatever_the_client_sends(text: str) -> None:
    """The fast path and the rewrite give the same token: printable ASCII, no space, no
    comment delimiters, at most 255 characters."""
    from gateway.message import trace

    token = trace._token(text)
    assert token == (
        trace._COMMENT_UNSAFE.sub("?", trace._UNSAFE.sub("?", text))[: trace.MAX_TOKEN] or "unknown"
    )
    assert token
    assert len(token) <= trace.MAX_TOKEN
    assert all(0x21 <= ord(c) <= 0x7E and c not in "()\\" for c in token)


CHARSETS = st.sampled_from([b"", b"; charset=utf-8", b"; charset=iso-8859-1", b"; charset=bogus"])
ENCODINGS = st.sampled_from([b"7bit", b"8bit", b"binary", b"base64", b"quoted-printable"])


@given(st.binary(max_size=200), CHARSETS, ENCODINGS, st.booleans())
def test_no_part_body_makes_the_check_raise(
    body: bytes, charset: bytes, encoding: bytes, as_attachment: bool
) -> None:
    body = body.replace(b"\r", b"").replace(b"\n", b"\r\n").replace(b"\x00", b"")
    part = (
        b"Content-Type: text/plain"
        + charset
        + b"\r\nContent-Transfer-Encoding: "
        + encoding
        + b"\r\n"
        + (b"Content-Disposition: attachment\r\n" if as_attachment else b"")
        + b"\r\n"
        + body
        + b"\r\n"
    )
    reply = check(multipart(TEXT, part), RULES)
    assert reply is None or reply.code in (550, 552)


# The plain-header way (no parser) against the parser, on generated headers: names the checks
# count or refuse, Content-* fields, empty names, "From " lines, continuations, stray lines,
# 8-bit text, and messages with no blank line after the header.
FIELD_NAMES = st.sampled_from(
    ["From", "from", "FROM", "Sender", "To", "Cc", "Bcc", "Subject", "Message-ID", "Date",
     "Reply-To", "X-Mailer", "MIME-Version", "Content-Type", "content-transfer-encoding",
     "Content-Disposition", "", "From ", "X A", "Received"]
)  # fmt: skip
FIELD_VALUES = st.sampled_from(
    [
        "alice@example.com",
        "Alice <alice@example.com>",
        "ALICE@EXAMPLE.COM",
        "bob@example.net",
        "alice@example.com, bob@example.net",
        "<>",
        '"q r" <alice@example.com>',
        "bad",
        "",
        "alice@example.com (comment)",
        "=?utf-8?q?A?= <alice@example.com>",
        "a@b@c",
        "<alice@",
        "text/plain",
        "multipart/mixed",
        "café <alice@example.com>",
        "x" * 600 + "@example.com",
    ]
) | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
HEADER_LINES = st.one_of(
    st.tuples(FIELD_NAMES, st.sampled_from([":", ": ", ":\t", ":  ", " :"]), FIELD_VALUES).map(
        "".join
    ),
    st.sampled_from([" continued", "\tcontinued", " ", " alice@example.com", " <x@y>"]),
    st.sampled_from(["no colon here", "From alice Mon Jan 1 00:00:00 2024", ":empty name"]),
)


@settings(max_examples=1500, deadline=None)
@given(
    lines=st.lists(HEADER_LINES, max_size=8),
    separated=st.booleans(),
    body=st.sampled_from([b"Hello.\r\n", b"", b"x\r\n-- \r\nsig\r\n", b"caf\xc3\xa9\r\n"]),
    utf8=st.booleans(),
)
def test_plain_headers_get_the_parsers_verdict(
    lines: list[str], separated: bool, body: bytes, utf8: bool
) -> None:
    header = "".join(line + "\r\n" for line in lines).encode()
    message = header + (b"\r\n" + body if separated else b"")
    rules = UTF8 if utf8 else RULES
    parsed = check(message, rules, fast=False)
    assert check(message, rules) == parsed
    assert check(message, rules, crlf_only=True) == parsed


def test_plain_headers_are_decided_without_the_parser() -> None:
    """The fast way is taken where it should be (else the test above proves nothing)."""
    from gateway.message import policy

    def fields(message: bytes) -> list[tuple[str, str]] | None:
        return policy._plain_fields(policy.header_section([message]))

    assert fields(PLAIN) == [
        ("From", "Alice <alice@example.com>"),
        ("To", "bob@example.net"),
        ("Subject", "hi"),
    ]
    folded = mail(b"From: alice@example.com\r\nTo: a@example.net,\r\n\tb@example.net\r\n")
    assert fields(folded) == [
        ("From", "alice@example.com"),
        ("To", "a@example.net,\r\n\tb@example.net"),
    ]
    for needs_parser in (
        mail(b"From: alice@example.com\r\nContent-Type: text/plain\r\n"),
        mail(b" x\r\nFrom: alice@example.com\r\n"),
        mail(b"From alice\r\nFrom: alice@example.com\r\n"),
        mail(b"From: alice@example.com\r\nno colon\r\n"),
        mail("From: Alicé <alice@example.com>\r\n".encode()),
    ):
        assert fields(needs_parser) is None, needs_parser
