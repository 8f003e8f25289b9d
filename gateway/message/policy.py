"""Checks on a complete message (service.md, message policy), on the standard library's parser.

`check()` parses with email.policy.default and reads the defects the parser records; it adds
its own checks only where the parser reports nothing (header counts, 8-bit headers, nesting,
attachment sizes, sender alignment). It is CPU work: run it off the event loop.
"""

from __future__ import annotations

import binascii
import email.errors
import email.policy
import quopri
from collections.abc import Callable
from email.message import EmailMessage, Message
from email.parser import BytesParser

import attrs

from ..smtp import Reply, replies

MAX_NESTING = 32  # multipart levels
SINGLE_FIELDS = ("Sender", "Reply-To", "To", "Cc", "Bcc", "Subject", "Message-ID", "Date")
KNOWN_ENCODINGS = frozenset({"7bit", "8bit", "binary", "quoted-printable", "base64"})

# Defects that make a message refused, with the reason a person can act on.
_STRUCTURE_DEFECTS: dict[type[email.errors.MessageDefect], str] = {
    email.errors.MissingHeaderBodySeparatorDefect: "a header line has no colon (or the blank "
    "line between header and body is missing)",
    email.errors.NoBoundaryInMultipartDefect: "a multipart part has no boundary parameter",
    email.errors.StartBoundaryNotFoundDefect: "a multipart part never starts its boundary",
    email.errors.CloseBoundaryNotFoundDefect: "a multipart part is never closed",
    email.errors.MultipartInvariantViolationDefect: "a multipart part is not multipart inside",
    email.errors.InvalidMultipartContentTransferEncodingDefect: "a multipart part has a "
    "content-transfer-encoding other than 7bit, 8bit or binary",
    email.errors.FirstHeaderLineIsContinuationDefect: "the first header line is a continuation",
    email.errors.MisplacedEnvelopeHeaderDefect: "an mbox From_ line in the header",
}
_BASE64_DEFECTS = (
    email.errors.InvalidBase64PaddingDefect,
    email.errors.InvalidBase64CharactersDefect,
    email.errors.InvalidBase64LengthDefect,
)


@attrs.frozen
class Rules:
    """What one message is checked against."""

    owns: Callable[[str], bool]  # whether the authenticated user may use this address
    user: str
    smtputf8: bool = False
    max_attachment_size: int = 4 * 1024 * 1024  # octets, decoded


def check(message: bytes, rules: Rules) -> Reply | None:
    """None if the message may go upstream, else the reply that refuses it."""
    end = message.find(b"\r\n\r\n")
    header = message if end < 0 else message[: end + 2]
    if b"\0" in message:
        return replies.message_rejected("NUL character in the message")
    if not rules.smtputf8 and not header.isascii():
        return replies.message_rejected(
            "8-bit characters in the header without SMTPUTF8 (use RFC 2047 encoded words)"
        )
    parsed = BytesParser(policy=email.policy.default).parsebytes(message)
    assert isinstance(parsed, EmailMessage)
    for defect in parsed.defects:
        reason = _STRUCTURE_DEFECTS.get(type(defect))
        if reason is not None:
            return replies.message_rejected(reason)
    froms = parsed.get_all("From") or []
    if len(froms) != 1:
        return replies.message_rejected(
            "no From header" if not froms else f"{len(froms)} From headers (exactly one allowed)"
        )
    for name in SINGLE_FIELDS:
        count = len(parsed.get_all(name) or [])
        if count > 1:
            return replies.message_rejected(f"{count} {name} headers (at most one allowed)")
    for name in ("From", "Sender"):
        problem = _address_problem(parsed, name, rules)
        if problem is not None:
            return problem
    return _check_parts(parsed, rules, depth=0, top=parsed)


def _address_problem(msg: EmailMessage, name: str, rules: Rules) -> Reply | None:
    if name not in msg:
        return None
    try:
        field = msg[name]
        addresses = field.addresses
    except (ValueError, TypeError, IndexError, AttributeError):
        return replies.message_rejected(f"the {name} header cannot be parsed")
    # Under SMTPUTF8 raw UTF-8 is legal in headers (RFC 6532): the parser, reading bytes as
    # ASCII, marks it; those marks are not defects then.
    tolerated = _UTF8_MARKS if rules.smtputf8 else ()
    defects = [d for d in field.defects if not isinstance(d, tolerated)]
    specs = [_unescape(a.addr_spec) for a in addresses]
    if defects or not specs or any(s is None or "@" not in s for s in specs):
        return replies.message_rejected(f"the {name} header is not a valid address")
    if name == "Sender" and len(specs) != 1:
        return replies.message_rejected("the Sender header must hold exactly one address")
    if not all(s is not None and rules.owns(s) for s in specs):
        return replies.from_not_permitted(rules.user)
    return None


_UTF8_MARKS = (email.errors.UndecodableBytesDefect, email.errors.NonASCIILocalPartDefect)


def _unescape(text: str) -> str | None:
    """The parser keeps undecodable octets as surrogate escapes: read them as UTF-8."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeDecodeError:
        return None


def _describe(part: Message) -> str:
    name = part.get_filename() or part.get_param("name")
    return f"{name!r}" if isinstance(name, str) else f"of type {part.get_content_type()}"


def _check_parts(part: Message, rules: Rules, depth: int, top: Message) -> Reply | None:
    if depth > MAX_NESTING:
        return replies.message_rejected(f"MIME parts nested more than {MAX_NESTING} deep")
    for defect in part.defects:
        reason = _STRUCTURE_DEFECTS.get(type(defect))
        if reason is not None:
            return replies.message_rejected(reason)
    if "Content-Type" in part:
        header = part["Content-Type"]
        if getattr(header, "defects", None) or "/" not in str(part.get_content_type()):
            return replies.message_rejected("a Content-Type header cannot be parsed")
    encoding = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    if encoding not in KNOWN_ENCODINGS:
        return replies.message_rejected(f"unknown Content-Transfer-Encoding {encoding!r}")
    if part.is_multipart():
        children = part.get_payload()
        assert isinstance(children, list)
        for child in children:
            if isinstance(child, Message):
                problem = _check_parts(child, rules, depth + 1, top)
                if problem is not None:
                    return problem
        return None
    if part.get_content_type() == "message/rfc822":
        inner = part.get_payload()
        if isinstance(inner, list):
            for child in inner:
                if isinstance(child, Message):
                    problem = _check_parts(child, rules, depth + 1, top)
                    if problem is not None:
                        return problem
        return None
    raw = part.get_payload(decode=False)
    body = raw.encode("ascii", "surrogateescape") if isinstance(raw, str) else b""
    if encoding == "base64":
        try:
            size = len(binascii.a2b_base64(body, strict_mode=False))
        except binascii.Error:
            return replies.message_rejected(f"the base64 of a part {_describe(part)} is invalid")
        part.get_payload(decode=True)  # records the parser's own base64 defects
        if any(isinstance(d, _BASE64_DEFECTS) for d in part.defects):
            return replies.message_rejected(f"the base64 of a part {_describe(part)} is invalid")
    elif encoding == "quoted-printable":
        size = len(quopri.decodestring(body))
    else:
        size = len(body)
    if _is_attachment(part, top) and size > rules.max_attachment_size:
        return replies.attachment_too_big(_describe(part), rules.max_attachment_size)
    return None


def _is_attachment(part: Message, top: Message) -> bool:
    """A leaf that is not the message's text body: named, marked attachment, or not text."""
    if part.get_filename() or part.get_param("name"):
        return True
    if str(part.get("Content-Disposition", "")).split(";")[0].strip().lower() == "attachment":
        return True
    return part.get_content_maintype() != "text" and part is not top
