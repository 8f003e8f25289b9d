"""The SMTP protocol, sans-IO: bytes in, events out, replies in, bytes out.

Imports nothing but the standard library and attrs: no sockets, no clock, no Trio.
"""

from __future__ import annotations

from . import _replies as replies
from ._connection import LocalProtocolError, ServerConnection
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

__all__ = [
    "NEED_DATA",
    "Answered",
    "AuthChallenge",
    "Authenticate",
    "CommandEvent",
    "ConnectionClosed",
    "DataChunk",
    "DataStart",
    "Envelope",
    "Event",
    "Hello",
    "LocalProtocolError",
    "MailFrom",
    "MessageComplete",
    "NeedData",
    "Phase",
    "RcptTo",
    "Rejected",
    "Reply",
    "ServerConnection",
    "SessionConfig",
    "StartTls",
    "State",
    "TlsMode",
    "replies",
]
