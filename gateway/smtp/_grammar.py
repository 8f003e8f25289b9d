"""Command, path and parameter parsing, and AUTH payload decoding (RFC 5321, 6531, 4954, 4616).

Parsers return either a value or the `Reply` that refuses the input: a parse failure is an
answer to send, never an exception.
"""

from __future__ import annotations

import binascii
import ipaddress
import re

import attrs

from . import _replies as replies
from ._limits import MAX_DOMAIN, MAX_LOCAL_PART, MAX_PATH
from ._replies import Reply

# RFC 5321 §4.1.2, widened by RFC 6531 §3.3 to UTF-8 (checked separately: the caller decides
# whether non-ASCII is allowed in this transaction).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_MAILBOX = re.compile(rf"({_DOT_STRING}|{_QUOTED})@({_DOMAIN}|{_LITERAL})")
_SOURCE_ROUTE = re.compile(rf"@{_DOMAIN}(?:,@{_DOMAIN})*:")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+")
_GENERAL_TAG = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?")
_DIGITS = re.compile(r"[0-9]{1,20}")

BODY_TYPES = frozenset({"7BIT", "8BITMIME"})


def split_command(line: bytes) -> tuple[str, bytes]:
    """The verb (upper case; "" when not a plausible verb) and the raw argument."""
    verb, _, arg = line.partition(b" ")
    if not verb.isalpha() or len(verb) > 10:
        return "", arg
    return verb.decode("ascii").upper(), arg.strip(b" ")


def _valid_literal(literal: str) -> bool:
    inner = literal[1:-1]
    if ":" in inner:
        tag, _, rest = inner.partition(":")
        if tag.upper() == "IPV6":
            try:
                ipaddress.IPv6Address(rest)
            except ValueError:
                return False
            return True
        # General-address-literal: Standardized-tag ":" 1*dcontent
        return bool(_GENERAL_TAG.fullmatch(tag)) and bool(rest)
    try:
        ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


def parse_mailbox(text: str) -> str | None:
    """An RFC 5321 Mailbox (RFC 6531 when it holds non-ASCII), or None."""
    m = _MAILBOX.fullmatch(text)
    if m is None:
        return None
    local, domain = m.group(1), m.group(2)
    if len(local.encode()) > MAX_LOCAL_PART or len(domain.encode()) > MAX_DOMAIN:
        return None
    if domain.startswith("[") and not _valid_literal(domain):
        return None
    return text


@attrs.frozen
class PathAndParams:
    address: str
    params: tuple[tuple[str, str | None], ...]


def parse_path_arg(
    arg: bytes, keyword: bytes, syntax: Reply, bad_address: Reply, *, allow_postmaster: bool
) -> PathAndParams | Reply:
    """`FROM:<path> params` or `TO:<path> params`: the address and the raw parameters."""
    head = arg[: len(keyword)]
    if head.upper() != keyword:
        return syntax
    try:
        rest = arg[len(keyword) :].decode("utf-8").lstrip(" ")
    except UnicodeDecodeError:
        return bad_address
    if not rest:
        return syntax
    if rest.startswith("<"):
        close = rest.find(">")
        if close < 0:
            return syntax
        path, tail = rest[1:close], rest[close + 1 :]
        if tail and not tail.startswith(" "):
            return syntax
        if len(path.encode()) + 2 > MAX_PATH:
            return bad_address
        route = _SOURCE_ROUTE.match(path)
        if route is not None:  # RFC 5321 §4.1.2: accepted, and ignored
            path = path[route.end() :]
    else:
        # Postfix accepts the address without angle brackets; so do we.
        path, _, tail = rest.partition(" ")
        tail = " " + tail if tail else ""
    if path == "":
        address = ""
    elif allow_postmaster and path.lower() == "postmaster":
        address = path
    else:
        parsed = parse_mailbox(path)
        if parsed is None:
            return bad_address
        address = parsed
    params: list[tuple[str, str | None]] = []
    for word in tail.split(" "):
        if not word:
            continue
        name, eq, value = word.partition("=")
        if not _KEYWORD.fullmatch(name) or (eq and not _VALUE.fullmatch(value)):
            return syntax
        params.append((name.upper(), value if eq else None))
    return PathAndParams(address, tuple(params))


@attrs.frozen
class MailParams:
    body: str | None = None
    smtputf8: bool = False
    size: int | None = None


def parse_mail_params(params: tuple[tuple[str, str | None], ...]) -> MailParams | Reply:
    """MAIL's ESMTP parameters: SIZE, BODY, SMTPUTF8, AUTH (accepted and ignored)."""
    body: str | None = None
    smtputf8 = False
    size: int | None = None
    seen: set[str] = set()
    for name, value in params:
        if name in seen:
            return replies.bad_parameter_value(name)
        seen.add(name)
        if name == "SIZE":
            if value is None or not _DIGITS.fullmatch(value):
                return replies.bad_parameter_value(name)
            size = int(value)
        elif name == "BODY":
            if value is None or value.upper() not in BODY_TYPES:
                return replies.bad_parameter_value(name)
            body = value.upper()
        elif name == "SMTPUTF8":
            if value is not None:
                return replies.bad_parameter_value(name)
            smtputf8 = True
        elif name == "AUTH":
            if value is None:
                return replies.bad_parameter_value(name)
        else:
            return replies.unsupported_option(name)
    return MailParams(body=body, smtputf8=smtputf8, size=size)


RCPT_IGNORED_PARAMS = frozenset({"NOTIFY", "ORCPT"})


def check_rcpt_params(params: tuple[tuple[str, str | None], ...]) -> Reply | None:
    """RCPT takes no parameters; DSN's NOTIFY and ORCPT are tolerated and ignored."""
    for name, _ in params:
        if name not in RCPT_IGNORED_PARAMS:
            return replies.unsupported_option(name)
    return None


def decode_base64(data: bytes) -> bytes | None:
    """Strict base64 (RFC 4954 §4: "=" alone is an empty response), or None."""
    if data == b"=":
        return b""
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def decode_text(data: bytes) -> str | None:
    """UTF-8 text with no NUL (RFC 4616 §2), or None."""
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


@attrs.frozen
class PlainCredentials:
    authzid: str
    username: str
    password: str = attrs.field(repr=False)


def parse_plain(response: bytes) -> PlainCredentials | Reply:
    """An AUTH PLAIN response, decoded: `authzid NUL authcid NUL passwd` (RFC 4616 §2)."""
    raw = decode_base64(response)
    if raw is None:
        return replies.CANNOT_DECODE
    parts = raw.split(b"\0")
    if len(parts) != 3:
        return replies.CANNOT_DECODE
    texts = [decode_text(p) for p in parts]
    authzid, username, password = texts
    if authzid is None or username is None or password is None:
        return replies.CANNOT_DECODE
    return PlainCredentials(authzid, username, password)


def is_ascii(text: str) -> bool:
    return text.isascii()
