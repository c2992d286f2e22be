"""Healing at a storage node: copying a slot to a new replica, from either end.

The source is the slot's primary: it streams the committed contents and the
op ids it holds as committed, then feeds the target every later write to the
slot like a backup until the master lists the target among the replicas.
The target installs the copy and keeps the slot while the copy is under way.

A node restarted with its data keeps the slots it recovered but was not
given (dormant) for a while. When the master copies one back to it, the copy
carries only the writes it missed, if the source can prove that the node
still holds exactly what the source held at the node's version
(``core/history.py``); otherwise the whole slot travels.
``NodeCore`` mixes this in; the state lives on the node, declared here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kvcluster.core.actions import Action, ToMaster
from kvcluster.core.placement import RoutingTable
from kvcluster.core.protocol import CopyDone, Message, Replicate, SlotCopy
from kvcluster.core.replica import NO_COMMIT, Replica
from kvcluster.core.waiters import PendingCopy, PendingReconcile, PendingRequest, Waiter

log = logging.getLogger(__name__)

DORMANT_FOR = 60.0  # seconds a restarted node keeps recovered slots nobody has asked back yet
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
    deferred_copies: dict[int, tuple[int, int, tuple[int, int]]]  # slot -> (epoch, target, base) asked early
    dormant: dict[int, None]  # slots a restarted node recovered but holds for no table yet: a copy may resume them
    dormant_until: float
    name: str
    reported: dict[int, tuple[float, CopyDone]]  # slot -> when its finished copy was last reported, and how
    now: float

    def _start_copy(self, slot: int, epoch: int, target: int, base: tuple[int, int] = (0, 0)) -> None:
        """Send ``target`` the slot's committed contents, then every write to the slot, until the master adds it.

        The copy holds only what every replica has applied; the writes still
        waiting for their backups follow it as ordinary (undoable) replication,
        so the target's history is a prefix of the same stream as the others'.
        """
        table = self.table
        if table is None or table.epoch(slot) < epoch:
            # Planned on a table this node has not installed yet (it follows the request): copy once it has.
            self.deferred_copies[slot] = (epoch, target, base)
            return
        if not self.ready[slot] and any(slot in sync.slots for sync in self.syncs):
            # Promoted by the table that came with this request: copy once the backups are reconciled.
            self.deferred_copies[slot] = (epoch, target, base)
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
        store, high = self.replica.data[slot], self.replica.high[slot]
        writes = self.replica.history.since(slot, *base) if base[0] else None
        repl_id = self._new_repl_id()
        if writes is None:
            copy = PendingCopy(slot, epoch, target, len(store))
            message = SlotCopy(
                repl_id, self.node_id, slot, epoch, high, list(self.replica.items(slot)), self.replica.committed_ops()
            )
        else:  # the target still holds what this node held at ``base``: only the writes since travel
            copy = PendingCopy(slot, epoch, target, len(writes))
            message = SlotCopy(
                repl_id, self.node_id, slot, epoch, high, [], self.replica.committed_ops(), *base, writes
            )
        self._to_peer(target, message)
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
        for slot, (epoch, target, base) in list(self.deferred_copies.items()):
            if table.epoch(slot) >= epoch and not any(slot in sync.slots for sync in self.syncs):
                del self.deferred_copies[slot]
                self._start_copy(slot, epoch, target, base)
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

    def _keep_dormant(self, table: RoutingTable) -> None:
        """A restarted node's first table gives it none of what it recovered: keep that for ``DORMANT_FOR``.

        The master prefers to give a returning node the slots it still holds, and the copy then carries
        only the writes it missed; a dormant slot is neither served nor replicated to meanwhile.
        """
        mine = [s for s in range(table.slots) if self.replica.high[s] and self.node_id not in table.live(s)]
        self.dormant = dict.fromkeys(mine)
        self.dormant_until = self.now + DORMANT_FOR

    def _drop_dormant(self) -> None:
        log.info("%s drops %d recovered slots it was not given back", self.name, len(self.dormant))
        for slot in self.dormant:
            self.replica.drop_slot(slot)
        self.dormant = {}

    def _install_copy(self, copy: SlotCopy) -> bool:
        slot, replica = copy.slot, self.replica
        if not self._accepts(slot, copy.epoch, copy.sender):
            return False
        if not copy.base:
            replica.install_copy(slot, copy.high, copy.entries, copy.applied)
        elif slot in self.dormant and (replica.high[slot], replica.digest(slot)) == (copy.base, copy.digest):
            replica.catch_up(slot, copy.high, copy.writes, copy.applied)
        else:
            return False  # what the master said this node holds is not what it holds: a full copy follows
        self.dormant.pop(slot, None)
        self.copying[slot] = copy.sender
        return True

    if TYPE_CHECKING:  # NodeCore's own

        def _to_peer(self, node_id: int, message: Message) -> None: ...

        def _new_repl_id(self) -> int: ...

        def _accepts(self, slot: int, epoch: int, sender: int) -> bool: ...
