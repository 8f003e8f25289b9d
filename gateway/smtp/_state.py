"""States, and the table of what each command needs: every rule about order lives here.

When several rules refuse a command, the first of these answers (service.md, commands):
(1) STARTTLS first, (2) HELO/EHLO first, (3) authentication, (4) order within the transaction,
(5) syntax and parameters. `REFUSALS` applies (1) to (4): for each verb, the refusal for every
combination of facts, built at import from `RULES`; the parsers apply (5).
"""

from __future__ import annotations

import enum

import attrs

from . import _replies as replies
from ._replies import Reply


class State(enum.Enum):
    """What the next input bytes are."""

    # Members are singletons: identity hashing is exact, and far cheaper than Enum's default
    # (a Python-level hash of the name) on the per-command path.
    __hash__ = object.__hash__

    COMMAND = "command"  # command lines
    AUTH = "auth"  # a response to a 334 challenge
    DATA = "data"  # message data, until <CRLF>.<CRLF>
    TLS_HANDSHAKE = "tls-handshake"  # STARTTLS accepted: bytes belong to the TLS layer now
    CLOSED = "closed"


class Phase(enum.Enum):
    """Where the mail transaction is."""

    __hash__ = object.__hash__

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


# The facts the rules look at, as bits of one small integer that the connection keeps current:
# the table below is then indexed, not evaluated, on every command.
TLS_FIRST = 1  # a STARTTLS listener, before TLS, without allow_plaintext_auth
NO_AUTH = 2  # AUTH may not be offered on this connection now (no TLS, no plaintext AUTH)
GREETED = 4
AUTHENTICATED = 8
PHASE_SHIFT = 4
PHASE_BITS = {
    Phase.IDLE: 0 << PHASE_SHIFT,
    Phase.MAIL: 1 << PHASE_SHIFT,
    Phase.RCPT: 2 << PHASE_SHIFT,
}
PHASE_MASK = 3 << PHASE_SHIFT
_PHASES = {bits: phase for phase, bits in PHASE_BITS.items()}
_FACT_COMBINATIONS = 4 << PHASE_SHIFT


def phase_of(facts: int) -> Phase:
    return _PHASES[facts & PHASE_MASK]


def _refusal(verb: str, rule: Rule | None, facts: int) -> Reply | None:
    """The precedence of service.md, applied to one command and one set of facts."""
    tls_first = facts & TLS_FIRST
    if rule is None:
        return replies.STARTTLS_FIRST if tls_first else replies.UNKNOWN_COMMAND
    if tls_first and not rule.before_tls:
        return replies.STARTTLS_FIRST
    if verb == "AUTH" and facts & NO_AUTH:
        return replies.ENCRYPTION_REQUIRED
    if rule.needs_helo and not facts & GREETED:
        return replies.NEED_HELO
    if rule.needs_auth and not facts & AUTHENTICATED:
        return replies.AUTH_REQUIRED
    if rule.refuses_auth and facts & AUTHENTICATED:
        return replies.ALREADY_AUTHENTICATED
    return rule.wrong_phase.get(_PHASES.get(facts & PHASE_MASK, Phase.IDLE))


REFUSALS: dict[str, tuple[Reply | None, ...]] = {
    verb: tuple(_refusal(verb, rule, facts) for facts in range(_FACT_COMBINATIONS))
    for verb, rule in RULES.items()
}
REFUSALS_OF_UNKNOWN = tuple(_refusal("", None, facts) for facts in range(_FACT_COMBINATIONS))
