"""Checks on a complete message, and the headers a submission server adds."""

from __future__ import annotations

from .policy import Rules, check, header_section, new_parser
from .trace import trace_headers

__all__ = ["Rules", "check", "header_section", "new_parser", "trace_headers"]
