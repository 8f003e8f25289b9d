"""ServerConnection: the server side of one SMTP session, as a state machine with no I/O.

Bytes go in with `receive_data`, events come out of `next_event`, and every reply goes out
through `send`, which returns the bytes to write. The state moves when a reply is sent, so the
driver's decision (accept a sender, refuse a message) is what the session follows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from . import _grammar as grammar
from . import _replies as replies
from . import _state
from ._data import DataReader
from ._events import (
    NEED_DATA,
    Answered,
    AuthChallenge,
    Authenticate,
    CommandEvent,
    ConnectionClosed,
    DataChunk,
    DataStart,
    Envelope,
    Event,
    Hello,
    MailFrom,
    MessageComplete,
    NeedData,
    RcptTo,
    Rejected,
    StartTls,
)
from ._limits import SessionConfig, TlsMode
from ._replies import Reply
from ._state import Phase, State


class LocalProtocolError(Exception):
    """The driver used the connection wrongly (a reply sent when none is due, bytes fed during a
    TLS handshake...). Input from the client never raises: it becomes an event."""


# Enum member lookups cost a dictionary walk each on Python 3.11: the hot path uses these.
_COMMAND, _AUTH, _DATA = State.COMMAND, State.AUTH, State.DATA
_TLS_HANDSHAKE, _CLOSED = State.TLS_HANDSHAKE, State.CLOSED

_PHASE_MASK = _state.PHASE_MASK
_IN_MAIL = _state.PHASE_BITS[Phase.MAIL]
_IN_RCPT = _state.PHASE_BITS[Phase.RCPT]
_REFUSALS = _state.REFUSALS
_UNKNOWN = _state.REFUSALS_OF_UNKNOWN

_TOO_LONG = object()  # _take_line's answer for a line over its limit, read to its end
_AUTH_PREFIX = b"AUTH "
_CLIENT_CLOSED = "client closed the connection"
# Replies a driver may send when no command awaits one: the greeting, a refusal instead of
# the greeting (RFC 5321 §3.1), and 421 at any time (timeouts, shutdown, limits).
_UNPROMPTED = frozenset({220, 421, 554})


# Events carrying no client data are values: one instance of each serves every session.
_NOOP = Answered("NOOP", replies.OK)
_RSET = Answered("RSET", replies.OK)
_HELP = Answered("HELP", replies.HELP)
_QUIT = Answered("QUIT", replies.BYE)
_VRFY = Answered("VRFY", replies.VRFY_CANNOT)
_START_TLS = StartTls(replies.READY_TLS)
_DATA_START = DataStart(replies.START_DATA)
_PLAIN_CHALLENGE = AuthChallenge("PLAIN", replies.AUTH_PLAIN_CHALLENGE)
_LOGIN_USERNAME = AuthChallenge("LOGIN", replies.AUTH_LOGIN_USERNAME)
_LOGIN_PASSWORD = AuthChallenge("LOGIN", replies.AUTH_LOGIN_PASSWORD)


@functools.lru_cache(maxsize=256)
def _ehlo_reply(config: SessionConfig, starttls: bool, auth: bool) -> Reply:
    keywords = [
        "PIPELINING",
        f"SIZE {config.max_message_size}",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        f"LIMITS RCPTMAX={config.max_recipients}",
    ]
    if starttls:
        keywords.append("STARTTLS")
    if auth:
        keywords.append("AUTH PLAIN LOGIN")
    keywords.append("HELP")
    return replies.ehlo(config.hostname, tuple(keywords))


class ServerConnection:
    """One SMTP session, server side."""

    # Thousands live at once on one node: no per-instance dict.
    __slots__ = (
        "_auth_mechanism",
        "_auth_username",
        "_buf",
        "_close_reason",
        "_data_finished",
        "_discarding",
        "_eof",
        "_facts",
        "_mail",
        "_owed",
        "_quick_line_limit",
        "_rcpts",
        "_reader",
        "_state",
        "_taking_input",
        "auth_failures",
        "config",
        "discarded_after_starttls",
        "errors",
        "extended",
        "helo_name",
        "tls_active",
        "user",
    )

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.helo_name: str | None = None
        self.extended = False
        self.user: str | None = None
        self.errors = 0
        self.auth_failures = 0
        self.discarded_after_starttls = 0  # octets a client pipelined after STARTTLS
        self.tls_active = config.tls_mode is TlsMode.IMPLICIT
        self._facts = self._tls_facts()  # what the order table reads: see _state
        self._buf = bytearray()
        self._eof = False
        self._state = _COMMAND
        self._taking_input = True  # not closed, not in a TLS handshake, no end of input yet
        self._owed: CommandEvent | None = None
        self._discarding = False  # inside an over-long line: drop bytes up to its LF
        self._close_reason = ""
        self._mail: MailFrom | None = None
        # A list once a recipient is accepted: idle sessions (thousands) share the empty tuple.
        self._rcpts: list[str] | tuple[()] = ()
        self._reader: DataReader | None = None
        self._data_finished = False
        self._auth_mechanism = ""
        self._auth_username: str | None = None
        # A command line ends at an LF before this index: beyond it, the exact rule decides.
        self._quick_line_limit = config.max_command_line - 1

    def _tls_facts(self) -> int:
        c = self.config
        facts = 0
        if c.tls_mode is TlsMode.STARTTLS and not self.tls_active and not c.allow_plaintext_auth:
            facts |= _state.TLS_FIRST
        if not (self.tls_active or c.allow_plaintext_auth):
            facts |= _state.NO_AUTH
        return facts

    # --- what a driver may read ------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def phase(self) -> Phase:
        return _state.phase_of(self._facts)

    @property
    def greeted(self) -> bool:
        return bool(self._facts & _state.GREETED)

    @property
    def authenticated(self) -> bool:
        return bool(self._facts & _state.AUTHENTICATED)

    @property
    def tls_first(self) -> bool:
        return bool(self._facts & _state.TLS_FIRST)

    @property
    def auth_possible(self) -> bool:
        return not self._facts & _state.NO_AUTH

    @property
    def closed(self) -> bool:
        return self._state is _CLOSED

    @property
    def awaiting_reply(self) -> bool:
        return self._owed is not None

    @property
    def envelope(self) -> Envelope | None:
        """The transaction so far (sender and accepted recipients), or None outside one."""
        mail = self._mail
        if mail is None:
            return None
        return Envelope(
            mail.address, tuple(self._rcpts), mail.body, mail.smtputf8, mail.declared_size
        )

    # --- input ---------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the client; b"" means the client closed its side."""
        if data and self._taking_input:
            self._buf += data
            return
        if self._state is _TLS_HANDSHAKE:
            raise LocalProtocolError("bytes after STARTTLS belong to the TLS layer")
        if self._state is _CLOSED:
            return
        if self._eof:
            if data:
                raise LocalProtocolError("data after the end of input")
            return
        self._eof = True
        self._taking_input = False

    def next_event(self) -> Event | NeedData:
        """The next event, or NEED_DATA. Raises LocalProtocolError while a reply is owed."""
        buf = self._buf
        if not buf and self._taking_input and self._owed is None and not self._data_finished:
            return NEED_DATA  # every byte read is used up: the commonest answer, decided first
        if self._state is _COMMAND and self._owed is None and not self._discarding:
            # The usual case, kept short: a command line within the plain limit.
            lf = buf.find(b"\n")
            if 0 <= lf < self._quick_line_limit:
                line = bytes(buf[: lf - 1 if lf and buf[lf - 1] == 0x0D else lf])
                del buf[: lf + 1]
                word, _, arg = line.partition(b" ")
                entry = _DISPATCH.get(word)  # a known verb as clients usually write it
                if entry is None:
                    verb, arg = grammar.split_command(line)
                    refusal = _REFUSALS.get(verb, _UNKNOWN)[self._facts]
                    event = Rejected(verb, refusal) if refusal else _HANDLERS[verb](self, arg)
                else:
                    verb, handler, refusals = entry
                    refusal = refusals[self._facts]
                    if refusal:
                        event = Rejected(verb, refusal)
                    else:
                        event = handler(self, arg.strip(b" ") if arg else arg)
                self._owed = event
                return event
            if lf < 0 and len(buf) < self._quick_line_limit and not self._eof:
                return NEED_DATA
        return self._next_event()

    def _next_event(self) -> Event | NeedData:
        if self._owed is not None:
            raise LocalProtocolError(f"a reply to {self._owed!r} is owed first")
        state = self._state
        if state is _DATA:
            return self._next_data()
        if state is _CLOSED:
            return ConnectionClosed(self._close_reason)
        if state is _TLS_HANDSHAKE:
            raise LocalProtocolError("finish the TLS handshake: call tls_established()")
        line = self._take_line()
        if line is None:
            if self._eof:
                self._close(_CLIENT_CLOSED)
                return ConnectionClosed(_CLIENT_CLOSED)
            return NEED_DATA
        event: CommandEvent
        if line is _TOO_LONG:
            event = Rejected("AUTH" if state is _AUTH else "", replies.COMMAND_TOO_LONG)
        elif state is _AUTH:
            assert isinstance(line, bytes)
            event = self._auth_response(line)
        else:
            assert isinstance(line, bytes)
            verb, arg = grammar.split_command(line)
            refusal = _REFUSALS.get(verb, _UNKNOWN)[self._facts]
            event = Rejected(verb, refusal) if refusal else _HANDLERS[verb](self, arg)
        self._owed = event
        return event

    def _take_line(self) -> bytes | object | None:
        buf = self._buf
        lf = buf.find(b"\n")
        if self._discarding:
            if lf < 0:
                buf.clear()
                return None
            del buf[: lf + 1]
            self._discarding = False
            return _TOO_LONG
        if lf < 0:
            # Without its LF a line may still end in CR: one octet of slack until it is over.
            n = len(buf)
            if n >= self.config.max_command_line and n >= self._line_limit(buf):
                buf.clear()
                self._discarding = True
            return None
        end = lf - 1 if lf and buf[lf - 1] == 0x0D else lf  # a bare LF ends a line too
        line = bytes(buf[:end])
        del buf[: lf + 1]
        if end + 2 > self.config.max_command_line and end + 2 > self._line_limit(line):
            return _TOO_LONG
        return line

    def _line_limit(self, line: bytes | bytearray) -> int:
        c = self.config
        if self._state is _AUTH or line[:5].upper() == _AUTH_PREFIX:
            return c.max_auth_line
        return c.max_command_line

    # --- commands ------------------------------------------------------------------------

    def _helo(self, arg: bytes) -> CommandEvent:
        if not arg:
            return Rejected("HELO", replies.HELO_SYNTAX)
        name = arg.decode("utf-8", "replace")
        return Hello(name, False, replies.helo(self.config.hostname))

    def _ehlo(self, arg: bytes) -> CommandEvent:
        if not arg:
            return Rejected("EHLO", replies.EHLO_SYNTAX)
        name = arg.decode("utf-8", "replace")
        c = self.config
        starttls = c.tls_mode is TlsMode.STARTTLS and not self.tls_active
        return Hello(name, True, _ehlo_reply(c, starttls, self.auth_possible))

    def _starttls(self, arg: bytes) -> CommandEvent:
        if self.config.tls_mode is TlsMode.NONE:
            return Rejected("STARTTLS", replies.NOT_IMPLEMENTED)
        if self.tls_active:
            return Rejected("STARTTLS", replies.TLS_ALREADY_ACTIVE)
        if arg:
            return Rejected("STARTTLS", replies.NO_ARGUMENTS)
        return _START_TLS

    def _noop(self, arg: bytes) -> CommandEvent:
        return _NOOP

    def _rset(self, arg: bytes) -> CommandEvent:
        if arg:
            return Rejected("RSET", replies.NO_ARGUMENTS)
        return _RSET

    def _help(self, arg: bytes) -> CommandEvent:
        return _HELP

    def _quit(self, arg: bytes) -> CommandEvent:
        if arg:
            return Rejected("QUIT", replies.NO_ARGUMENTS)
        return _QUIT

    def _vrfy(self, arg: bytes) -> CommandEvent:
        if not arg:
            return Rejected("VRFY", replies.VRFY_SYNTAX)
        return _VRFY

    def _expn(self, arg: bytes) -> CommandEvent:
        return Rejected("EXPN", replies.NOT_IMPLEMENTED)

    def _auth(self, arg: bytes) -> CommandEvent:
        mechanism, _, initial = arg.partition(b" ")
        if not mechanism:
            return Rejected("AUTH", replies.AUTH_SYNTAX)
        mech = mechanism.upper()
        initial = initial.strip(b" ")
        if mech == b"PLAIN":
            self._auth_mechanism = "PLAIN"
            if initial:
                return self._plain(initial)
            return _PLAIN_CHALLENGE
        if mech == b"LOGIN":
            self._auth_mechanism = "LOGIN"
            if initial:
                return self._login_step(initial)
            return _LOGIN_USERNAME
        return Rejected("AUTH", replies.UNKNOWN_MECHANISM)

    def _auth_response(self, line: bytes) -> CommandEvent:
        if line == b"*":
            return Rejected("AUTH", replies.AUTH_ABORTED)
        if self._auth_mechanism == "PLAIN":
            return self._plain(line.strip(b" "))
        return self._login_step(line.strip(b" "))

    def _plain(self, response: bytes) -> CommandEvent:
        creds = grammar.parse_plain(response)
        if isinstance(creds, Reply):
            return Rejected("AUTH", creds)
        authzid, username, password = creds
        if not username or not password or (authzid and authzid != username):
            return Rejected("AUTH", replies.AUTH_INVALID)
        return Authenticate("PLAIN", username, password, authzid)

    def _login_step(self, response: bytes) -> CommandEvent:
        raw = grammar.decode_base64(response)
        text = None if raw is None else grammar.decode_text(raw)
        if text is None:
            return Rejected("AUTH", replies.CANNOT_DECODE)
        if self._auth_username is None:
            self._auth_username = text
            return _LOGIN_PASSWORD
        if not self._auth_username or not text:
            return Rejected("AUTH", replies.AUTH_INVALID)
        return Authenticate("LOGIN", self._auth_username, text)

    def _mail_from(self, arg: bytes) -> CommandEvent:
        parsed = grammar.parse_path_arg(
            arg,
            b"FROM:",
            replies.MAIL_SYNTAX,
            replies.BAD_SENDER_SYNTAX,
            allow_postmaster=False,
        )
        if isinstance(parsed, Reply):
            return Rejected("MAIL", parsed)
        address, raw_params = parsed
        params = grammar.parse_mail_params(raw_params)
        if isinstance(params, Reply):
            return Rejected("MAIL", params)
        limit = self.config.max_message_size
        if params.size is not None and params.size > limit:
            return Rejected("MAIL", replies.message_too_big(limit))
        if not params.smtputf8 and not address.isascii():
            return Rejected("MAIL", replies.UNICODE_NEEDS_SMTPUTF8)
        return MailFrom(address, params.body, params.smtputf8, params.size)

    def _rcpt_to(self, arg: bytes) -> CommandEvent:
        parsed = grammar.parse_path_arg(
            arg,
            b"TO:",
            replies.RCPT_SYNTAX,
            replies.BAD_RECIPIENT_SYNTAX,
            allow_postmaster=True,
        )
        if isinstance(parsed, Reply):
            return Rejected("RCPT", parsed)
        address, raw_params = parsed
        if not address:
            return Rejected("RCPT", replies.BAD_RECIPIENT_SYNTAX)
        if raw_params:
            bad_param = grammar.check_rcpt_params(raw_params)
            if bad_param is not None:
                return Rejected("RCPT", bad_param)
        assert self._mail is not None
        if not address.isascii() and not self._mail.smtputf8:
            return Rejected("RCPT", replies.UNICODE_NEEDS_SMTPUTF8)
        if len(self._rcpts) >= self.config.max_recipients:
            return Rejected("RCPT", replies.TOO_MANY_RECIPIENTS)
        return RcptTo(address, replies.RECIPIENT_OK)

    def _data(self, arg: bytes) -> CommandEvent:
        if arg:
            return Rejected("DATA", replies.NO_ARGUMENTS)
        return _DATA_START

    # --- DATA ----------------------------------------------------------------------------

    def _next_data(self) -> Event | NeedData:
        reader = self._reader
        assert reader is not None
        if not self._data_finished:
            chunk, self._data_finished = reader.read(self._buf)
            if chunk:
                return DataChunk(chunk)
        if self._data_finished:
            self._data_finished = False
            self._state = _COMMAND
            assert self._mail is not None
            envelope = Envelope(
                self._mail.address,
                tuple(self._rcpts),
                self._mail.body,
                self._mail.smtputf8,
                self._mail.declared_size,
            )
            return self._owe(MessageComplete(envelope, reader.size, reader.error))
        if self._eof:
            reason = "client closed the connection during DATA"
            self._close(reason)
            return ConnectionClosed(reason)
        return NEED_DATA

    # --- output --------------------------------------------------------------------------

    def _owe(self, event: CommandEvent) -> CommandEvent:
        self._owed = event
        return event

    def send(self, reply: Reply) -> bytes:
        """The bytes of `reply`, and the session moved on by it.

        A 421 closes the session. The reply that makes the `max_errors`-th bad command, or the
        `max_auth_failures`-th failed AUTH, is followed by a 421 that closes it.
        """
        owed = self._owed
        if owed is not None:
            self._owed = None
            _AFTER[type(owed)](self, owed, reply)
            if reply.code < 400:
                return reply.wire
        elif self._state is _CLOSED:
            raise LocalProtocolError("the session is closed")
        elif reply.code not in _UNPROMPTED:
            raise LocalProtocolError(f"no command awaits a reply: {reply!r}")
        code = reply.code
        if reply.closes:
            self._close(f"sent {code} {reply.enhanced}")
            return reply.wire
        if code in replies.ERROR_CODES:
            self.errors += 1
        c = self.config
        if self.errors >= c.max_errors:
            self._close("too many errors")
            return reply.wire + replies.too_many_errors(c.hostname).wire
        if self.auth_failures >= c.max_auth_failures:
            self._close("too many failed AUTH attempts")
            return reply.wire + replies.too_many_errors(c.hostname).wire
        if code == 554 and owed is None:
            self._close("refused at greeting")
        return reply.wire

    # What each kind of command does to the session once its reply is sent.

    def _after_auth(self, owed: CommandEvent, reply: Reply) -> None:
        code = reply.code
        if code == 334:
            self._state = _AUTH
            return
        self._end_auth()
        if code == 235 and isinstance(owed, Authenticate):
            self.user = owed.username
            self._facts |= _state.AUTHENTICATED
        elif code in (501, 535):
            self.auth_failures += 1

    def _after_rejected(self, owed: Rejected, reply: Reply) -> None:
        if owed.verb == "AUTH":
            self._after_auth(owed, reply)

    def _after_hello(self, owed: Hello, reply: Reply) -> None:
        if reply.code == 250:
            self.helo_name = owed.name
            self.extended = owed.extended
            self._facts |= _state.GREETED
            self._reset_transaction()

    def _after_mail(self, owed: MailFrom, reply: Reply) -> None:
        if reply.code == 250:
            self._mail = owed
            self._facts = self._facts & ~_PHASE_MASK | _IN_MAIL

    def _after_rcpt(self, owed: RcptTo, reply: Reply) -> None:
        if reply.code in (250, 251):
            if self._rcpts:
                self._rcpts.append(owed.address)
            else:
                self._rcpts = [owed.address]
            self._facts = self._facts & ~_PHASE_MASK | _IN_RCPT

    def _after_data(self, owed: CommandEvent, reply: Reply) -> None:
        if reply.code == 354:
            c = self.config
            self._reader = DataReader(c.max_message_size, c.max_text_line)
            self._state = _DATA

    def _after_message(self, owed: CommandEvent, reply: Reply) -> None:
        self._reset_transaction()  # RFC 5321 §4.1.1.4: whatever the final reply said

    def _after_starttls(self, owed: CommandEvent, reply: Reply) -> None:
        if reply.code == 220:
            self.discarded_after_starttls = len(self._buf)
            self._buf.clear()
            self._state = _TLS_HANDSHAKE
            self._taking_input = False

    def _after_answered(self, owed: Answered, reply: Reply) -> None:
        if reply.code // 100 != 2:
            return
        if owed is _RSET:
            self._reset_transaction()
        elif owed is _QUIT:
            self._close("QUIT")

    def _end_auth(self) -> None:
        self._state = _COMMAND
        self._auth_mechanism = ""
        self._auth_username = None

    def _reset_transaction(self) -> None:
        self._facts &= ~_PHASE_MASK
        self._mail = None
        if self._rcpts:
            self._rcpts = ()
        self._reader = None

    def _close(self, reason: str) -> None:
        self._state = _CLOSED
        self._taking_input = False
        self._close_reason = reason
        self._buf.clear()

    def tls_established(self) -> None:
        """The TLS handshake after STARTTLS succeeded: the session starts over (RFC 3207 §4.2)."""
        if self._state is not _TLS_HANDSHAKE:
            raise LocalProtocolError("no STARTTLS handshake is in progress")
        self.tls_active = True
        self.helo_name = None
        self.extended = False
        self.user = None
        self._facts = self._tls_facts()  # not greeted, not authenticated, no transaction
        self._reset_transaction()
        self._state = _COMMAND
        self._taking_input = not self._eof


_HANDLERS: dict[str, Callable[[ServerConnection, bytes], CommandEvent]] = {
    "HELO": ServerConnection._helo,
    "EHLO": ServerConnection._ehlo,
    "STARTTLS": ServerConnection._starttls,
    "NOOP": ServerConnection._noop,
    "RSET": ServerConnection._rset,
    "HELP": ServerConnection._help,
    "QUIT": ServerConnection._quit,
    "VRFY": ServerConnection._vrfy,
    "EXPN": ServerConnection._expn,
    "AUTH": ServerConnection._auth,
    "MAIL": ServerConnection._mail_from,
    "RCPT": ServerConnection._rcpt_to,
    "DATA": ServerConnection._data,
}

# The fast path's table: a verb's exact bytes, upper or lower case, to its name, handler and
# refusals. Any other spelling takes grammar.split_command, which decides the same.
_DISPATCH: dict[
    bytes, tuple[str, Callable[[ServerConnection, bytes], CommandEvent], tuple[Reply | None, ...]]
] = {
    spelling: (verb, handler, _REFUSALS[verb])
    for verb, handler in _HANDLERS.items()
    for spelling in (verb.encode(), verb.lower().encode())
}

# Each function takes the event of its key's type: the dict is the type check.
_AFTER: dict[type, Callable[[ServerConnection, Any, Reply], None]] = {
    Hello: ServerConnection._after_hello,
    StartTls: ServerConnection._after_starttls,
    AuthChallenge: ServerConnection._after_auth,
    Authenticate: ServerConnection._after_auth,
    MailFrom: ServerConnection._after_mail,
    RcptTo: ServerConnection._after_rcpt,
    DataStart: ServerConnection._after_data,
    MessageComplete: ServerConnection._after_message,
    Answered: ServerConnection._after_answered,
    Rejected: ServerConnection._after_rejected,
}
