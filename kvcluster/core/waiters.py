"""What a storage node waits for: acknowledgements from backups, grouped by what they complete.

A replication message (``REPLICATE``, ``RECONCILE``, ``SLOT_COPY``) is sent
once per backup and pass, and each ``Waiter`` that depends on it records its
id; an acknowledgement settles the ids, and the node finishes a waiter once
none is left. A backup that refuses a slot (it knows a newer primary) marks
the slot rejected in every waiter of that message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvcluster.core.actions import Route
from kvcluster.core.protocol import Request
from kvcluster.core.wire import Result, Write


@dataclass(eq=False, kw_only=True)
class Waiter:
    """Something waiting for backups to acknowledge replication messages, by their ids."""

    waiting: set[int] = field(default_factory=set)
    rejected: set[int] = field(default_factory=set)  # slots a backup refused: we are not their primary any more

    def acked(self, repl_id: int, rejected_slots: list[int]) -> None:
        self.waiting.discard(repl_id)
        self.rejected.update(rejected_slots)


@dataclass(eq=False)
class PendingRequest(Waiter):
    """A client request with puts that wait for their backups."""

    route: Route
    request: Request
    results: list[Result | None]
    writes: list[tuple[int, Write]] = field(default_factory=list)
    backups: set[int] = field(default_factory=set)  # backups still to be sent this pass's writes
    arrived: float = 0.0  # when the request arrived


@dataclass(eq=False)
class PendingCopy(Waiter):
    """A slot being copied to a new replica: done once it acknowledged the copy and the writes then in flight."""

    slot: int
    epoch: int
    target: int
    keys: int


@dataclass(eq=False)
class PendingReconcile(Waiter):
    """Slots a newly promoted primary is bringing its backups in line on before serving them."""

    slots: list[int]
