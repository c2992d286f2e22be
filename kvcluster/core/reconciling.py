"""A node taking over slots: the reconcile that makes it serve them, and forgetting a peer the table declared dead.

A node promoted to primary already holds every acknowledged write of the
slots it gains. Before it serves them it sends each of their backups its
uncommitted tail (``Reconcile``: the writes in flight at the failure, never
the slot's data) and waits for every acknowledgement, so no backup diverges
from the primary it follows. ``NodeCore`` mixes this in.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING

from kvcluster.core.actions import Action, DropPeer
from kvcluster.core.placement import RoutingTable
from kvcluster.core.protocol import Message, Reconcile
from kvcluster.core.waiters import PendingReconcile, PendingRequest, Waiter
from kvcluster.core.wire import SlotTail, Write

if TYPE_CHECKING:
    from kvcluster.core.replica import Replica

log = logging.getLogger(__name__)


class Reconciling:
    """The promotion half of a node; the state lives on the node, declared here, with the node methods it calls."""

    name: str
    node_id: int
    outbox: list[Action]
    table: RoutingTable | None
    replica: Replica
    ready: list[bool]
    pending: list[PendingRequest]
    syncs: list[PendingReconcile]
    repl_waiters: dict[int, tuple[int, list[Waiter]]]
    outgoing: dict[int, list[Write]]
    sent_commit: dict[int, int]

    def _forget_peer(self, node_id: int) -> None:
        """Count every outstanding acknowledgement from a dead node as given: the table no longer lists it."""
        for repl_id, (target, waiters) in list(self.repl_waiters.items()):
            if target == node_id:
                del self.repl_waiters[repl_id]
                for waiter in waiters:
                    waiter.acked(repl_id, [])
        self.outgoing.pop(node_id, None)
        for pending in self.pending:
            pending.backups.discard(node_id)
        self.sent_commit.pop(node_id, None)
        self.outbox.append(DropPeer(node_id))

    def _start_reconcile(self, slots: list[int], old: RoutingTable | None) -> None:
        """Send each backup of the gained slots this node's uncommitted tail of them; serve once all hold it.

        A previous primary that is still alive (the slot was handed over, not
        failed over) gets it too: its acknowledgement proves it has seen the
        new epoch and stopped serving the slot.
        """
        assert self.table is not None
        by_backup: dict[int, list[SlotTail]] = defaultdict(list)
        sent = 0
        for slot, writes in self.replica.take_tails(slots).items():
            tail = SlotTail(slot, self.table.epoch(slot), self.replica.high[slot], writes)
            previous = old.primary(slot) if old is not None else None
            handed_over = [previous] if previous is not None and not self.table.is_dead(previous) else []
            for backup in dict.fromkeys([*self.table.live(slot)[1:], *handed_over]):
                if backup == self.node_id:
                    continue
                by_backup[backup].append(tail)
                sent += len(writes)
        sync = PendingReconcile(slots)
        for backup, tails in by_backup.items():
            repl_id = self._new_repl_id()
            self._to_peer(backup, Reconcile(repl_id, self.node_id, tails))
            self.repl_waiters[repl_id] = (backup, [sync])
            sync.waiting.add(repl_id)
        for slot in slots:
            self.ready[slot] = not sync.waiting
        if sync.waiting:
            self.syncs.append(sync)
        log.info(
            "%s promoted to primary of %d slots; reconciling %d backups (%d uncommitted writes sent)",
            self.name,
            len(slots),
            len(by_backup),
            sent,
        )

    if TYPE_CHECKING:  # NodeCore's own

        def _to_peer(self, node_id: int, message: Message) -> None: ...

        def _new_repl_id(self) -> int: ...
