"""Addresses per RFC 5321 and RFC 6531."""

from __future__ import annotations

import pytest

from gateway.smtp import replies
from gateway.smtp._grammar import parse_mailbox, parse_path_arg, split_command

VALID = [
    "a@b.c",
    "alice@example.com",
    "first.last@example.com",
    "x+tag@example.com",
    "!#$%&'*+-/=?^_`{|}~@example.com",
    '"john doe"@example.com',
    '"a\\"b"@example.com',
    '"@"@example.com',
    "a@localhost",
    "a@[192.0.2.1]",
    "a@[IPv6:2001:db8::1]",
    "a@[x-tag:anything]",
    "a@xn--bcher-kva.example",
    "a@1-2.example",
    "ålice@exämple.com",
    "用户@例子.广告",
    "a" * 64 + "@example.com",
]

INVALID = [
    "",
    "a",
    "a@",
    "@b.c",
    "a@@b.c",
    "a..b@c.d",
    ".a@b.c",
    "a.@b.c",
    "a b@c.d",
    '"unterminated@b.c',
    "a@-b.c",
    "a@b-.c",
    "a@b..c",
    "a@b.c.",
    "a@[300.0.0.1]",
    "a@[IPv6:zz::1]",
    "a@[]",
    "a@[1.2.3]",
    "a@b_c.d",
    "a\x00@b.c",
    "a" * 65 + "@example.com",
    "a@" + "b" * 256,
    'a"b@c.d',
]


@pytest.mark.parametrize("address", VALID)
def test_valid_mailbox(address: str) -> None:
    assert parse_mailbox(address) == address


@pytest.mark.parametrize("address", INVALID)
def test_invalid_mailbox(address: str) -> None:
    assert parse_mailbox(address) is None


@pytest.mark.parametrize(
    ("line", "verb", "arg"),
    [
        (b"NOOP", "NOOP", b""),
        (b"mail FROM:<a@b>", "MAIL", b"FROM:<a@b>"),
        (b"EHLO   host  ", "EHLO", b"host"),
        (b"N\xc3\xb6OP", "", b""),
        (b"NOOP1", "", b""),
        (b"", "", b""),
        (b"VERYLONGVERBNAME x", "", b"x"),
    ],
)
def test_split_command(line: bytes, verb: str, arg: bytes) -> None:
    assert split_command(line) == (verb, arg)


def _mail(address: str) -> object:
    arg = f"FROM:<{address}> SIZE=10".encode()
    return parse_path_arg(
        arg, b"FROM:", replies.MAIL_SYNTAX, replies.BAD_SENDER_SYNTAX, allow_postmaster=False
    )


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("a" * 64 + "@example.com", True),
        ("a" * 65 + "@example.com", False),
        ("a.b" * 21 + "c@example.com", True),  # 64 octets with dots
        ("a@" + ".".join(["b" * 63] * 3) + "." + "c" * 60, True),  # 254 octets: <path> is 256
        ("a@" + ".".join(["b" * 63] * 3) + "." + "c" * 61, False),  # 255: one over MAX_PATH
        ("a" * 64 + "@" + ".".join(["b" * 63] * 3) + "." + "c" * 60, False),
    ],
)
def test_path_length_limits(address: str, ok: bool) -> None:
    """The fast path's lookaheads and the full parser draw the limits at the same octet."""
    result = _mail(address)
    if ok:
        assert result == (address, (("SIZE", "10"),))
    else:
        assert result == replies.BAD_SENDER_SYNTAX
