"""The limits the core enforces, each a named constant with its unit and source."""

from __future__ import annotations

import enum

import attrs

MAX_COMMAND_LINE = 512  # octets with CRLF, RFC 5321 §4.5.3.1.4
MAX_AUTH_LINE = 12288  # octets with CRLF, RFC 4954 §4
MAX_TEXT_LINE = 998  # octets without CRLF, RFC 5322 §2.1.1
MAX_MESSAGE_SIZE = 8 * 1024 * 1024  # octets after dot-unstuffing, service.md
MAX_RECIPIENTS = 100  # per transaction, service.md
MAX_ERRORS = 10  # bad commands per connection, service.md
MAX_AUTH_FAILURES = 5  # per connection, service.md
MAX_LOCAL_PART = 64  # octets, RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255  # octets, RFC 5321 §4.5.3.1.2
MAX_PATH = 256  # octets with the angle brackets, RFC 5321 §4.5.3.1.3


class TlsMode(enum.Enum):
    """How a listener offers TLS (service.md, listeners and TLS)."""

    NONE = "none"
    STARTTLS = "starttls"
    IMPLICIT = "implicit"


@attrs.frozen(cache_hash=True)  # hashed by the EHLO reply cache on every EHLO
class SessionConfig:
    """What one SMTP session needs to know about its listener and the service's limits."""

    hostname: str = "localhost"
    tls_mode: TlsMode = TlsMode.STARTTLS
    allow_plaintext_auth: bool = False
    max_message_size: int = MAX_MESSAGE_SIZE
    max_recipients: int = MAX_RECIPIENTS
    max_errors: int = MAX_ERRORS
    max_auth_failures: int = MAX_AUTH_FAILURES
    max_command_line: int = MAX_COMMAND_LINE
    max_auth_line: int = MAX_AUTH_LINE
    max_text_line: int = MAX_TEXT_LINE
