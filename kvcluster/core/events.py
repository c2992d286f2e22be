"""The master's short log of recent cluster events, bounded, with the times the master's driver handed it.

Like ``MasterCore`` it reads no clock: every event is recorded with the
``now`` of the event that caused it, and a status report turns those times
into ages, so the reader (on another machine, with another clock) can place
them on its own.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from kvcluster.core.wire import ClusterEvent, EventKind, TableData

EVENTS_KEPT = 32  # enough to explain the last few failures; a status report carries them all


# Kinds that come in batches on many ticks (copies, and the promotions rebalancing publishes with them).
COUNTED_KINDS = frozenset({
    EventKind.MOVES_STARTED, EventKind.MOVES_FINISHED, EventKind.MOVES_CANCELLED, EventKind.PROMOTED
})  # fmt: skip


@dataclass(slots=True)
class _Entry:
    at: float
    kind: EventKind
    node_id: int
    slots: int


class EventLog:
    """The last ``EVENTS_KEPT`` events, oldest first."""

    def __init__(self, kept: int = EVENTS_KEPT) -> None:
        self._entries: deque[_Entry] = deque(maxlen=kept)

    def record(self, now: float, kind: EventKind, node_id: int = 0, slots: int = 0) -> None:
        """Add an event; one of the ``COUNTED_KINDS`` adds its slots to the round under way instead.

        Healing and rebalancing start and finish copies, and publish the
        promotions that come with them, in batches on many ticks; an entry
        per batch would push the deaths and joins that caused them out of
        the log. So such events since the last event of another kind add up
        in one entry per kind and node, dated when the first of them happened.
        """
        if kind in COUNTED_KINDS:
            for entry in reversed(self._entries):
                if entry.kind not in COUNTED_KINDS:
                    break
                if (entry.kind, entry.node_id) == (kind, node_id):
                    entry.slots += slots
                    return
        self._entries.append(_Entry(now, kind, node_id, slots))

    def moves(self, now: float, kind: EventKind, count: int) -> None:
        """Count ``count`` moves of ``kind``; none for an empty batch."""
        if count:
            self.record(now, kind, slots=count)

    def promotions(self, now: float, old: TableData | None, new: TableData) -> None:
        """Record, per node, the slots ``new`` makes it primary of that ``old`` did not."""
        if old is None:
            return  # the first table makes every primary: that is the start, not a failover
        gained: dict[int, int] = {}
        for before, after in zip(_primaries(old), _primaries(new), strict=True):
            if after is not None and after != before:
                gained[after] = gained.get(after, 0) + 1
        for node_id, count in sorted(gained.items()):
            self.record(now, EventKind.PROMOTED, node_id, count)

    def report(self, now: float) -> list[ClusterEvent]:
        return [ClusterEvent(max(now - e.at, 0.0), e.kind, e.node_id, e.slots) for e in self._entries]


def _primaries(table: TableData) -> list[int | None]:
    dead = set(table.dead)
    return [next((n for n in nodes if n not in dead), None) for nodes in table.replicas]
