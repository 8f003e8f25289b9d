"""Addresses per RFC 5321 and RFC 6531."""

from __future__ import annotations

import pytest

from gateway.smtp._grammar import parse_mailbox, split_command

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
