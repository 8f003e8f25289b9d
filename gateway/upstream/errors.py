"""What can go wrong upstream, as the SMTP side needs to tell it apart."""

from __future__ import annotations


class UpstreamError(Exception):
    """Base: the message was not acknowledged as stored."""


class UpstreamUnavailable(UpstreamError):
    """Not connected, or the connection was lost before the acknowledgement: try again later."""


class UpstreamTimeout(UpstreamError):
    """No acknowledgement within the deadline: try again later (a retry is deduplicated)."""


class UpstreamRejected(UpstreamError):
    """The server answered, and refused. `temporary` says whether a retry may succeed."""

    def __init__(self, message: str, *, temporary: bool, code: int | None = None) -> None:
        super().__init__(message)
        self.temporary = temporary
        self.code = code


class MessageTooLarge(UpstreamRejected):
    """Larger than the server or the stream accepts: a retry cannot succeed."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message, temporary=False, code=code)


class UpstreamConfigError(UpstreamError):
    """The upstream cannot serve this gateway as configured (credentials, max_payload, stream):
    an operator has to act. Raised at start-up with a sentence saying what to change."""
