"""Whatever a client uploads, the session answers 250 or a 5xx and goes on: random header mixes,
encodings, boundaries and bodies through the core, the checks, the trace headers and the
queue, never an internal error (421)."""

from __future__ import annotations

import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from .harness import MemoryQueue, connect, make_gateway

FROMS = [
    b"From: alice@example.com",
    b"From: =?utf-8?b?w6k=?= <alice@example.com>",
    b"From: \xc3\xa9 <alice@example.com>",
    b"From: <>",
    b"From: alice@example.com, (comment) bob@example.net",
]
CONTENT_TYPES = [
    b'Content-Type: multipart/mixed; boundary="B"',
    b"Content-Type: multipart/mixed; boundary=B; boundary=C",
    b'Content-Type: text/plain; charset="utf-8"',
    b"Content-Type: text/plain; charset=iso-8859-1",
    b"Content-Type: text/plain; charset=bogus",
    b"Content-Type: text/plain; charset*=utf-8''%E9",
    b"Content-Type: message/rfc822",
    b"Content-Type: ;;;",
    b'Content-Type: application/x; name="\xc3\xa9.bin"',
]
ENCODINGS = [
    b"Content-Transfer-Encoding: base64",
    b"Content-Transfer-Encoding: quoted-printable",
    b"Content-Transfer-Encoding: 8bit",
    b"Content-Transfer-Encoding: \xc3\xa9",
]
OTHER_HEADERS = [
    b"Sender: alice@example.com",
    b"Subject: =?bogus?q?x?=",
    b"Subject: =?utf-8?q?=ZZ?=",
    b"Subject: \xff\xfe",
    b"MIME-Version: 1.0",
    b"Content-Disposition: attachment; filename*=utf-8''%FF%FE",
    b'Content-Disposition: attachment; filename="x',
    b"Date: Mon, 99 Foo 2026 99:99:99 +9999",
    b"Message-ID: <<>>",
    b"Reply-To: =?utf-8?b?",
    b"To: undisclosed-recipients:;",
    b"X: \t",
    b"\tcontinuation",
]
BODY_PIECES = [
    b"",
    b"hello",
    b"--B",
    b"--B--",
    b"--B\r\nContent-Type: text/plain\r\n\r\nx",
    b"--C\r\n",
    b"=C3=A9=",
    b"=ZZ",
    b"AAAA",
    b"AA==",
    b"A===",
    b"\xc3\xa9\xff",
    b"--B\r\nContent-Type: message/rfc822\r\n\r\nFrom: alice@example.com\r\n\r\nx",
    b"--B\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!",
    b".",
    b"..",
]


def dot_stuffed(message: bytes) -> bytes:
    stuffed = (b"\r\n" + message).replace(b"\r\n.", b"\r\n..")[2:]
    return stuffed if stuffed.endswith(b"\r\n") else stuffed + b"\r\n"


@pytest.mark.parametrize(
    "mail_from",
    [b"MAIL FROM:<alice@example.com>", b"MAIL FROM:<alice@example.com> SMTPUTF8 BODY=8BITMIME"],
    ids=["ascii", "smtputf8"],
)
@given(
    st.sampled_from(FROMS),
    st.sampled_from([b"", *CONTENT_TYPES]),
    st.sampled_from([b"", *ENCODINGS]),
    st.lists(st.sampled_from(OTHER_HEADERS), max_size=4),
    st.lists(st.sampled_from(BODY_PIECES) | st.binary(max_size=40), max_size=8),
)
# Always tried: raw 8-bit octets in quoted-printable made the check raise (421 4.3.0, a retry
# forever) before they were refused with 550 5.6.0. The random search alone found that in three
# of five seeds.
@example(FROMS[0], b'Content-Type: text/plain; charset="utf-8"', ENCODINGS[1], [], [b"caf\xc3\xa9"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
async def test_every_upload_gets_250_or_a_5xx_and_the_session_goes_on(
    mail_from: bytes,
    sender: bytes,
    content_type: bytes,
    encoding: bytes,
    others: list[bytes],
    body: list[bytes],
) -> None:
    headers = [h for h in (sender, content_type, encoding, *others) if h]
    # Bare CR and LF are the core's own refusal (tested there): keep the lines whole here.
    text = b"\r\n".join(body).replace(b"\r\n", b"\n").replace(b"\r", b"").replace(b"\n", b"\r\n")
    message = b"\r\n".join(headers) + b"\r\n\r\n" + text
    queue = MemoryQueue()
    gateway = make_gateway(queue)
    async with trio.open_nursery() as nursery:
        client = await connect(nursery, gateway)
        await client.login()
        assert (await client.command(mail_from)).code == 250
        assert (await client.command(b"RCPT TO:<bob@example.net>")).code == 250
        assert (await client.command(b"DATA")).code == 354
        reply = await client.command(dot_stuffed(message) + b".")
        assert reply.code == 250 or 500 <= reply.code < 600, (reply, message)
        assert len(queue.messages) == (1 if reply.code == 250 else 0)
        assert (await client.command(b"NOOP")).code == 250
        nursery.cancel_scope.cancel()
