"""Events the core hands to its driver.

An event with a `reply` attribute that is not None carries the answer the core decided; the
driver sends it (or, where it has a reason, another one) with `ServerConnection.send`. Events
whose `reply` is None need the driver's decision: `Authenticate`, `MailFrom`, and a
`MessageComplete` the core found nothing wrong with.

Events are read, never changed: the ones that carry no client data (NOOP's, DATA's...) are single
instances shared by every session. They are not frozen because a frozen attrs class pays a
descriptor call per field on every construction, several times per command on the hot path.
"""

from __future__ import annotations

import enum

import attrs

from ._replies import Reply


class NeedData(enum.Enum):
    """Returned by `next_event` when it needs more bytes."""

    NEED_DATA = "NEED_DATA"


NEED_DATA = NeedData.NEED_DATA


@attrs.define
class Envelope:
    """The envelope of one mail transaction, as the client gave it."""

    mail_from: str
    rcpt_to: tuple[str, ...]
    body: str | None = None  # "7BIT" | "8BITMIME" | None when not declared
    smtputf8: bool = False
    declared_size: int | None = None


@attrs.define
class Hello:
    """HELO or EHLO: the core answers it from its configuration."""

    name: str
    extended: bool
    reply: Reply


@attrs.define
class StartTls:
    """STARTTLS accepted: after sending the reply the driver runs the TLS handshake."""

    reply: Reply


@attrs.define
class AuthChallenge:
    """A step of an AUTH exchange: the core sends a 334 and waits for the client's response."""

    mechanism: str
    reply: Reply


@attrs.define
class Authenticate:
    """A complete AUTH exchange: the driver checks the credentials and answers."""

    mechanism: str
    username: str
    password: str = attrs.field(repr=False)
    authzid: str = ""
    reply: None = None


@attrs.define
class MailFrom:
    """MAIL FROM with a valid path and parameters: the driver authorises the sender."""

    address: str
    body: str | None
    smtputf8: bool
    declared_size: int | None
    reply: None = None


@attrs.define
class RcptTo:
    """RCPT TO with a valid address, within the recipient limit."""

    address: str
    reply: Reply


@attrs.define
class DataStart:
    """DATA in a transaction with recipients: the core proposes 354."""

    reply: Reply


@attrs.define
class DataChunk:
    """Message bytes as they arrive: dot-unstuffed, CRLF line ends, in order."""

    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")


@attrs.define
class MessageComplete:
    """The final dot. `reply` is the core's rejection, or None for the driver to decide."""

    envelope: Envelope
    size: int
    reply: Reply | None


@attrs.define
class Answered:
    """A command the core answers alone and that changes nothing the driver tracks
    (NOOP, RSET, HELP, VRFY, QUIT)."""

    verb: str
    reply: Reply


@attrs.define
class Rejected:
    """A command the core refused: syntax, order, a limit, or an unknown verb."""

    verb: str
    reply: Reply


@attrs.define
class ConnectionClosed:
    """The session is over: the client closed, sent QUIT, or a 421 went out."""

    reason: str


CommandEvent = (
    Hello
    | StartTls
    | AuthChallenge
    | Authenticate
    | MailFrom
    | RcptTo
    | DataStart
    | Answered
    | Rejected
    | MessageComplete
)
Event = CommandEvent | DataChunk | ConnectionClosed
