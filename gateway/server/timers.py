"""Deadlines for sessions waiting on their sockets, kept by one task for the whole node.

A session on plain TCP waits for its client with `trio.lowlevel.wait_readable` on the socket.
Bounding each such wait with a cancel scope of its own (entered, then closed: trio registers
and unregisters its deadline each time) cost about a tenth of a small message's CPU (two
waits a message: 150 against 130 us, alternating runs). Here a wait costs a few attribute
stores: each session has one `SocketWait`, and the heap holds an entry for it only when no
entry it already has comes due first. Deadlines only move later as a session goes on, so that
is about one heap push per session per idle timeout: when an entry comes due and its session
is waiting with a later deadline, the sweeper queues the later one. A wait that is due is
woken by `trio.lowlevel.notify_closing` on its socket; `wait_readable` then raises
ClosedResourceError, and `expired` tells the session why.

The sweeper sleeps until the soonest entry and wakes at exactly its time, as a cancel scope's
deadline would. It is a system task, started by the first wait that needs it, so that any
Gateway, however it is run, has its timers kept.
"""

from __future__ import annotations

import heapq
import itertools
import math

import trio


class SocketWait:
    """One session's waits on its socket: the current deadline and whether it passed."""

    __slots__ = ("closed", "deadline", "expired", "fd", "queued", "waiting")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.deadline = math.inf
        self.waiting = False
        self.expired = False  # the wait was ended by its deadline or by cancel()
        self.queued = math.inf  # the soonest deadline the heap holds for this wait
        self.closed = False  # its session has ended

    def cancel(self) -> None:
        """End the current wait now (a drain ends idle waits so)."""
        if self.waiting and not self.expired:
            self.expired = True
            trio.lowlevel.notify_closing(self.fd)


PRUNE_FROM = 1024  # entries of ended sessions the heap may hold before it is pruned


class SocketTimers:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, SocketWait]] = []
        self._order = itertools.count()
        self._target = math.inf  # what the sweeper sleeps until
        self._changed = trio.Event()
        self._started = False
        self._closed_entries = 0  # about how many entries belong to ended sessions

    def arm(self, wait: SocketWait, deadline: float) -> bool:
        """Start a wait on wait.fd that ends at `deadline`; False if that has passed already.
        The caller sets wait.waiting back to False when the wait ends, however it ends."""
        if deadline <= trio.current_time():
            return False
        if not self._started:
            self._started = True
            trio.lowlevel.spawn_system_task(self._sweep, name="gateway socket timers")
        wait.deadline = deadline
        wait.expired = False
        wait.waiting = True
        if deadline < wait.queued:
            self._push(wait, deadline)
        return True

    def forget(self, wait: SocketWait) -> None:
        """The session has ended: its entries are dropped when they come due or, when they
        are half the heap (fast churn: one a connection, for up to an idle timeout), at once."""
        wait.closed = True
        wait.waiting = False
        if wait.queued == math.inf:
            return
        self._closed_entries += 1
        heap = self._heap
        if self._closed_entries > PRUNE_FROM and 2 * self._closed_entries > len(heap):
            heap[:] = [entry for entry in heap if not entry[2].closed]
            heapq.heapify(heap)
            self._closed_entries = 0

    def _push(self, wait: SocketWait, deadline: float) -> None:
        heapq.heappush(self._heap, (deadline, next(self._order), wait))
        wait.queued = deadline
        if deadline < self._target:
            self._changed.set()

    async def _sweep(self) -> None:
        heap = self._heap
        while True:
            self._target = heap[0][0] if heap else math.inf
            self._changed = trio.Event()
            with trio.CancelScope(deadline=self._target):
                await self._changed.wait()
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                due, _, wait = heapq.heappop(heap)
                if due == wait.queued:
                    wait.queued = math.inf  # its soonest entry is gone (others may be left)
                    if wait.closed and self._closed_entries:
                        self._closed_entries -= 1
                if not wait.waiting:
                    continue
                if wait.deadline <= now:
                    wait.cancel()
                elif wait.deadline < wait.queued:
                    self._push(wait, wait.deadline)
