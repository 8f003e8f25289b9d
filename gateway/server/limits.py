"""Limits shared by every session of one node: per-user connections, AUTH failures per client
address, and the node's connection count."""

from __future__ import annotations

import bisect
from collections import OrderedDict

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


# Addresses whose AUTH failures are remembered at once (about 200 octets each). Without a
# bound, one failed AUTH from each address of an IPv6 /64 would grow the table without end.
MAX_TRACKED_ADDRESSES = 100_000


@attrs.define(eq=False)
class AuthFailures:
    """Failed AUTHs per client address within a sliding window (service.md).

    Kept in the order of each address's latest failure: addresses whose failures have all left
    the window are dropped as others fail, and past `max_addresses` the address that failed
    longest ago makes room (under such a flood the per-connection rules still hold).
    """

    limit: int
    window: float  # seconds
    max_addresses: int = MAX_TRACKED_ADDRESSES
    # Each address's failure times, oldest first: a list (a deque costs 600 octets more).
    _times: OrderedDict[str, list[float]] = attrs.field(factory=OrderedDict)

    def _recent(self, address: str) -> list[float] | None:
        times = self._times.get(address)
        if times is None:
            return None
        del times[: bisect.bisect_right(times, trio.current_time() - self.window)]
        if not times:
            del self._times[address]
            return None
        return times

    def blocked(self, address: str) -> bool:
        times = self._recent(address)
        return times is not None and len(times) >= self.limit

    def record(self, address: str) -> None:
        now = trio.current_time()
        times = self._recent(address)
        if times is None:
            times = self._times[address] = []
        else:
            self._times.move_to_end(address)
        times.append(now)
        if len(times) > self.limit:
            del times[0]
        # The front holds the address whose latest failure is oldest.
        horizon = now - self.window
        while self._times and (
            len(self._times) > self.max_addresses
            or self._times[next(iter(self._times))][-1] <= horizon
        ):
            self._times.popitem(last=False)

    @property
    def addresses(self) -> int:
        return len(self._times)
