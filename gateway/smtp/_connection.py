"""ServerConnection: the server side of one SMTP session, as a state machine with no I/O.

Bytes go in with `receive_data`, events come out of `next_event`, and every reply goes out
through `send`, which returns the bytes to write. The state moves when a reply is sent, so the
driver's decision (accept a sender, refuse a message) is what the session follows.
"""

from __future__ import annotations

import functools

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


_TOO_LONG = object()  # _take_line's answer for a line over its limit, read to its end
_AUTH_PREFIX = b"AUTH "
_CLIENT_CLOSED = "client closed the connection"
# Replies a driver may send when no command awaits one: the greeting, a refusal instead of
# the greeting (RFC 5321 §3.1), and 421 at any time (timeouts, shutdown, limits).
_UNPROMPTED = frozenset({220, 421, 554})


@functools.lru_cache(maxsize=64)
def _ehlo_reply(hostname: str, keywords: tuple[str, ...]) -> Reply:
    return replies.ehlo(hostname, keywords)


class ServerConnection:
    """One SMTP session, server side."""

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.tls_active = config.tls_mode is TlsMode.IMPLICIT
        self.helo_name: str | None = None
        self.extended = False
        self.user: str | None = None
        self.errors = 0
        self.auth_failures = 0
        self.discarded_after_starttls = 0  # octets a client pipelined after STARTTLS
        self._buf = bytearray()
        self._eof = False
        self._state = State.COMMAND
        self._phase = Phase.IDLE
        self._owed: CommandEvent | None = None
        self._discarding = False  # inside an over-long line: drop bytes up to its LF
        self._close_reason = ""
        self._mail: MailFrom | None = None
        self._rcpts: list[str] = []
        self._reader: DataReader | None = None
        self._data_finished = False
        self._auth_mechanism = ""
        self._auth_username: str | None = None

    # --- the facts the state table looks at (_state.Session) --------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def tls_first(self) -> bool:
        c = self.config
        return c.tls_mode is TlsMode.STARTTLS and not self.tls_active and not (
            c.allow_plaintext_auth
        )

    @property
    def auth_possible(self) -> bool:
        return self.tls_active or self.config.allow_plaintext_auth

    @property
    def greeted(self) -> bool:
        return self.helo_name is not None

    @property
    def authenticated(self) -> bool:
        return self.user is not None

    @property
    def closed(self) -> bool:
        return self._state is State.CLOSED

    @property
    def awaiting_reply(self) -> bool:
        return self._owed is not None

    # --- input ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client; b"" means the client closed its side."""
        if self._state is State.TLS_HANDSHAKE:
            raise LocalProtocolError("bytes after STARTTLS belong to the TLS layer")
        if self._state is State.CLOSED:
            return
        if self._eof:
            raise LocalProtocolError("data after the end of input")
        if data:
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> Event | NeedData:
        """The next event, or NEED_DATA. Raises LocalProtocolError while a reply is owed."""
        if self._owed is not None:
            raise LocalProtocolError(f"a reply to {self._owed!r} is owed first")
        state = self._state
        if state is State.DATA:
            return self._next_data()
        if state is State.CLOSED:
            return ConnectionClosed(self._close_reason)
        if state is State.TLS_HANDSHAKE:
            raise LocalProtocolError("finish the TLS handshake: call tls_established()")
        line = self._take_line()
        if line is None:
            if self._eof:
                self._close(_CLIENT_CLOSED)
                return ConnectionClosed(_CLIENT_CLOSED)
            return NEED_DATA
        if state is State.AUTH:
            if line is _TOO_LONG:
                return self._owe(Rejected("AUTH", replies.COMMAND_TOO_LONG))
            assert isinstance(line, bytes)
            return self._owe(self._auth_response(line))
        if line is _TOO_LONG:
            return self._owe(Rejected("", replies.COMMAND_TOO_LONG))
        assert isinstance(line, bytes)
        return self._owe(self._command(line))

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
            if len(buf) >= self._line_limit():
                buf.clear()
                self._discarding = True
            return None
        end = lf - 1 if lf and buf[lf - 1] == 0x0D else lf  # a bare LF ends a line too
        line = bytes(buf[:end])
        del buf[: lf + 1]
        if end + 2 > self.config.max_command_line and end + 2 > self._line_limit(line):
            return _TOO_LONG
        return line

    def _line_limit(self, line: bytes | bytearray | None = None) -> int:
        c = self.config
        head = (self._buf if line is None else line)[:5]
        if self._state is State.AUTH or head.upper() == _AUTH_PREFIX:
            return c.max_auth_line
        return c.max_command_line

    # --- commands ------------------------------------------------------------------------

    def _command(self, line: bytes) -> CommandEvent:
        verb, arg = grammar.split_command(line)
        refusal = _state.refusal(verb, self)
        if refusal is not None:
            return Rejected(verb, refusal)
        return self._HANDLERS[verb](self, arg)

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
        keywords = [
            "PIPELINING",
            f"SIZE {c.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            f"LIMITS RCPTMAX={c.max_recipients}",
        ]
        if c.tls_mode is TlsMode.STARTTLS and not self.tls_active:
            keywords.append("STARTTLS")
        if self.auth_possible:
            keywords.append("AUTH PLAIN LOGIN")
        keywords.append("HELP")
        return Hello(name, True, _ehlo_reply(c.hostname, tuple(keywords)))

    def _starttls(self, arg: bytes) -> CommandEvent:
        if self.config.tls_mode is TlsMode.NONE:
            return Rejected("STARTTLS", replies.NOT_IMPLEMENTED)
        if self.tls_active:
            return Rejected("STARTTLS", replies.TLS_ALREADY_ACTIVE)
        if arg:
            return Rejected("STARTTLS", replies.NO_ARGUMENTS)
        return StartTls(replies.READY_TLS)

    def _noop(self, arg: bytes) -> CommandEvent:
        return Answered("NOOP", replies.OK)

    def _rset(self, arg: bytes) -> CommandEvent:
        if arg:
            return Rejected("RSET", replies.NO_ARGUMENTS)
        return Answered("RSET", replies.OK)

    def _help(self, arg: bytes) -> CommandEvent:
        return Answered("HELP", replies.HELP)

    def _quit(self, arg: bytes) -> CommandEvent:
        if arg:
            return Rejected("QUIT", replies.NO_ARGUMENTS)
        return Answered("QUIT", replies.BYE)

    def _vrfy(self, arg: bytes) -> CommandEvent:
        if not arg:
            return Rejected("VRFY", replies.VRFY_SYNTAX)
        return Answered("VRFY", replies.VRFY_CANNOT)

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
            return AuthChallenge("PLAIN", replies.AUTH_PLAIN_CHALLENGE)
        if mech == b"LOGIN":
            self._auth_mechanism = "LOGIN"
            if initial:
                return self._login_step(initial)
            return AuthChallenge("LOGIN", replies.AUTH_LOGIN_USERNAME)
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
        if not creds.username or not creds.password:
            return Rejected("AUTH", replies.AUTH_INVALID)
        if creds.authzid and creds.authzid != creds.username:
            return Rejected("AUTH", replies.AUTH_INVALID)
        return Authenticate("PLAIN", creds.username, creds.password, creds.authzid)

    def _login_step(self, response: bytes) -> CommandEvent:
        raw = grammar.decode_base64(response)
        text = None if raw is None else grammar.decode_text(raw)
        if text is None:
            return Rejected("AUTH", replies.CANNOT_DECODE)
        if self._auth_username is None:
            self._auth_username = text
            return AuthChallenge("LOGIN", replies.AUTH_LOGIN_PASSWORD)
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
        params = grammar.parse_mail_params(parsed.params)
        if isinstance(params, Reply):
            return Rejected("MAIL", params)
        limit = self.config.max_message_size
        if params.size is not None and params.size > limit:
            return Rejected("MAIL", replies.message_too_big(limit))
        if not parsed.address.isascii() and not params.smtputf8:
            return Rejected("MAIL", replies.UNICODE_NEEDS_SMTPUTF8)
        return MailFrom(parsed.address, params.body, params.smtputf8, params.size)

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
        if not parsed.address:
            return Rejected("RCPT", replies.BAD_RECIPIENT_SYNTAX)
        bad_param = grammar.check_rcpt_params(parsed.params)
        if bad_param is not None:
            return Rejected("RCPT", bad_param)
        assert self._mail is not None
        if not parsed.address.isascii() and not self._mail.smtputf8:
            return Rejected("RCPT", replies.UNICODE_NEEDS_SMTPUTF8)
        if len(self._rcpts) >= self.config.max_recipients:
            return Rejected("RCPT", replies.TOO_MANY_RECIPIENTS)
        return RcptTo(parsed.address, replies.RECIPIENT_OK)

    def _data(self, arg: bytes) -> CommandEvent:
        if arg:
            return Rejected("DATA", replies.NO_ARGUMENTS)
        return DataStart(replies.START_DATA)

    _HANDLERS = {
        "HELO": _helo,
        "EHLO": _ehlo,
        "STARTTLS": _starttls,
        "NOOP": _noop,
        "RSET": _rset,
        "HELP": _help,
        "QUIT": _quit,
        "VRFY": _vrfy,
        "EXPN": _expn,
        "AUTH": _auth,
        "MAIL": _mail_from,
        "RCPT": _rcpt_to,
        "DATA": _data,
    }

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
            self._state = State.COMMAND
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
        if self._state is State.CLOSED:
            raise LocalProtocolError("the session is closed")
        owed, self._owed = self._owed, None
        if owed is None:
            if reply.code not in _UNPROMPTED:
                raise LocalProtocolError(f"no command awaits a reply: {reply!r}")
        else:
            self._apply(owed, reply)
        out = reply.wire
        code = reply.code
        if code in replies.ERROR_CODES:
            self.errors += 1
        if reply.closes:
            self._close(f"sent {code} {reply.enhanced}")
        elif self.errors >= self.config.max_errors:
            out += replies.too_many_errors(self.config.hostname).wire
            self._close("too many errors")
        elif self.auth_failures >= self.config.max_auth_failures:
            out += replies.too_many_errors(self.config.hostname).wire
            self._close("too many failed AUTH attempts")
        elif code == 554 and owed is None:
            self._close("refused at greeting")
        return out

    def _apply(self, owed: CommandEvent, reply: Reply) -> None:
        code = reply.code
        ok = reply.is_success
        if isinstance(owed, (AuthChallenge, Authenticate)) or (
            isinstance(owed, Rejected) and owed.verb == "AUTH"
        ):
            if code == 334:
                self._state = State.AUTH
                return
            self._end_auth()
            if code == 235 and isinstance(owed, Authenticate):
                self.user = owed.username
            elif code in (501, 535):
                self.auth_failures += 1
            return
        if isinstance(owed, MessageComplete):
            self._reset_transaction()  # RFC 5321 §4.1.1.4: whatever the final reply said
            return
        if not ok:
            return
        if isinstance(owed, Hello):
            self.helo_name = owed.name
            self.extended = owed.extended
            self._reset_transaction()
        elif isinstance(owed, MailFrom):
            self._mail = owed
            self._phase = Phase.MAIL
        elif isinstance(owed, RcptTo):
            self._rcpts.append(owed.address)
            self._phase = Phase.RCPT
        elif isinstance(owed, DataStart):
            if code == 354:
                c = self.config
                self._reader = DataReader(c.max_message_size, c.max_text_line)
                self._state = State.DATA
        elif isinstance(owed, StartTls):
            self.discarded_after_starttls = len(self._buf)
            self._buf.clear()
            self._state = State.TLS_HANDSHAKE
        elif isinstance(owed, Answered):
            if owed.verb == "RSET":
                self._reset_transaction()
            elif owed.verb == "QUIT":
                self._close("QUIT")

    def _end_auth(self) -> None:
        self._state = State.COMMAND
        self._auth_mechanism = ""
        self._auth_username = None

    def _reset_transaction(self) -> None:
        self._phase = Phase.IDLE
        self._mail = None
        self._rcpts = []
        self._reader = None

    def _close(self, reason: str) -> None:
        self._state = State.CLOSED
        self._close_reason = reason
        self._buf.clear()

    def tls_established(self) -> None:
        """The TLS handshake after STARTTLS succeeded: the session starts over (RFC 3207 §4.2)."""
        if self._state is not State.TLS_HANDSHAKE:
            raise LocalProtocolError("no STARTTLS handshake is in progress")
        self.tls_active = True
        self.helo_name = None
        self.extended = False
        self.user = None
        self._reset_transaction()
        self._state = State.COMMAND
