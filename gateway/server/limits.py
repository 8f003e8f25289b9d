"""Limits shared by every session of one node: per-user connections, AUTH failures per client
address, and the node's connection count."""

from __future__ import annotations

from collections import deque

import attrs
import trio


@attrs.define(eq=False)
class UserSlots:
    """At most `limit` authenticated connections per user on this node (service.md).

    A dict of trio.Semaphore, taken with acquire_nowait (a client is refused, never queued),
    and dropped when a user's count returns to zero.
    """

    limit: int
    _semaphores: dict[str, trio.Semaphore] = attrs.field(factory=dict)

    def acquire(self, user: str) -> bool:
        semaphore = self._semaphores.get(user)
        if semaphore is None:
            semaphore = self._semaphores[user] = trio.Semaphore(self.limit)
        try:
            semaphore.acquire_nowait()
        except trio.WouldBlock:
            return False
        return True

    def release(self, user: str) -> None:
        semaphore = self._semaphores[user]
        semaphore.release()
        if semaphore.value == self.limit:
            del self._semaphores[user]

    def in_use(self, user: str) -> int:
        semaphore = self._semaphores.get(user)
        return 0 if semaphore is None else self.limit - semaphore.value

    @property
    def users(self) -> int:
        return len(self._semaphores)


@attrs.define(eq=False)
class AuthFailures:
    """Failed AUTHs per client address within a sliding window (service.md)."""

    limit: int
    window: float  # seconds
    _times: dict[str, deque[float]] = attrs.field(factory=dict)

    def _recent(self, address: str) -> deque[float] | None:
        times = self._times.get(address)
        if times is None:
            return None
        horizon = trio.current_time() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._times[address]
            return None
        return times

    def blocked(self, address: str) -> bool:
        times = self._recent(address)
        return times is not None and len(times) >= self.limit

    def record(self, address: str) -> None:
        times = self._recent(address)
        if times is None:
            times = self._times[address] = deque()
        times.append(trio.current_time())
        if len(times) > self.limit:
            times.popleft()

    @property
    def addresses(self) -> int:
        return len(self._times)
