"""A storage node's logic as a state machine: serving, primary-backup replication and fencing.

``NodeCore`` holds no socket and reads no clock. Its driver (the ZeroMQ
runtime in ``runtime/node.py``, or the simulator) feeds it events with the
current time: the start, a message from the master, a message on its
request socket (from clients and from primaries), an acknowledgement from a
peer, a timer, and the end of a pass over everything that arrived. It answers
with actions (``core/actions.py``). Nothing waits on a single peer, so two
nodes replicating to each other cannot deadlock.

Write path (the guarantee): the primary assigns the put a version
``(epoch << 40) | counter``, forwards it to every live backup, and commits it
to its own store and answers the client only once every backup of the slot
in the master's latest table has acknowledged it. Everything that arrives in
one pass of the loop is forwarded to a backup in one message (group commit).
Reads are served from the committed store, so a read never returns a value
that a later failover could lose.

Commit watermark: every ``Replicate`` carries the counter up to which all of
the primary's writes are held by every replica (a ``Commit`` alone carries it
when the primary is idle), so a backup knows which writes it may still have to
undo (its tail; see ``replica.py``).

Fencing: a node serves a slot only while it is the slot's primary in its
latest table, its lease from the master is fresh, and no peer has shown it a
newer epoch for the slot. Backups accept replication only from the primary of
the newest epoch they know. A node promoted to primary already holds every
acknowledged write; it sends each backup of a gained slot its uncommitted tail
(``Reconcile``: the writes in flight at the failure, never the slot's data)
and serves the slot once they all hold it, so backups never diverge from the
primary they follow.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

from kvcluster.core.acks import AckClock, overdue_after
from kvcluster.core.actions import Action, Answer, Exit, Route, ToMaster, ToPeer
from kvcluster.core.copying import SlotCopying
from kvcluster.core.placement import RoutingTable, node_name
from kvcluster.core.protocol import (
    Commit,
    CopyDone,
    CopySlot,
    Fenced,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Message,
    Reconcile,
    Replicate,
    ReplicateAck,
    Reply,
    Request,
    Scan,
    SlotCopy,
    StatsRequest,
    Table,
    Timing,
    check_key,
    check_value,
)
from kvcluster.core.reconciling import Reconciling
from kvcluster.core.records import TableSeen
from kvcluster.core.replica import COUNTER_MASK, NO_COMMIT, Replica, make_version
from kvcluster.core.scanning import Scanning
from kvcluster.core.stats import OpStats, node_stats
from kvcluster.core.waiters import PendingCopy, PendingReconcile, PendingRequest, Waiter
from kvcluster.core.wire import DiskReport, Holdings, Op, OpKind, Result, Status, TableData, Write
from kvcluster.errors import ProtocolError

log = logging.getLogger(__name__)


class NodeCore(SlotCopying, Scanning, Reconciling):
    """One storage node's state; every method is an event, and ``take()`` returns what to do about it."""

    def __init__(
        self, node_id: int, endpoint: str, pid: int, timing: Timing, recovered: tuple[Replica, TableData] | None = None
    ) -> None:
        self.node_id = node_id
        self.name = node_name(node_id)
        self.endpoint = endpoint
        self.pid = pid
        self.timing = timing
        self.outbox: list[Action] = []
        self.now = 0.0
        self.wall_offset = 0.0  # wall-clock time minus ``now``: requests carry their deadline in wall-clock time
        self.expired_requests = 0  # requests dropped unapplied because their deadline had passed

        self.table: RoutingTable | None = None
        self.replica = Replica(0) if recovered is None else recovered[0]
        self.held = None if recovered is None else _holdings(*recovered)
        self.disk: DiskReport | None = None  # the driver's report on the log, when it keeps one
        self.known: list[tuple[int, int]] = []  # per slot: newest (epoch, primary) seen anywhere
        self.ready: list[bool] = []  # per slot: reconciled as primary for the current epoch
        self.lease_until = 0.0
        self.master_term = 0  # the newest master group term heard: grants and fencing from older ones are ignored
        self.next_beat = 0.0
        self.counter = 0
        self.inflight: set[tuple[int, int]] = set()  # (client, op id) of puts waiting for their backups
        # Per key with puts in flight: [puts in flight, highest version applied]. Puts of one request wait on
        # several backups, so they can finish out of order; an older put must never overwrite a newer one.
        self.key_flight: dict[str, list[int]] = {}
        self.sent_commit: dict[int, int] = {}  # per backup: the last watermark sent to it

        self.next_repl_id = 1
        self.outgoing: dict[int, list[Write]] = defaultdict(list)
        self.repl_waiters: dict[int, tuple[int, list[Waiter]]] = {}
        self.ack_clock = AckClock()  # when each replication message was sent: a peer that never answers is reported
        self.pending: list[PendingRequest] = []
        self.syncs: list[PendingReconcile] = []
        self.copies: list[PendingCopy] = []
        self.learners: dict[int, list[int]] = {}
        self.copying: dict[int, int] = {}
        self.deferred_copies: dict[int, tuple[int, int, tuple[int, int]]] = {}
        self.dormant: dict[int, None] = {}
        self.dormant_until = 0.0
        self.reported: dict[int, tuple[float, CopyDone]] = {}
        self.stopped = False
        self.stats = OpStats(0.0)  # ops served and request latencies, for ``kvcluster top``
        self.sample_process: Callable[[], tuple[float, int]] | None = None  # the driver's (CPU %, RSS bytes)

    # --- events ---

    def take(self) -> list[Action]:
        """The actions the events so far asked for, oldest first; the outbox is emptied."""
        actions, self.outbox = self.outbox, []
        return actions

    def start(self, now: float) -> None:
        self.now = now
        self.outbox.append(ToMaster(self._hello()))
        self.next_beat = now + self.timing.heartbeat
        self.stats = OpStats(now)

    def tick(self, now: float) -> None:
        """Time passed: heartbeat the master when due, and tell idle backups the commit watermark."""
        self.now = now
        if now >= self.stats.next_rotate:
            self.stats.rotate(now)
        if now >= self.next_beat:
            self.next_beat = now + self.timing.heartbeat
            if self.table is None:
                # Until the master takes us in (it may still be waiting out our previous incarnation), ask again.
                self.outbox.append(ToMaster(self._hello()))
                return
            overdue = self.ack_clock.overdue(now, overdue_after(self.timing), self.repl_waiters)
            beat = Heartbeat(self.node_id, self.pid, now, self.table.version, self.replica.keys, self.disk, overdue)
            self.outbox.append(ToMaster(beat))
            self._commit_idle_backups()
            if self.reported:
                self._report_copies_again()
            if self.dormant and now >= self.dormant_until:
                self._drop_dormant()

    def _hello(self) -> Hello:
        return Hello(self.node_id, self.endpoint, self.pid, self.held)

    def on_master(self, now: float, message: Message) -> None:
        self.now = now
        self._on_master(message)

    def on_router(self, now: float, route: Route, message: Message) -> None:
        """A message on the request socket: a client's request, or replication from a primary."""
        self.now = now
        self._on_router(route, message)

    def on_peer(self, now: float, message: Message) -> None:
        """An acknowledgement from a backup this node replicates to."""
        self.now = now
        self._on_peer(message)

    def flush(self, now: float) -> None:
        """The end of a pass: send what the pass produced (group commit) and finish what is acknowledged."""
        self.now = now
        self._flush()

    def _to_peer(self, node_id: int, message: Message) -> None:
        assert self.table is not None
        self.outbox.append(ToPeer(node_id, self.table.endpoint(node_id), message))

    # --- master: table, lease, fencing ---

    def _on_master(self, message: Message) -> None:
        match message:
            case HeartbeatAck(sent_at, _, term) if term >= self.master_term:
                # A grant from an older term may come from a deposed master: only the newest leader's count.
                self.master_term = term
                self.lease_until = max(self.lease_until, sent_at + self.timing.lease)
            case HeartbeatAck() | Fenced(_, _) if message.term < self.master_term:
                pass
            case Table(data):
                if self.table is None or data.version > self.table.version:
                    self._install(RoutingTable(data))
            case CopySlot(slot, epoch, target, base, digest):
                self._start_copy(slot, epoch, target, (base, digest))
            case Fenced():
                log.error("%s was declared dead by the master; exiting", self.name)
                self.stopped = True
                self.outbox.append(Exit("declared dead by the master"))
            case _:
                raise ProtocolError(f"unexpected message from master: {type(message).__name__}")

    def _install(self, table: RoutingTable) -> None:
        old, self.table = self.table, table
        if old is None:
            if len(self.replica.data) != table.slots:
                journal, self.replica = self.replica.journal, Replica(table.slots)
                self.replica.journal = journal
            if self.held is not None:
                self._keep_dormant(table)
            self.held = None  # the masters placed what it held: the slots this table gives it are current
            self.known = [(-1, 0)] * table.slots
            self.ready = [True] * table.slots
        if self.replica.journal is not None:
            self.replica.journal.append(TableSeen(table.data))
        gained: list[int] = []
        data = self.replica.data
        for slot in range(table.slots):
            epoch, primary = table.epoch(slot), table.primary(slot)
            if epoch >= self.known[slot][0] and primary is not None:
                self.known[slot] = (epoch, primary)
            if old is not None and primary == self.node_id and old.primary(slot) != self.node_id:
                gained.append(slot)
            if (
                data[slot]
                and slot not in self.copying
                and slot not in self.dormant
                and self.node_id not in table.live(slot)
            ):
                self.replica.drop_slot(slot)  # moved to another node, which holds it now
        newly_dead = [n for n in table.data.dead if old is None or not old.is_dead(n)]
        log.info("%s installed table version %d (dead: %s)", self.name, table.version, table.data.dead)
        for node_id in newly_dead:
            self._forget_peer(node_id)
        if gained:
            self._start_reconcile(gained, old)
        self._settle_copies(table)

    # --- clients ---

    def _on_router(self, route: Route, message: Message) -> None:
        match message:
            case Request():
                self._on_request(route, message)
            case Scan():
                self._on_scan(route, message)
            case StatsRequest(request_id):
                self.outbox.append(Answer(route, node_stats(self, request_id)))
            case Replicate(repl_id, sender, committed, writes):
                rejected = sorted({w.slot for w in writes if not self._apply_replicated(w, sender)})
                self.replica.commit(sender, committed, self.known)
                self.outbox.append(Answer(route, ReplicateAck(repl_id, self.node_id, rejected), durable=True))
            case Reconcile(repl_id, sender, tails):
                rejected = [tail.slot for tail in tails if not self._accepts(tail.slot, tail.epoch, sender)]
                accepted = [(t.slot, t.high, t.writes) for t in tails if t.slot not in rejected and self._holds(t.slot)]
                self.replica.reconcile_all(sender, accepted)
                self.outbox.append(Answer(route, ReplicateAck(repl_id, self.node_id, rejected), durable=True))
            case Commit(sender, committed):
                self.replica.commit(sender, committed, self.known)
            case SlotCopy(repl_id, slot=slot):
                rejected = [] if self._install_copy(message) else [slot]
                self.outbox.append(Answer(route, ReplicateAck(repl_id, self.node_id, rejected), durable=True))
            case _:
                raise ProtocolError(f"unexpected message from a client: {type(message).__name__}")

    def _on_request(self, route: Route, request: Request) -> None:
        if request.deadline and self.now + self.wall_offset > request.deadline:
            # The client has given up and reported an unknown outcome: applying it now would help nobody.
            self.expired_requests += 1
            return
        pending = PendingRequest(route, request, [])
        pending.arrived = self.now  # set, not passed: a keyword argument costs a dataclass three times as much
        lease_fresh = self.now < self.lease_until
        for index, op in enumerate(request.ops):
            pending.results.append(self._serve(op, request.client, index, pending, lease_fresh))
        if pending.writes:
            for write in (w for _, w in pending.writes):
                self.inflight.add((write.client, write.op_id))
            self.pending.append(pending)
        else:
            self._reply(pending)

    def _serve(self, op: Op, client: int, index: int, pending: PendingRequest, lease_fresh: bool) -> Result | None:
        refusal = self._refusal(op, lease_fresh)
        if refusal is not None:
            return refusal
        self.stats.ops[op.kind] += 1
        if op.kind == OpKind.GET:
            value = self.replica.get(op.slot, op.key)
            return Result(Status.NOT_FOUND, None) if value is None else Result(Status.OK, value)
        ref = (client, op.op_id)
        if ref in self.replica.applied:
            return Result(Status.OK, None)
        if ref in self.inflight:
            return Result(Status.RETRY, None)
        assert self.table is not None
        epoch = self.table.epoch(op.slot)
        self.counter += 1
        write = Write(op.slot, epoch, op.key, op.value, make_version(epoch, self.counter), client, op.op_id)
        pending.writes.append((index, write))
        flight = self.key_flight.get(op.key)
        if flight is None:
            self.key_flight[op.key] = [1, 0]
        else:
            flight[0] += 1
        for backup in self.table.live(op.slot)[1:]:
            self.outgoing[backup].append(write)
            pending.backups.add(backup)
        for learner in self.learners.get(op.slot, ()):
            self.outgoing[learner].append(write)
            pending.backups.add(learner)
        return None

    def _refusal(self, op: Op, lease_fresh: bool) -> Result | None:
        """Why this node must not serve ``op`` now, as the answer to give, or ``None``."""
        table = self.table
        if table is None:
            return Result(Status.RETRY, None)
        if not 0 <= op.slot < table.slots or table.slot_of(op.key) != op.slot or check_key(op.key) is not None:
            return Result(Status.INVALID, None)
        if op.kind == OpKind.PUT:
            if op.value is None or check_value(op.value) is not None:
                return Result(Status.INVALID, None)
        elif op.kind == OpKind.DELETE:
            if op.value is not None:
                return Result(Status.INVALID, None)
        elif op.kind != OpKind.GET:
            return Result(Status.INVALID, None)
        epoch = table.epoch(op.slot)
        if op.epoch > epoch:
            return Result(Status.RETRY, None)  # the client saw a newer table than ours
        if table.primary(op.slot) != self.node_id or self.known[op.slot] != (epoch, self.node_id):
            return Result(Status.NOT_PRIMARY, None)
        if not self.ready[op.slot] or not lease_fresh:
            return Result(Status.RETRY, None)
        if op.kind != OpKind.GET and self.disk is not None and self.disk.error:
            return Result(Status.UNWRITABLE, self.disk.error)  # never acknowledge a write that cannot be logged
        return None

    def _reply(self, pending: PendingRequest) -> None:
        results = [r if r is not None else Result(Status.RETRY, None) for r in pending.results]
        reply = Reply(pending.request.request_id, self.node_id, results)
        self.outbox.append(Answer(pending.route, reply, bool(pending.writes), pending.arrived))

    # --- primary side of replication ---

    def _new_repl_id(self) -> int:
        self.next_repl_id += 1
        self.ack_clock.stamp(self.next_repl_id, self.now)
        return self.next_repl_id

    def _flush(self) -> None:
        """Send what this pass produced, one message per backup, then finish what is fully acknowledged."""
        if self.outgoing:
            repl_ids = {}
            committed = self._commit_watermark()
            for backup, writes in self.outgoing.items():
                repl_id = self._new_repl_id()
                self._to_peer(backup, Replicate(repl_id, self.node_id, committed, writes))
                self.sent_commit[backup] = committed
                repl_ids[backup] = repl_id
                self.repl_waiters[repl_id] = (backup, [])
            self.outgoing.clear()
            for pending in self.pending:
                for backup in pending.backups:
                    sent_as = repl_ids.get(backup)
                    if sent_as is not None:
                        pending.waiting.add(sent_as)
                        self.repl_waiters[sent_as][1].append(pending)
                pending.backups.clear()
        if self.pending:
            self._finish_requests()
        if self.syncs:
            self._finish_syncs()
        if self.copies:
            self._finish_copies()

    def _finish_requests(self) -> None:
        still: list[PendingRequest] = []
        for pending in self.pending:
            if pending.waiting or pending.backups:
                still.append(pending)
                continue
            for index, write in pending.writes:
                self.inflight.discard((write.client, write.op_id))
                if write.slot in pending.rejected:
                    pending.results[index] = Result(Status.NOT_PRIMARY, None)
                else:
                    found = self._apply_own(write)
                    pending.results[index] = Result(Status.OK if found else Status.NOT_FOUND, None)
                self._land(write)
            self._reply(pending)
        self.pending = still

    def _apply_own(self, write: Write) -> bool:
        """Apply a committed write; False only for a delete of a key this store did not hold."""
        flight = self.key_flight[write.key]
        if write.version > flight[1]:
            flight[1] = write.version
            return self.replica.apply(write) is not None or write.value is not None
        self.replica.remember(write)  # its resend must be answered OK, not applied over the newer write
        return True

    def _land(self, write: Write) -> None:
        flight = self.key_flight[write.key]
        flight[0] -= 1
        if not flight[0]:
            del self.key_flight[write.key]

    def _commit_watermark(self) -> int:
        """The counter up to which every write of this node is held by all its backups."""
        if self.syncs:
            return NO_COMMIT  # a backup mid-reconcile may still have to undo writes below any watermark
        oldest = min((p.writes[0][1].version & COUNTER_MASK for p in self.pending if p.writes), default=None)
        return self.counter if oldest is None else oldest - 1

    def _commit_idle_backups(self) -> None:
        """Tell backups the watermark that no ``Replicate`` carried, so their tails stay short when idle."""
        committed = self._commit_watermark()
        if committed == NO_COMMIT:
            return
        for backup, sent in self.sent_commit.items():
            if sent < committed:
                self._to_peer(backup, Commit(self.node_id, committed))
                self.sent_commit[backup] = committed

    def _finish_syncs(self) -> None:
        still: list[PendingReconcile] = []
        for sync in self.syncs:
            if sync.waiting:
                still.append(sync)
                continue
            for slot in sync.slots:
                self.ready[slot] = slot not in sync.rejected
            log.info("%s finished reconciling %d slots", self.name, len(sync.slots))
        self.syncs = still
        for slot in [s for s in self.deferred_copies if self.ready[s] or not any(s in y.slots for y in still)]:
            self._start_copy(slot, *self.deferred_copies.pop(slot))

    def _on_peer(self, message: Message) -> None:
        if not isinstance(message, ReplicateAck):
            raise ProtocolError(f"unexpected message from a peer: {type(message).__name__}")
        target_waiters = self.repl_waiters.pop(message.repl_id, None)
        if target_waiters is None:
            return  # already settled when the table declared that backup dead
        for waiter in target_waiters[1]:
            waiter.acked(message.repl_id, message.rejected_slots)

    # --- backup side of replication ---

    def _accepts(self, slot: int, epoch: int, sender: int) -> bool:
        """Whether ``sender`` may write to ``slot``: it is the primary of the newest epoch we know."""
        if not 0 <= slot < len(self.known):
            return False
        known_epoch, known_primary = self.known[slot]
        if epoch > known_epoch:
            self.known[slot] = (epoch, sender)
            return True
        return sender == known_primary

    def _apply_replicated(self, write: Write, sender: int) -> bool:
        if not self._accepts(write.slot, write.epoch, sender):
            return False
        if self._holds(write.slot):
            self.replica.apply_replicated(sender, write)
        # else: the slot moved away from this node while the write was on its way; acknowledging it costs nothing.
        return True

    def _holds(self, slot: int) -> bool:
        """Whether this node keeps a copy of ``slot``: a replica in its table, or a replica being made."""
        return self.table is not None and (self.node_id in self.table.live(slot) or slot in self.copying)


def _holdings(replica: Replica, table: TableData) -> Holdings:
    """What a recovered replica can tell the masters of each slot of its last table."""
    slots = range(len(replica.data))
    return Holdings(table, [replica.high[s] for s in slots], [replica.digest(s) for s in slots])
