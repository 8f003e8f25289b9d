"""The DATA reader: finds the real end of data, removes dot-stuffing, and checks line ends, line
length and size as the bytes stream through.

Only `<CRLF>.<CRLF>` ends a message (the DATA command's own line end counts as the first CRLF).
A bare CR or LF anywhere makes the message rejected, but never ends it: this is what closes the
SMTP smuggling class of attacks.

Speed: every scan is a bytes method over a whole chunk, and the only Python loops step from one
rare thing to the next (a line-start dot, or a kilobyte of text), never from line to line.
Single-byte `find` is memchr and far faster than any multi-byte search: one memchr tells a chunk
with no dot at all (base64, most of any large message), and only a chunk with dots pays for a
search of CRLF ".".
"""

from __future__ import annotations

import re

import attrs

from . import _replies as replies
from ._replies import Reply

_END_AT_START = b".\r\n"
# Suffixes that might be the start of CRLF "." CRLF: held back until the next bytes say what
# they are, so that a region never ends inside a line end or just before a line-start dot.
_PARTIAL_ENDS = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")
_VIEW_FROM = 8192  # octets from which a region is copied out through a memoryview
_STUFFED_LINES = 16  # listed one by one; past this many in a chunk, one replace does them all
# A CR that no LF follows. A region never ends in CR (it is held back): a CR there is bare.
_LONE_CR = re.compile(rb"\r(?!\n)").search


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
    _line_len: int = 0  # octets of the line the previous region ended in

    def read(self, buf: bytearray) -> tuple[bytes, bool]:
        """Consume what can be decided from `buf`: (message bytes, whether data ended).

        The bytes returned are empty once the message is known to be rejected: it is read to
        its end and discarded, and `error` says why.
        """
        n = len(buf)
        if self._at_line_start:
            if buf.startswith(_END_AT_START):
                del buf[:3]
                return b"", True
            if n < 3 and _END_AT_START.startswith(buf):
                return b"", False  # "", "." or ".\r": not yet decidable
        limit = n - _held_back(buf)
        dots, end = self._line_start_dots(buf, limit)
        finished = end >= 0
        if finished:
            consumed = end + 3  # ".\r\n"
        else:
            end = consumed = limit
        if end == 0:
            if consumed:
                del buf[:consumed]
            return b"", finished
        if end < _VIEW_FROM:
            region = bytes(buf[:end])
        else:
            # Through a memoryview: bytes(buf[:end]) copies twice, and its bytearray-to-
            # bytearray copy runs many times slower here (about 40 us per 64 KiB, against 2).
            with memoryview(buf) as view:
                region = view[:end].tobytes()
        del buf[:consumed]
        return self._check(region, dots), finished

    def _line_start_dots(self, buf: bytearray, limit: int) -> tuple[list[int] | None, int]:
        """The line-start dots in buf[:limit] that are stuffing (None: too many to list, remove
        them all with one replace), and the position of the dot that ends the data (or -1)."""
        dots: list[int] = []
        pos = 0
        if self._at_line_start and limit and buf[0] == 0x2E:
            dots.append(0)  # a terminator here was handled by the caller
            pos = 1
        first = buf.find(b".", pos, limit)  # memchr: no dot at all is the base64 case
        if first < 0:
            return dots, -1
        start = first - 2 if first >= 2 else 0
        for _ in range(_STUFFED_LINES):
            i = buf.find(b"\r\n.", start, limit)
            if i < 0:
                return dots, -1
            i += 2
            # The held-back suffixes guarantee two more bytes after a line-start dot.
            if buf[i + 1] == 0x0D and buf[i + 2] == 0x0A:
                return dots, i
            dots.append(i)
            start = i - 1
        # Many stuffed lines: look for the end alone, and unstuff with one bytes.replace.
        end = buf.find(b"\r\n.\r\n", start)
        return None, (end + 2 if end >= 0 else -1)

    def _check(self, region: bytes, dots: list[int] | None) -> bytes:
        at_line_start, self._at_line_start = self._at_line_start, False
        if self.error is not None:
            return b""
        # No CR without an LF after it, and as many CRs as LFs: then each LF is the one after
        # a CR, so neither stands alone. Single-octet counts and a search that stops at each
        # CR cost two thirds of a count of CRLF pairs (a two-octet search, 0.8 ns an octet)
        # plus a translate: 52 against 77 us per 64 KiB, most of DATA's CPU.
        if region.count(b"\r") != region.count(b"\n") or _LONE_CR(region) is not None:
            self.error = replies.message_rejected(
                "bare CR or LF in message data (lines must end with CRLF)"
            )
            return b""
        if dots is None:
            out = region.replace(b"\r\n.", b"\r\n")
            if at_line_start and out[:1] == b".":
                out = out[1:]
        elif dots:
            starts = [0, *(d + 1 for d in dots)]
            ends = [*dots, len(region)]
            out = b"".join([region[a:b] for a, b in zip(starts, ends, strict=True)])
        else:
            out = region
        if self._too_long(out):
            self.error = replies.message_rejected(f"line longer than {self.max_line} octets")
            return b""
        self.size += len(out)
        if self.size > self.max_size:
            self.error = replies.message_too_big(self.max_size)
            return b""
        return out

    def _too_long(self, out: bytes) -> bool:
        """Whether a line (with the one carried in) exceeds max_line, stepping from one LF to
        the last LF within reach of the line's start: about one step per max_line octets."""
        reach = self.max_line + 1  # an LF may stand this far after its line's first octet
        n = len(out)
        rfind = out.rfind
        start = -self._line_len  # where the current line began, relative to `out`
        while start + reach < n:
            lf = rfind(b"\n", start if start > 0 else 0, start + reach + 1)
            if lf < 0:
                return True
            start = lf + 1
        tail = rfind(b"\n", start if start > 0 else 0)
        # A region never ends in CR (it is held back), so this is all content.
        self._line_len = n - tail - 1 if tail >= 0 else n - start
        return self._line_len > self.max_line
