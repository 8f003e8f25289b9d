"""The users file (TOML): each user's password hash and the senders it may use."""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from pathlib import Path

import attrs

from ..smtp._grammar import parse_mailbox
from .passwords import parse_hash


class UsersFileError(Exception):
    """The users file cannot be read or does not make sense; the message names the entry."""


@attrs.frozen
class User:
    name: str
    password_hash: str = attrs.field(repr=False)
    senders: tuple[str, ...]  # addresses, or "@domain" for every address of a domain
    # The senders lowercased, for owns(): asked twice for every message (MAIL FROM, From:).
    _lowered: frozenset[str] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_lowered", frozenset(s.lower() for s in self.senders))

    def owns(self, address: str) -> bool:
        """Whether `address` is one of this user's senders (case-insensitive)."""
        local, at, domain = address.rpartition("@")
        if not at or not local:
            return False
        lowered = self._lowered
        return address.lower() in lowered or "@" + domain.lower() in lowered


def check_sender(value: str) -> str:
    """An address, or @domain; raises ValueError saying what is wrong."""
    if value.startswith("@"):
        if parse_mailbox("x" + value) is None:
            raise ValueError(f"{value!r} is not @ followed by a domain")
    elif parse_mailbox(value) is None:
        raise ValueError(f"{value!r} is not an email address (or @domain)")
    return value


def check_name(value: str) -> str:
    if not value or any(c.isspace() or c in '"\\' for c in value) or len(value) > 256:
        raise ValueError(f"{value!r} is not a usable user name (no spaces or quotes)")
    return value


@attrs.frozen
class UserStore:
    """Users by name, as loaded from the users file."""

    users: dict[str, User] = attrs.field(factory=dict)

    def get(self, name: str) -> User | None:
        return self.users.get(name)

    @classmethod
    def load(cls, path: Path) -> UserStore:
        """The users in `path`; an empty store if it does not exist."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise UsersFileError(f"{path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise UsersFileError(f"{path}: not UTF-8 text (octet {exc.start})") from None
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UsersFileError(f"{path}: not valid TOML: {exc}") from None
        table = document.get("users", {})
        if not isinstance(table, dict) or set(document) - {"users"}:
            raise UsersFileError(f"{path}: expected only [users.NAME] tables")
        users = {}
        for name, entry in table.items():
            where = f"{path}: users.{name}"
            if not isinstance(entry, dict):
                raise UsersFileError(f"{where}: expected a table")
            password = entry.get("password")
            senders = entry.get("senders", [])
            if not isinstance(password, str) or parse_hash(password) is None:
                raise UsersFileError(f"{where}.password: expected a scrypt hash")
            if not isinstance(senders, list) or not all(isinstance(s, str) for s in senders):
                raise UsersFileError(f"{where}.senders: expected a list of addresses")
            try:
                check_name(name)
                checked = tuple(check_sender(s) for s in senders)
            except ValueError as exc:
                raise UsersFileError(f"{where}: {exc}") from None
            users[name] = User(name, password, checked)
        return cls(users)

    def save(self, path: Path) -> None:
        """Write atomically, readable by the owner only (it holds password hashes)."""
        lines = ["# smtp-gateway users: written by `smtp-gateway users`.\n"]
        for user in sorted(self.users.values(), key=lambda u: u.name):
            lines.append(f"\n[users.{json.dumps(user.name)}]\n")
            lines.append(f"password = {json.dumps(user.password_hash)}\n")
            lines.append(f"senders = {json.dumps(list(user.senders), ensure_ascii=False)}\n")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("".join(lines))
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    def with_user(self, user: User) -> UserStore:
        return UserStore({**self.users, user.name: user})

    def without(self, name: str) -> UserStore:
        return UserStore({k: v for k, v in self.users.items() if k != name})
