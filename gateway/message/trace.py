"""What a submission server adds (RFC 6409 §8): Received always, Date and Message-ID when the
message has none."""

from __future__ import annotations

import datetime
import re
import secrets
import time
from email.utils import format_datetime

_UNSAFE = re.compile(r"[^\x21-\x7e]")  # anything not printable ASCII, space included
_COMMENT_UNSAFE = re.compile(r"[()\\]")
MAX_TOKEN = 255  # characters of a client-supplied name kept in a trace header


_SAFE_TOKEN = re.compile(rf"[\x21-\x27\x2a-\x5b\x5d-\x7e]{{1,{MAX_TOKEN}}}")


def _token(text: str) -> str:
    """A client-supplied name made safe for a header: it can never break the header."""
    if _SAFE_TOKEN.fullmatch(text):  # the usual case: one match, no copy
        return text
    return _COMMENT_UNSAFE.sub("?", _UNSAFE.sub("?", text))[:MAX_TOKEN] or "unknown"


_clock: tuple[int, str] = (0, "")


def _now() -> str:
    """The current time as RFC 5322 wants it, formatted once a second: email.utils'
    formatting is a noticeable share of a small message's CPU."""
    global _clock
    second = int(time.time())
    if _clock[0] != second:
        when = datetime.datetime.fromtimestamp(second, datetime.UTC)
        _clock = (second, format_datetime(when))
    return _clock[1]


def _has_field(lowered: bytes, name: bytes) -> bool:
    """Whether a header, lowered and after a CRLF, has a field `name` (lowercase)."""
    return b"\r\n" + name + b":" in lowered


def trace_headers(
    message: bytes,
    *,
    hostname: str,
    helo: str,
    client_ip: str,
    tls: bool,
    smtputf8: bool,
    queue_id: str,
    rcpt_to: tuple[str, ...],
    now: datetime.datetime | None = None,
) -> bytes:
    """The header lines to put before `message`."""
    when = _now() if now is None else format_datetime(now)
    # RFC 3848: ESMTPA/ESMTPSA say the client authenticated (and with TLS); RFC 6531 the UTF8
    # forms under SMTPUTF8.
    protocol = ("UTF8SMTP" if smtputf8 else "ESMTP") + ("SA" if tls else "A")
    recipient = f"\r\n\tfor <{_token(rcpt_to[0])}>" if len(rcpt_to) == 1 else ""
    lines = [
        f"Received: from {_token(helo)} ([{_token(client_ip)}])\r\n"
        f"\tby {hostname} (smtp-gateway) with {protocol} id {queue_id}{recipient};\r\n"
        f"\t{when}\r\n"
    ]
    end = message.find(b"\r\n\r\n")
    header = message if end < 0 else message[: end + 2]
    lowered = b"\r\n" + header.lower()
    if not _has_field(lowered, b"date"):
        lines.append(f"Date: {when}\r\n")
    if not _has_field(lowered, b"message-id"):
        lines.append(f"Message-ID: <{queue_id}.{secrets.token_hex(6)}@{hostname}>\r\n")
    return "".join(lines).encode("utf-8")
