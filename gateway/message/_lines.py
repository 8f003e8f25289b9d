"""The feed parser's input, with runs of inert lines handed over as one line.

`email.feedparser` costs over a microsecond of Python per line, and cracks its input into lines
with `StringIO.readlines` first: for an 8 MiB message of 76-octet lines that is most of the
check's CPU, though most of those lines mean nothing to the parser. Its readers look at a line's
content in three places only:

- a header section, read while lines match its `headerRE` (a field name and a colon, "From ",
  or leading white space); the first line that does not is pushed back as the first body line;
- the boundary matchers, which match lines that start with "-";
- the block separator of message/delivery-status, a blank line.

Everywhere else a line is appended to a body, a preamble or an epilogue. A header section only
starts at the first line, after a boundary, or after a blank line. So once a line follows
another that is not header-like, it and the lines after it, up to the next line that starts
with "-" or is blank, are read only as text: handed over as one string, they give the same
tree, the same payloads and the same defects. `tests/message/test_lines.py` checks this
against the stock input on random messages split at random points.

The input must have CRLF line ends only, as the protocol core's DataChunks have (a message
with a bare CR or LF is refused by the core whatever its parse says).
"""

from __future__ import annotations

import io
import re
from email.feedparser import BufferedSubFile  # type: ignore[attr-defined]  # not in typeshed

# The parser's header-line pattern, and a blank line.
_HEADER_OR_BLANK = re.compile(r"From |[\041-\071\073-\176]*:|[\t ]|\r\n")
_BLANK_LINE = re.compile("\r\n\r\n").search  # the end of a line, then an empty one


def _anchors(text: str) -> list[int]:
    """Starts of the lines that start with "-" or are blank, in order."""
    anchors = []
    # Single-character find is memchr; at most one hit per line, then on to the next line.
    i = text.find("-")
    while i >= 0:
        if i == 0 or text[i - 1] == "\n":
            anchors.append(i)
        i = text.find("-", text.find("\n", i))
    # A regular expression, because it looks for its first character alone and only then at
    # the rest: str.find of four characters took twice as long, half of a big message's feed.
    blank = _BLANK_LINE(text)
    if blank is not None:
        while blank is not None:
            anchors.append(blank.start() + 2)
            blank = _BLANK_LINE(text, blank.start() + 2)
        anchors.sort()
    return anchors


def group_lines(text: str) -> list[str]:
    """`text` (complete CRLF lines) as lines, with each run of inert lines joined into one."""
    n = len(text)
    anchors = _anchors(text)
    k = len(anchors)
    next_anchor = 0
    out: list[str] = []
    start = 0
    header_or_blank = _HEADER_OR_BLANK.match
    while start < n:
        # A line that stands alone, then the header-like or blank lines that follow it.
        end = text.find("\n", start) + 1
        out.append(text[start:end])
        start = end
        while start < n and header_or_blank(text, start):
            end = text.find("\n", start) + 1
            out.append(text[start:end])
            start = end
        # Inert lines up to the next line that starts with "-" or is blank.
        while next_anchor < k and anchors[next_anchor] < start:
            next_anchor += 1
        stop = anchors[next_anchor] if next_anchor < k else n
        if stop > start:
            out.append(text[start:stop])
            start = stop
    return out


class GroupedInput(BufferedSubFile):  # type: ignore[misc]
    """A BufferedSubFile that hands runs of inert lines over as single lines."""

    def __init__(self) -> None:
        super().__init__()
        self._tail = ""  # the last line, until its LF comes

    def push(self, data: str) -> None:
        text = self._tail + data if self._tail else data
        cut = text.rfind("\n") + 1  # complete lines end at the last LF
        if cut == 0:
            self._tail = text
            return
        if cut < len(text):
            self._tail = text[cut:]
            text = text[:cut]
        else:
            self._tail = ""
        self.pushlines(group_lines(text))

    def close(self) -> None:
        # The stock close cracks what is left of the last line as readlines() would.
        if self._tail:
            self.pushlines(io.StringIO(self._tail, newline="").readlines())
            self._tail = ""
        super().close()
