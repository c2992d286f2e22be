"""How long a node's replication messages have waited for their acknowledgement, and which peers are overdue.

A primary cut off from a backup, while both still reach the master, cannot
finish a write: it waits for every live replica, and nobody is silent, so
failure detection sees nothing wrong. The node therefore names in each
heartbeat the peers that left a ``REPLICATE`` or ``RECONCILE`` unacknowledged
for longer than ``overdue_after(timing)``, and the master settles it
(``core/complaints.py``). A ``SLOT_COPY`` does not count: a whole slot may
legitimately take long to install, and a copy that never finishes is planned
again after ``COPY_TIMEOUT`` anyway; the writes that reach a new replica while
it is copied are ``REPLICATE``s, so a cut to it is still reported.

Repl ids only grow, so the send times are kept in the order of their ids and
every check stops at the first message young enough: a check costs the
messages still overdue, not all those sent. No clock here; the node's driver
passes ``now``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kvcluster.core.liveness import MASS_SILENCE_FACTOR
from kvcluster.core.protocol import Timing
from kvcluster.core.waiters import PendingCopy, Waiter


def overdue_after(timing: Timing) -> float:
    """How long an acknowledgement may take before its peer is reported.

    As long as the master waits before it declares dead a node caught in a
    stall: a peer that is slower than that is not merely busy, and short cuts
    (a second or two, which the simulator draws) heal before anyone complains.
    """
    return MASS_SILENCE_FACTOR * timing.dead_after


class AckClock:
    """When each replication message still possibly unacknowledged was sent, oldest first."""

    def __init__(self) -> None:
        self.sent: dict[int, float] = {}  # repl id -> when it was sent; ids ascending, so oldest first

    def stamp(self, repl_id: int, now: float) -> None:
        self.sent[repl_id] = now

    def overdue(self, now: float, bound: float, waiting: Mapping[int, tuple[int, Sequence[Waiter]]]) -> list[int]:
        """The peers of messages in ``waiting`` (repl id -> (peer, waiters)) sent more than ``bound`` ago.

        Slot copies do not count (see the module doc). Stamps of messages no longer waiting are forgotten.
        """
        late: set[int] = set()
        settled: list[int] = []
        for repl_id, sent_at in self.sent.items():
            if now - sent_at <= bound:
                break
            entry = waiting.get(repl_id)
            if entry is None:
                settled.append(repl_id)
            elif not any(isinstance(waiter, PendingCopy) for waiter in entry[1]):
                late.add(entry[0])
        for repl_id in settled:
            del self.sent[repl_id]
        return sorted(late)
