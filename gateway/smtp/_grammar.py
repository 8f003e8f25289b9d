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
_LET_DIG = r"[A-Za-z0-9\u0080-\U0010ffff]"
_LABEL = rf"{_LET_DIG}(?:[A-Za-z0-9\-\u0080-\U0010ffff]*{_LET_DIG})?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_MAILBOX = re.compile(rf"({_DOT_STRING}|{_QUOTED})@({_DOMAIN}|{_LITERAL})")
_SOURCE_ROUTE = re.compile(rf"@{_DOMAIN}(?:,@{_DOMAIN})*:")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+")
_GENERAL_TAG = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?")
_DIGITS = re.compile(r"[0-9]{1,20}")

BODY_TYPES = frozenset({"7BIT", "8BITMIME"})


_KNOWN_VERBS = (
    *("HELO", "EHLO", "AUTH", "STARTTLS", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "HELP"),
    *("VRFY", "EXPN", "QUIT", "BDAT", "TURN", "ETRN"),
)
_VERBS = {v.encode(): v for v in _KNOWN_VERBS}
MAX_VERB = 10  # octets; longer words are no verb of any SMTP extension


def split_command(line: bytes) -> tuple[str, bytes]:
    """The verb (upper case; "" when not a plausible verb) and the raw argument."""
    word, _, arg = line.partition(b" ")
    verb = _VERBS.get(word) or _VERBS.get(word.upper())
    if verb is None:
        if not word.isalpha() or len(word) > MAX_VERB:
            return "", arg
        verb = word.decode("ascii").upper()
    return verb, arg.strip(b" ") if arg else arg


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
    local, domain = m.group(1, 2)
    if text.isascii():
        if len(local) > MAX_LOCAL_PART or len(domain) > MAX_DOMAIN:
            return None
    elif len(local.encode()) > MAX_LOCAL_PART or len(domain.encode()) > MAX_DOMAIN:
        return None
    if domain.startswith("[") and not _valid_literal(domain):
        return None
    return text


Params = tuple[tuple[str, str | None], ...]

# The usual path, an ASCII dot-string at an ASCII domain, matched in one go on the raw bytes;
# anything else (quoted local parts, literals, UTF-8, routes, errors) takes the full parser.
_ASCII_ATOM = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+"
_ASCII_LABEL = rb"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
# Lookaheads hold the limits: a local part within MAX_LOCAL_PART before its "@", and the whole
# address within MAX_PATH with its brackets (which bounds the domain too). A path beyond them
# fails here and gets its exact answer from the full parser.
_ASCII_MAILBOX = rb"(?=[^@>]{1,%d}@)(?=[^>]{1,%d}>)(%s(?:\.%s)*@%s(?:\.%s)*)>" % (
    MAX_LOCAL_PART,
    MAX_PATH - 2,
    _ASCII_ATOM,
    _ASCII_ATOM,
    _ASCII_LABEL,
    _ASCII_LABEL,
)
_FAST_PATH = {
    b"FROM:": re.compile(rb"(?i:FROM): ?<" + _ASCII_MAILBOX),
    b"TO:": re.compile(rb"(?i:TO): ?<" + _ASCII_MAILBOX),
}


def parse_path_arg(
    arg: bytes, keyword: bytes, syntax: Reply, bad_address: Reply, *, allow_postmaster: bool
) -> tuple[str, Params] | Reply:
    """`FROM:<path> params` or `TO:<path> params`: the address and the raw parameters."""
    m = _FAST_PATH[keyword].match(arg)
    if m is not None:
        address = m.group(1).decode("ascii")
        end = m.end()
        if end == len(arg):
            return address, ()
        if arg[end] == 0x20:
            try:
                params = _parse_params(arg[end:].decode("utf-8"))
            except UnicodeDecodeError:
                return syntax
            return syntax if params is None else (address, params)
    n = len(keyword)
    head = arg[:n]
    if head != keyword and head.upper() != keyword:
        return syntax
    try:
        rest = arg[n:].decode("utf-8").lstrip(" ")
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
        if len(path) + 2 > MAX_PATH or (not path.isascii() and len(path.encode()) + 2 > MAX_PATH):
            return bad_address
        if path[:1] == "@":
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
    if not tail:
        return address, ()
    params = _parse_params(tail)
    return syntax if params is None else (address, params)


def _parse_params(tail: str) -> Params | None:
    """Space-separated `keyword[=value]` (RFC 5321 §4.1.2), or None when malformed."""
    params: list[tuple[str, str | None]] = []
    for word in tail.split(" "):
        if not word:
            continue
        name, eq, value = word.partition("=")
        if not _KEYWORD.fullmatch(name) or (eq and not _VALUE.fullmatch(value)):
            return None
        params.append((name.upper(), value if eq else None))
    return tuple(params)


@attrs.frozen
class MailParams:
    body: str | None = None
    smtputf8: bool = False
    size: int | None = None


NO_PARAMS = MailParams()


def parse_mail_params(params: Params) -> MailParams | Reply:
    """MAIL's ESMTP parameters: SIZE, BODY, SMTPUTF8, AUTH (accepted and ignored)."""
    if not params:
        return NO_PARAMS
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


def check_rcpt_params(params: Params) -> Reply | None:
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


def parse_plain(response: bytes) -> tuple[str, str, str] | Reply:
    """An AUTH PLAIN response, decoded: (authzid, authcid, passwd) (RFC 4616 §2)."""
    raw = decode_base64(response)
    if raw is None:
        return replies.CANNOT_DECODE
    parts = raw.split(b"\0")
    if len(parts) != 3:
        return replies.CANNOT_DECODE
    try:
        authzid, username, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        return replies.CANNOT_DECODE
    return authzid, username, password
