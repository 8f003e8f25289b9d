"""Users, passwords and authentication."""

from __future__ import annotations

from .authenticator import Authenticator, inline_verifier, threaded_verifier
from .passwords import hash_password, verify_password
from .users import User, UsersFileError, UserStore, check_name, check_sender

__all__ = [
    "Authenticator",
    "User",
    "UserStore",
    "UsersFileError",
    "check_name",
    "check_sender",
    "hash_password",
    "inline_verifier",
    "threaded_verifier",
    "verify_password",
]
