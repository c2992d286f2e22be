"""Healing at a storage node: copying a slot to a new replica, from either end.

The source is the slot's primary: it streams the committed contents and the
op ids it holds as committed, then feeds the target every later write to the
slot like a backup until the master lists the target among the replicas.
The target installs the copy and keeps the slot while the copy is under way.
``NodeCore`` mixes this in; the state lives on the node, declared here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvcluster.core.actions import Action, ToMaster
from kvcluster.core.placement import RoutingTable
from kvcluster.core.protocol import CopyDone, Message, Replicate, SlotCopy
from kvcluster.core.replica import NO_COMMIT, Replica
from kvcluster.core.waiters import PendingCopy, PendingReconcile, PendingRequest, Waiter

COPY_DONE_AGAIN = 1.0  # seconds between two reports of a finished copy the master has not published yet


class SlotCopying:
    """The copy half of a node; the node methods it calls are declared at the end."""

    node_id: int
    outbox: list[Action]
    table: RoutingTable | None
    replica: Replica
    ready: list[bool]
    key_flight: dict[str, list[int]]
    pending: list[PendingRequest]
    syncs: list[PendingReconcile]
    repl_waiters: dict[int, tuple[int, list[Waiter]]]
    copies: list[PendingCopy]
    learners: dict[int, list[int]]  # slot -> nodes being copied to: they get its writes too
    copying: dict[int, int]  # slot -> the primary copying it to this node
    deferred_copies: dict[int, tuple[int, int]]  # slot -> (epoch, target) asked for while reconciling
    reported: dict[int, tuple[float, CopyDone]]  # slot -> when its finished copy was last reported, and how
    now: float

    def _start_copy(self, slot: int, epoch: int, target: int) -> None:
        """Send ``target`` the slot's committed contents, then every write to the slot, until the master adds it.

        The copy holds only what every replica has applied; the writes still
        waiting for their backups follow it as ordinary (undoable) replication,
        so the target's history is a prefix of the same stream as the others'.
        """
        table = self.table
        if table is None or table.epoch(slot) < epoch:
            # Planned on a table this node has not installed yet (it follows the request): copy once it has.
            self.deferred_copies[slot] = (epoch, target)
            return
        if not self.ready[slot] and any(slot in sync.slots for sync in self.syncs):
            # Promoted by the table that came with this request: copy once the backups are reconciled.
            self.deferred_copies[slot] = (epoch, target)
            return
        if (
            table is None
            or table.primary(slot) != self.node_id
            or table.epoch(slot) != epoch
            or not self.ready[slot]
            or table.is_dead(target)
            or target in table.live(slot)
        ):
            return  # the master's view moved on; it will ask again if the slot still needs a replica
        store = self.replica.data[slot]
        copy = PendingCopy(slot, epoch, target, len(store))
        repl_id = self._new_repl_id()
        self._to_peer(
            target,
            SlotCopy(
                repl_id,
                self.node_id,
                slot,
                epoch,
                self.replica.high[slot],
                list(store.items()),
                self.replica.committed_ops(),
            ),
        )
        self.repl_waiters[repl_id] = (target, [copy])
        copy.waiting.add(repl_id)
        in_flight = sorted(
            (w for p in self.pending for _, w in p.writes if w.slot == slot and w.version > self.key_flight[w.key][1]),
            key=lambda w: w.version,
        )
        if in_flight:
            repl_id = self._new_repl_id()
            self._to_peer(target, Replicate(repl_id, self.node_id, NO_COMMIT, in_flight))
            self.repl_waiters[repl_id] = (target, [copy])
            copy.waiting.add(repl_id)
        targets = self.learners.setdefault(slot, [])
        if target not in targets:
            targets.append(target)
        self.copies.append(copy)

    def _finish_copies(self) -> None:
        still: list[PendingCopy] = []
        for copy in self.copies:
            if copy.waiting:
                still.append(copy)
            elif copy.slot not in copy.rejected:
                done = CopyDone(self.node_id, copy.slot, copy.epoch, copy.target, copy.keys)
                self.outbox.append(ToMaster(done))
                self.reported[copy.slot] = (self.now, done)
        self.copies = still

    def _report_copies_again(self) -> None:
        """Send ``COPY_DONE`` again for copies the master has not yet published: a master whose queue was full
        dropped it (sends to the master never block), and the move would wait out its ``COPY_TIMEOUT``."""
        for slot, (sent, done) in list(self.reported.items()):
            if self.now - sent >= COPY_DONE_AGAIN:
                self.outbox.append(ToMaster(done))
                self.reported[slot] = (self.now, done)

    def _settle_copies(self, table: RoutingTable) -> None:
        """After a new table: start the copies that waited for it; stop feeding learners that joined, died or lost
        their source; drop abandoned copies."""
        for slot, (epoch, target) in list(self.deferred_copies.items()):
            if table.epoch(slot) >= epoch and not any(slot in sync.slots for sync in self.syncs):
                del self.deferred_copies[slot]
                self._start_copy(slot, epoch, target)
        for slot, targets in list(self.learners.items()):
            live = table.live(slot)
            keep = [t for t in targets if t not in live and not table.is_dead(t)] if live[:1] == (self.node_id,) else []
            if keep:
                self.learners[slot] = keep
            else:
                del self.learners[slot]
        for slot, (_, done) in list(self.reported.items()):
            if done.target not in self.learners.get(slot, ()):
                del self.reported[slot]  # published, or given up: nothing left to report
        for slot, source in list(self.copying.items()):
            if self.node_id in table.live(slot):
                del self.copying[slot]
            elif table.primary(slot) != source:
                # The copy was abandoned (its source is no longer primary): a partial copy must not linger.
                self.replica.drop_slot(slot)
                del self.copying[slot]

    def _install_copy(self, copy: SlotCopy) -> bool:
        if not self._accepts(copy.slot, copy.epoch, copy.sender):
            return False
        self.replica.install_copy(copy.slot, copy.high, copy.entries, copy.applied)
        self.copying[copy.slot] = copy.sender
        return True

    if TYPE_CHECKING:  # NodeCore's own

        def _to_peer(self, node_id: int, message: Message) -> None: ...

        def _new_repl_id(self) -> int: ...

        def _accepts(self, slot: int, epoch: int, sender: int) -> bool: ...
