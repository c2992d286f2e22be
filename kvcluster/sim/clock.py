"""Simulated time: one clock and one priority queue of timed events.

Events are ``(time, sequence, function, argument)``; the sequence number
breaks ties, so two events at the same instant run in the order they were
scheduled and a run never depends on comparing functions. Nothing here
reads the real clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

Event = Callable[[Any], None]


class Clock:
    """The simulated clock (float seconds) and the events still to come."""

    __slots__ = ("_queue", "_seq", "events", "now", "stopped")

    def __init__(self) -> None:
        self.now = 0.0
        self.events = 0
        self.stopped = False
        self._queue: list[tuple[float, int, Event, Any]] = []
        self._seq = 0

    def at(self, time: float, event: Event, arg: Any = None) -> None:
        """Run ``event(arg)`` at ``time`` (never earlier than now)."""
        self._seq += 1
        heapq.heappush(self._queue, (time if time > self.now else self.now, self._seq, event, arg))

    def run(self, until: float, max_events: int) -> bool:
        """Run events in order until ``stopped``, the queue is empty, ``until`` or ``max_events``.

        Returns whether the run stopped of its own accord (``stopped`` set or
        nothing left to do) rather than at a limit.
        """
        queue = self._queue
        pop = heapq.heappop
        while queue and not self.stopped:
            if queue[0][0] > until or self.events >= max_events:
                return False
            time, _, event, arg = pop(queue)
            self.now = time
            self.events += 1
            event(arg)
        return True
