"""States, and the table of what each command needs: every rule about order lives here.

When several rules refuse a command, the first of these answers (service.md, commands):
(1) STARTTLS first, (2) HELO/EHLO first, (3) authentication, (4) order within the transaction,
(5) syntax and parameters. `refusal()` applies (1) to (4); the parsers apply (5).
"""

from __future__ import annotations

import enum
from typing import Protocol

import attrs

from . import _replies as replies
from ._replies import Reply


class State(enum.Enum):
    """What the next input bytes are."""

    COMMAND = "command"  # command lines
    AUTH = "auth"  # a response to a 334 challenge
    DATA = "data"  # message data, until <CRLF>.<CRLF>
    TLS_HANDSHAKE = "tls-handshake"  # STARTTLS accepted: bytes belong to the TLS layer now
    CLOSED = "closed"


class Phase(enum.Enum):
    """Where the mail transaction is."""

    IDLE = "idle"  # no MAIL yet
    MAIL = "mail"  # sender accepted
    RCPT = "rcpt"  # at least one recipient accepted


@attrs.frozen
class Rule:
    """What a command needs before it is parsed at all."""

    before_tls: bool = False  # served on a STARTTLS listener before TLS is up
    needs_helo: bool = False
    needs_auth: bool = False
    refuses_auth: bool = False  # AUTH once authenticated
    # The transaction phases it is allowed in, and what to answer in the others.
    wrong_phase: dict[Phase, Reply] = attrs.field(factory=dict)


_ANY = Rule(before_tls=True)

RULES: dict[str, Rule] = {
    "HELO": _ANY,
    "EHLO": _ANY,
    "STARTTLS": _ANY,
    "NOOP": _ANY,
    "RSET": _ANY,
    "HELP": _ANY,
    "QUIT": _ANY,
    "VRFY": Rule(),
    "EXPN": Rule(),
    "AUTH": Rule(
        needs_helo=True,
        refuses_auth=True,
        wrong_phase={Phase.MAIL: replies.NESTED_MAIL, Phase.RCPT: replies.NESTED_MAIL},
    ),
    "MAIL": Rule(
        needs_helo=True,
        needs_auth=True,
        wrong_phase={Phase.MAIL: replies.NESTED_MAIL, Phase.RCPT: replies.NESTED_MAIL},
    ),
    "RCPT": Rule(needs_helo=True, needs_auth=True, wrong_phase={Phase.IDLE: replies.NEED_MAIL}),
    "DATA": Rule(
        needs_helo=True,
        needs_auth=True,
        wrong_phase={Phase.IDLE: replies.NEED_MAIL, Phase.MAIL: replies.NEED_RCPT},
    ),
}

# Where a transaction goes when the driver accepts the command that moves it.
PHASE_AFTER = {"MAIL": Phase.MAIL, "RCPT": Phase.RCPT}


class Session(Protocol):
    """The facts about a session that the rules look at."""

    @property
    def tls_first(self) -> bool:
        """A STARTTLS listener, before TLS, without allow_plaintext_auth."""

    @property
    def auth_possible(self) -> bool:
        """AUTH may be offered, and accepted, on this connection now."""

    @property
    def greeted(self) -> bool: ...

    @property
    def authenticated(self) -> bool: ...

    @property
    def phase(self) -> Phase: ...


def refusal(verb: str, session: Session) -> Reply | None:
    """The reply that refuses `verb` before its arguments are looked at, or None."""
    rule = RULES.get(verb)
    if rule is None:
        return replies.STARTTLS_FIRST if session.tls_first else replies.UNKNOWN_COMMAND
    if session.tls_first and not rule.before_tls:
        return replies.STARTTLS_FIRST
    if verb == "AUTH" and not session.auth_possible:
        return replies.ENCRYPTION_REQUIRED
    if rule.needs_helo and not session.greeted:
        return replies.NEED_HELO
    if rule.needs_auth and not session.authenticated:
        return replies.AUTH_REQUIRED
    if rule.refuses_auth and session.authenticated:
        return replies.ALREADY_AUTHENTICATED
    return rule.wrong_phase.get(session.phase)
