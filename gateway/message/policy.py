"""Checks on a complete message (service.md, message policy), on the standard library's parser.

`check()` parses with email.policy.default and reads the defects the parser records; it adds
its own checks only where the parser reports nothing (header counts, 8-bit headers, nesting,
attachment sizes, sender alignment). It is CPU work: run it off the event loop.
"""

from __future__ import annotations

import email.errors
import email.feedparser
import email.policy
import functools
import quopri
import re
from collections.abc import Callable, Iterable
from email.message import EmailMessage, Message
from email.parser import BytesFeedParser

import attrs

from ..smtp import Reply, replies
from ._lines import GroupedInput


class _LineEndAtTheEnd:
    """email.feedparser trims a part's last line end with NLCRE_eol.search(payload), a regex
    anchored at the end (`(\\r\\n|\\r|\\n)\\Z`) that re.search nevertheless tries at every
    position: 80 ms for a 5 MiB part here, holding the GIL, so no thread can hide it. This
    answers the same question by looking at the end only."""

    class _Match:
        def __init__(self, text: str) -> None:
            self._text = text

        def group(self, index: int = 0) -> str:
            return self._text

    def search(self, text: str) -> _Match | None:
        for ending in ("\r\n", "\r", "\n"):
            if text.endswith(ending):
                return self._Match(ending)
        return None


vars(email.feedparser)["NLCRE_eol"] = _LineEndAtTheEnd()

MAX_NESTING = 32  # multipart levels
MAX_CACHED_FIELD = 512  # characters of an address field whose parse is remembered
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


@attrs.frozen
class Rules:
    """What one message is checked against."""

    owns: Callable[[str], bool]  # whether the authenticated user may use this address
    user: str
    smtputf8: bool = False
    max_attachment_size: int = 4 * 1024 * 1024  # octets, decoded


def new_parser() -> BytesFeedParser:
    """A parser to feed the message to as DATA arrives; pass it to `check` at the end.

    Feed it CRLF lines only, as the protocol core's DataChunks are: it hands runs of lines
    the parser only collects over as one line (see `_lines`), which makes the parse several
    times cheaper and leaves its result unchanged.
    """
    parser = BytesFeedParser(policy=email.policy.default)
    vars(parser)["_input"] = GroupedInput()  # before the first feed: nothing read it yet
    return parser


def check(
    message: bytes | list[bytes],
    rules: Rules,
    parser: BytesFeedParser | None = None,
    *,
    crlf_only: bool = False,
    fast: bool = True,
) -> Reply | None:
    """None if the message may go upstream, else the reply that refuses it.

    The message may come as the chunks it arrived in: nothing here needs it in one piece (a
    copy of megabytes). `parser` is one that was fed the whole message already (see
    new_parser). Without it, a message with a plain header (see `_plain_fields`) is decided
    from its header alone, unless `fast` is false; any other is parsed here, with new_parser
    when `crlf_only` says the message's lines all end in CRLF, else with the stock parser.
    """
    chunks = [message] if isinstance(message, bytes) else message
    header = header_section(chunks)
    if any(b"\0" in chunk for chunk in chunks):
        return replies.message_rejected("NUL character in the message")
    if not rules.smtputf8 and not header.isascii():
        return replies.message_rejected(
            "8-bit characters in the header without SMTPUTF8 (use RFC 2047 encoded words)"
        )
    if parser is None:
        fields = _plain_fields(header) if fast else None
        if fields is not None:
            return _check_fields(fields, rules)
        # Any bytes at all may come here unless told otherwise: the stock parser, line by line.
        parser = new_parser() if crlf_only else BytesFeedParser(policy=email.policy.default)
        for chunk in chunks:
            parser.feed(chunk)
    parsed = parser.close()
    assert isinstance(parsed, EmailMessage)
    for defect in parsed.defects:
        reason = _STRUCTURE_DEFECTS.get(type(defect))
        if reason is not None:
            return replies.message_rejected(reason)
    problem = _check_fields(parsed.raw_items(), rules)
    if problem is not None:
        return problem
    return _check_parts(parsed, rules, depth=0, top=parsed)


# A header line the feed parser reads as a field of its own: a name and a colon. Its name may
# be empty; such a header, like a "From " line or any other line, takes the parser's way.
_FIELD_LINE = re.compile(r"[\041-\071\073-\176]+:")


def _plain_fields(header: bytes) -> list[tuple[str, str]] | None:
    """The fields of a plain header as the feed parser would give them (name, raw value),
    or None when the header needs the parser.

    Plain: ASCII, every line a field or a continuation of one, and no Content-* field. Such a
    message is one text/plain part with no attachment, and the parser finds no structural
    defect in it: only its fields are left to check. Most submitted mail is like this, and
    the parser is most of a small message's CPU. `tests/message/test_policy.py` checks that
    both ways give the same verdict on generated headers.
    """
    if not header.isascii():
        return None
    fields: list[tuple[str, str]] = []
    field = _FIELD_LINE.match
    # The header section ends with the CRLF of its last line: the last item is empty.
    for line in header.decode("ascii").split("\r\n")[:-1]:
        if line[:1] in (" ", "\t"):
            if not fields:
                return None  # a continuation first: a defect
            name, value = fields[-1]
            # As email.policy's header_source_parse joins a field's lines.
            fields[-1] = (name, value + "\r\n" + line)
            continue
        match = field(line)
        if match is None:
            return None  # "From ", a line with no colon, an empty name
        name = line[: match.end() - 1]
        if name[:8].lower() == "content-":
            return None
        fields.append((name, line[match.end() :].lstrip(" \t")))
    if not fields:
        return None
    return [(name, value.rstrip("\r\n")) for name, value in fields]


_SINGLE_KEYS = tuple((name, name.lower()) for name in SINGLE_FIELDS)


def _check_fields(fields: Iterable[tuple[str, str]], rules: Rules) -> Reply | None:
    """The checks on the top-level fields, given as (name, raw value) in order."""
    counts: dict[str, int] = {}  # not a Counter: making one costs more than this counting
    raw: dict[str, str] = {}  # the first From and Sender
    total = 0
    for name, value in fields:
        key = name.lower()
        counts[key] = counts.get(key, 0) + 1
        total += 1
        if (key == "from" or key == "sender") and key not in raw:
            raw[key] = value
    froms = counts.get("from", 0)
    if froms != 1:
        return replies.message_rejected(
            "no From header" if not froms else f"{froms} From headers (exactly one allowed)"
        )
    if total != len(counts):  # some name repeats: is it one that may not?
        for name, key in _SINGLE_KEYS:
            count = counts.get(key, 0)
            if count > 1:
                return replies.message_rejected(f"{count} {name} headers (at most one allowed)")
    problem = _address_problem(raw["from"], "From", rules)
    if problem is None and "sender" in raw:
        problem = _address_problem(raw["sender"], "Sender", rules)
    return problem


def header_section(chunks: list[bytes]) -> bytes:
    """The header section of a message given in chunks, with the CRLF of its last line (the
    whole message when no blank line ends it). Usually a slice of the first chunk."""
    tail = b""
    for k, chunk in enumerate(chunks):
        # A blank line may straddle two chunks: three octets of the last one are enough.
        if chunk.find(b"\r\n\r\n") >= 0 or (tail + chunk[:3]).find(b"\r\n\r\n") >= 0:
            head = b"".join(chunks[: k + 1]) if k else chunk
            return head[: head.find(b"\r\n\r\n") + 2]
        tail = (tail + chunk[-3:])[-3:]
    return b"".join(chunks)


def _address_problem(raw: str, name: str, rules: Rules) -> Reply | None:
    # Only short fields are remembered: the cache's size stays bounded whatever clients send.
    parse = _address_field if len(raw) <= MAX_CACHED_FIELD else _address_field.__wrapped__
    parsed = parse(name, raw)
    if parsed is None:
        return replies.message_rejected(f"the {name} header cannot be parsed")
    specs, valid, valid_under_smtputf8 = parsed
    if not (valid_under_smtputf8 if rules.smtputf8 else valid):
        return replies.message_rejected(f"the {name} header is not a valid address")
    if name == "Sender" and len(specs) != 1:
        return replies.message_rejected("the Sender header must hold exactly one address")
    owns = rules.owns
    for spec in specs:
        if not owns(spec):
            return replies.from_not_permitted(rules.user)
    return None


@functools.lru_cache(maxsize=4096)
def _address_field(name: str, raw: str) -> tuple[tuple[str, ...], bool, bool] | None:
    """The addresses of one address field, from its raw text, and whether it is a valid list
    of addresses: as it is, and under SMTPUTF8. None if it cannot be parsed at all.

    The stdlib's address parser is most of a small message's check, and a user's From repeats
    from message to message: the result depends on the text alone, so it is remembered.
    """
    unfolded = raw.replace("\r", "").replace("\n", "")  # as policy.header_fetch_parse does
    try:
        field = email.policy.default.header_factory(name, unfolded)
        addresses = field.addresses
    except (ValueError, TypeError, IndexError, AttributeError):
        return None
    found = [_unescape(a.addr_spec) for a in addresses]
    specs = tuple(s for s in found if s is not None)
    addresses_valid = bool(found) and all(s is not None and "@" in s for s in found)
    defects = [type(d) for d in field.defects]
    # Under SMTPUTF8 raw UTF-8 is legal in headers (RFC 6532): the parser, reading bytes as
    # ASCII, marks it; those marks are not defects then.
    return (
        specs,
        addresses_valid and not defects,
        addresses_valid and all(issubclass(d, _UTF8_MARKS) for d in defects),
    )


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
    if part.is_multipart() or part.get_content_type() == "message/rfc822":
        # A multipart's parts, or the message inside a message/rfc822 part.
        children = part.get_payload()
        for child in children if isinstance(children, list) else ():
            if isinstance(child, Message):
                problem = _check_parts(child, rules, depth + 1, top)
                if problem is not None:
                    return problem
        return None
    raw = part.get_payload(decode=False)
    if not isinstance(raw, str):
        raw = ""
    if not raw.isascii():
        # 8-bit octets, which get_payload() hands back decoded with the part's charset: no
        # longer one character per octet, and not what base64 or quoted-printable may hold.
        if encoding in ("base64", "quoted-printable"):
            return replies.message_rejected(
                f"the {encoding} of a part {_describe(part)} has 8-bit octets"
            )
        octets = part.get_payload(decode=True)  # the octets as received, for 7bit/8bit/binary
        size = len(octets) if isinstance(octets, bytes) else len(raw.encode())
    elif encoding == "base64":
        # In slices: each C call holds the GIL, and the event loop waits for the longest.
        decoded = _base64_size_of(
            raw[i : i + BASE64_SLICE].encode("ascii") for i in range(0, len(raw), BASE64_SLICE)
        )
        if decoded is None:
            return replies.message_rejected(f"the base64 of a part {_describe(part)} is invalid")
        size = decoded
    elif encoding == "quoted-printable":
        size = len(quopri.decodestring(raw.encode("ascii")))
    else:
        size = len(raw)  # the parser read each octet as one code point
    if _is_attachment(part, top) and size > rules.max_attachment_size:
        return replies.attachment_too_big(_describe(part), rules.max_attachment_size)
    return None


_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_LINE_BREAKS = b"\r\n \t"


BASE64_SLICE = 512 * 1024  # characters of a base64 part checked in one go


def _base64_size_of(pieces: Iterable[bytes]) -> int | None:
    """The decoded size of a base64 body given in consecutive pieces, or None if it is not
    base64 (RFC 2045 §6.8: line breaks are ignored, anything else outside the alphabet is an
    error, "=" pads the end).

    Validated without decoding: a translate pass removes the alphabet, and what is left (line
    breaks and padding, a few octets a line) tells the rest. Decoding costs a few times more.
    """
    octets = others = pads = 0
    padded = False  # an "=" was seen: only padding and line breaks may follow
    for piece in pieces:
        rest = piece.translate(None, _BASE64_ALPHABET)
        if rest.translate(None, _LINE_BREAKS + b"="):
            return None  # a character outside the alphabet
        if padded:
            if len(rest) != len(piece):
                return None  # data after the padding
        elif b"=" in rest:
            first = piece.find(b"=")
            if piece[first:].translate(None, _LINE_BREAKS + b"="):
                return None
            padded = True
        pads += rest.count(b"=")
        if pads > 2:
            return None
        octets += len(piece)
        others += len(rest)
    data = octets - others  # alphabet characters
    if (data + pads) % 4 or (pads and data % 4 == 0):
        return None
    return data * 3 // 4


def _is_attachment(part: Message, top: Message) -> bool:
    """A leaf that is not the message's text body: named, marked attachment, or not text."""
    if part.get_filename() or part.get_param("name"):
        return True
    if str(part.get("Content-Disposition", "")).split(";")[0].strip().lower() == "attachment":
        return True
    return part.get_content_maintype() != "text" and part is not top
