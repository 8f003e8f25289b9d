"""Checks on a complete message, and the headers a submission server adds."""

from __future__ import annotations

from .policy import Rules, check, new_parser
from .trace import trace_headers

__all__ = ["Rules", "check", "new_parser", "trace_headers"]
