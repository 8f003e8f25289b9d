"""The DATA reader: finds the real end of data, removes dot-stuffing, and checks line ends, line
length and size as the bytes stream through.

Only `<CRLF>.<CRLF>` ends a message (the DATA command's own line end counts as the first CRLF).
A bare CR or LF anywhere makes the message rejected, but never ends it: this is what closes the
SMTP smuggling class of attacks. Every check is made with bytes methods over whole chunks, so the
cost per byte stays in C.
"""

from __future__ import annotations

import attrs

from . import _replies as replies
from ._replies import Reply

_END = b"\r\n.\r\n"
_END_AT_START = b".\r\n"
# Suffixes that might be the start of `_END`: held back until the next bytes say what they are.
_PARTIAL_ENDS = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")


def _held_back(buf: bytearray) -> int:
    for suffix in _PARTIAL_ENDS:
        if buf.endswith(suffix):
            return len(suffix)
    return 0


@attrs.define(eq=False)
class DataReader:
    """Reads one message's DATA from a shared input buffer."""

    max_size: int
    max_line: int
    size: int = 0
    error: Reply | None = None
    _at_line_start: bool = True
    _line_len: int = 0  # length of the partial line carried over from the previous chunk

    def read(self, buf: bytearray) -> tuple[bytes, bool]:
        """Consume what can be decided from `buf`: (message bytes, whether data ended).

        The bytes returned are empty once the message is known to be rejected: it is read to
        its end and discarded, and `error` says why.
        """
        if self._at_line_start:
            if buf.startswith(_END_AT_START):
                del buf[:3]
                return b"", True
            if _END_AT_START.startswith(bytes(buf[:3])):
                return b"", False  # "", "." or ".\r": not yet decidable
        end = buf.find(_END)
        if end >= 0:
            end += 2  # the CRLF before the dot ends the last line and belongs to the message
            consumed = end + 3
            finished = True
        else:
            end = len(buf) - _held_back(buf)
            consumed = end
            finished = False
        if end == 0:
            return b"", finished
        region = bytes(buf[:end])
        del buf[:consumed]
        chunk = self._check(region)
        return chunk, finished

    def _check(self, region: bytes) -> bytes:
        first_dot = self._at_line_start and region[:1] == b"."
        self._at_line_start = False
        if self.error is not None:
            return b""
        crlf = region.count(b"\r\n")
        if region.count(b"\n") != crlf or region.count(b"\r") != crlf:
            self.error = replies.message_rejected(
                "bare CR or LF in message data (lines must end with CRLF)"
            )
            return b""
        out = region.replace(b"\r\n.", b"\r\n")
        if first_dot:
            out = out[1:]
        if self._line_len + len(out) > self.max_line:
            lines = out.split(b"\r\n")
            first = self._line_len + len(lines[0])
            longest = max(first, max(map(len, lines)))
            self._line_len = len(lines[-1]) if len(lines) > 1 else first
            if longest > self.max_line:
                self.error = replies.message_rejected(
                    f"line longer than {self.max_line} octets"
                )
                return b""
        else:
            tail = out.rfind(b"\r\n")
            self._line_len = len(out) - tail - 2 if tail >= 0 else self._line_len + len(out)
        self.size += len(out)
        if self.size > self.max_size:
            self.error = replies.message_too_big(self.max_size)
            return b""
        return out
