"""Every reply the service sends, as named constants or small factories.

Texts may change; codes and enhanced codes are the contract (`shared/spec/service.md`, reply
catalogue). Nothing else in the code base writes a reply line by hand.
"""

from __future__ import annotations

import functools

import attrs

# Replies that count toward the "too many errors" rule (service.md, limits and timers).
ERROR_CODES = frozenset({500, 501, 502, 503, 504, 530, 538, 555})

_UNSAFE = {c: "?" for c in (*range(0x20), 0x7F)}
MAX_REPLY_TEXT = 400  # characters per line; keeps a reply within RFC 5321's 512-octet line


def _safe(line: str) -> str:
    # Replies may quote client input (an address, a parameter name): never let it break the
    # line structure of the reply.
    if not line.isprintable():
        line = line.translate(_UNSAFE)
    return line[:MAX_REPLY_TEXT]


def _render(code: int, enhanced: str | None, lines: tuple[str, ...]) -> bytes:
    if len(lines) == 1:
        if enhanced:
            return f"{code} {enhanced} {_safe(lines[0])}\r\n".encode()
        return f"{code} {_safe(lines[0])}\r\n".encode()
    prefix = f"{code}-{enhanced} " if enhanced else f"{code}-"
    *first, last = lines
    head = "".join([f"{prefix}{_safe(line)}\r\n" for line in first])
    tail = f"{code} {enhanced} {_safe(last)}\r\n" if enhanced else f"{code} {_safe(last)}\r\n"
    return (head + tail).encode("utf-8")


@attrs.frozen
class Reply:
    """One SMTP reply: a code, an enhanced status code (RFC 3463) where one is due, text lines."""

    code: int
    enhanced: str | None
    lines: tuple[str, ...]
    wire: bytes = attrs.field(init=False, repr=False, eq=False)
    # A 421 tells the client the server is closing the connection (RFC 5321 §3.8).
    closes: bool = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "wire", _render(self.code, self.enhanced, self.lines))
        object.__setattr__(self, "closes", self.code == 421)

    @classmethod
    def of(cls, code: int, enhanced: str | None, *lines: str) -> Reply:
        return cls(code, enhanced, lines or ("",))

    @property
    def text(self) -> str:
        return " ".join(self.lines)


R = Reply.of

# --- 2xx ------------------------------------------------------------------------------------
OK = R(250, "2.0.0", "Ok")
SENDER_OK = R(250, "2.1.0", "Ok")
RECIPIENT_OK = R(250, "2.1.5", "Ok")
BYE = R(221, "2.0.0", "Bye")
READY_TLS = R(220, "2.0.0", "Ready to start TLS")
AUTH_OK = R(235, "2.7.0", "Authentication successful")
VRFY_CANNOT = R(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery")
HELP = R(
    214,
    "2.0.0",
    "Commands: HELO EHLO AUTH STARTTLS MAIL RCPT DATA RSET NOOP HELP VRFY QUIT",
)

# --- 3xx (no enhanced code: RFC 2034 puts them on 2xx, 4xx and 5xx only) ---------------------
START_DATA = R(354, None, "End data with <CR><LF>.<CR><LF>")
AUTH_PLAIN_CHALLENGE = R(334, None, "")
AUTH_LOGIN_USERNAME = R(334, None, "VXNlcm5hbWU6")  # "Username:"
AUTH_LOGIN_PASSWORD = R(334, None, "UGFzc3dvcmQ6")  # "Password:"

# --- 4xx ------------------------------------------------------------------------------------
QUEUE_UNAVAILABLE = R(451, "4.3.0", "Error: queue unavailable, try again later")
TOO_MANY_RECIPIENTS = R(452, "4.5.3", "Error: too many recipients")
AUTH_TEMPORARY_FAILURE = R(454, "4.7.0", "Temporary authentication failure")

# --- 5xx ------------------------------------------------------------------------------------
UNKNOWN_COMMAND = R(500, "5.5.2", "Error: command not recognized")
COMMAND_TOO_LONG = R(500, "5.5.2", "Error: command too long")
MAIL_SYNTAX = R(501, "5.5.4", "Syntax: MAIL FROM:<address>")
RCPT_SYNTAX = R(501, "5.5.4", "Syntax: RCPT TO:<address>")
BAD_SENDER_SYNTAX = R(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = R(501, "5.1.3", "Bad recipient address syntax")
HELO_SYNTAX = R(501, "5.5.4", "Syntax: HELO hostname")
EHLO_SYNTAX = R(501, "5.5.4", "Syntax: EHLO hostname")
AUTH_SYNTAX = R(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
VRFY_SYNTAX = R(501, "5.5.4", "Syntax: VRFY address")
NO_ARGUMENTS = R(501, "5.5.4", "Syntax: this command takes no argument")
AUTH_ABORTED = R(501, "5.7.0", "Authentication aborted")
CANNOT_DECODE = R(501, "5.5.2", "Cannot decode response")
NOT_IMPLEMENTED = R(502, "5.5.1", "Error: command not implemented")
NEED_HELO = R(503, "5.5.1", "Error: send HELO/EHLO first")
NEED_MAIL = R(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = R(503, "5.5.1", "Error: need RCPT command")
NESTED_MAIL = R(503, "5.5.1", "Error: nested MAIL command")
ALREADY_AUTHENTICATED = R(503, "5.5.1", "Error: already authenticated")
UNKNOWN_MECHANISM = R(504, "5.5.4", "Unrecognized authentication type")
AUTH_REQUIRED = R(530, "5.7.0", "Authentication required")
STARTTLS_FIRST = R(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_INVALID = R(535, "5.7.8", "Authentication credentials invalid")
ENCRYPTION_REQUIRED = R(538, "5.7.11", "Encryption required for requested authentication mechanism")
MESSAGE_TOO_BIG = R(552, "5.3.4", "Error: message file too big")
UNICODE_NEEDS_SMTPUTF8 = R(553, "5.6.7", "Must declare SMTPUTF8 to send unicode address")
TLS_ALREADY_ACTIVE = R(554, "5.5.1", "Error: TLS already active")


@functools.lru_cache(maxsize=16)  # one per listener's hostname, sent on every connection
def greeting(hostname: str) -> Reply:
    return R(220, None, f"{hostname} ESMTP")


def queued(queue_id: str) -> Reply:
    return R(250, "2.0.0", f"Ok: queued as {queue_id}")


def timeout(hostname: str) -> Reply:
    return R(421, "4.4.2", f"{hostname} Error: timeout exceeded")


def too_many_user_connections(hostname: str) -> Reply:
    return R(421, "4.7.0", f"{hostname} Error: too many connections for this user")


def too_many_connections(hostname: str) -> Reply:
    return R(421, "4.7.0", f"{hostname} Error: too many connections")


def too_many_errors(hostname: str) -> Reply:
    return R(421, "4.7.0", f"{hostname} Error: too many errors")


def shutting_down(hostname: str) -> Reply:
    return R(421, "4.3.2", f"{hostname} Service shutting down")


def internal_error(hostname: str) -> Reply:
    return R(421, "4.3.0", f"{hostname} Error: internal error, closing connection")


def bad_parameter_value(name: str) -> Reply:
    return R(501, "5.5.4", f"Bad parameter value: {name}")


def unsupported_option(name: str) -> Reply:
    return R(555, "5.5.4", f"Unsupported option: {name}")


def message_too_big(limit: int) -> Reply:
    return R(552, "5.3.4", f"Error: message file too big (limit {limit} octets)")


def attachment_too_big(name: str, limit: int) -> Reply:
    return R(552, "5.3.4", f"Error: attachment {name} too big (limit {limit} octets)")


def message_rejected(reason: str) -> Reply:
    return R(550, "5.6.0", f"Message rejected: {reason}")


def from_not_permitted(user: str) -> Reply:
    return R(550, "5.7.1", f"Message rejected: From header address not permitted for user {user}")


def sender_not_owned(address: str, user: str) -> Reply:
    return R(553, "5.7.1", f"<{address}>: Sender address rejected: not owned by user {user}")


def ehlo(hostname: str, keywords: tuple[str, ...]) -> Reply:
    return Reply(250, None, (hostname, *keywords))


def helo(hostname: str) -> Reply:
    return R(250, None, hostname)
