"""Checking credentials without stalling the event loop, and without telling who exists."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import attrs
import trio

from .passwords import DUMMY_HASH, verify_password
from .users import User, UserStore

SECONDS = 1.0
CACHE_TTL = 300 * SECONDS  # how long a verified password is remembered
CACHE_SIZE = 10_000  # entries
HASH_THREADS = 2  # scrypt checks at once: one per core here

Verifier = Callable[[str, str], Awaitable[bool]]


def threaded_verifier(limiter: trio.CapacityLimiter) -> Verifier:
    async def verify(stored: str, password: str) -> bool:
        return await trio.to_thread.run_sync(verify_password, stored, password, limiter=limiter)

    return verify


async def inline_verifier(stored: str, password: str) -> bool:
    """The same check on the event loop's thread: for tests on a virtual clock."""
    return verify_password(stored, password)


class _Pending:
    """A check in progress, that others with the same credentials wait for."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.ok = False


@attrs.define(eq=False)
class Authenticator:
    """Verifies a user's password against the store, remembering recent successes.

    The cache keys are a keyed hash of name and password (the key lives only in this process),
    so it never holds a password. A changed user (new hash) no longer matches its entries.
    """

    store: UserStore
    verifier: Verifier = attrs.field(
        factory=lambda: threaded_verifier(trio.CapacityLimiter(HASH_THREADS))
    )
    _key: bytes = attrs.field(factory=lambda: secrets.token_bytes(32))
    _cache: OrderedDict[bytes, tuple[float, str]] = attrs.field(factory=OrderedDict)
    _pending: dict[bytes, _Pending] = attrs.field(factory=dict)

    def _cache_key(self, name: str, password: str) -> bytes:
        raw = name.encode() + b"\0" + password.encode()
        return hmac.new(self._key, raw, hashlib.sha256).digest()

    async def verify(self, name: str, password: str) -> User | None:
        """The user, if the password is theirs; else None, after as long as a real check."""
        user = self.store.get(name)
        key = self._cache_key(name, password)
        now = trio.current_time()
        cached = self._cache.get(key)
        if cached is not None and user is not None:
            expires, password_hash = cached
            if expires > now and hmac.compare_digest(password_hash, user.password_hash):
                return user
            del self._cache[key]
        # Many connections of one client may log in at once (a burst of reconnections):
        # they share one check instead of each paying a scrypt behind the same limiter.
        pending = self._pending.get(key)
        if pending is not None:
            await pending.done.wait()
            return user if pending.ok and user is not None else None
        pending = self._pending[key] = _Pending()
        try:
            stored = user.password_hash if user is not None else DUMMY_HASH
            pending.ok = await self.verifier(stored, password)
        finally:
            del self._pending[key]
            pending.done.set()
        if not pending.ok or user is None:
            return None
        self._cache[key] = (now + CACHE_TTL, user.password_hash)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return user
