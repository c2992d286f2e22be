"""The master's logic as a state machine: membership, the routing table, failure detection and failover.

``MasterCore`` holds no socket and reads no clock: its driver (the ZeroMQ
runtime in ``runtime/master.py``, or the simulator) hands it each message with
the time and its route, and calls ``tick`` every ``TICK`` seconds; it answers
with actions (``core/actions.py``).

The master waits until all ``n`` storage nodes have said hello, then publishes
table version 1 (or, when the nodes kept data, the table that starts them
again: ``core/restart.py``). From then on it watches the nodes
(``core/liveness.py``); a node declared dead is appended to the dead list of
the next table version. Every node derives the consequences from the table
alone: for each slot the first live replica is the primary, so the dead
node's backups are promoted and the slot's epoch grows.

With a master group (``replicated``), only the member its driver made leader
acts (``lead``); the others answer ``NotLeader``. Every change is proposed to
the group's log (a ``Propose`` action) and reaches nodes and clients only once
committed (``on_committed``); the rules for taking over are in ``core/group_state.py``.

The master never serves keys. Clients ask it for the table once and go to the
primaries directly; nodes receive every new table as soon as it is made, and
again in answer to any heartbeat that reports an older version.
"""

from __future__ import annotations

import logging

from kvcluster.core.actions import Action, Answer, Propose, Route
from kvcluster.core.complaints import Complaints
from kvcluster.core.events import EventLog
from kvcluster.core.group_state import MasterState, MoveRecord
from kvcluster.core.healing import Move, Repairs, plan_rebalance
from kvcluster.core.joins import Holder, Reservations
from kvcluster.core.liveness import FailureDetection, NodeRecord
from kvcluster.core.placement import (
    NUM_SLOTS,
    initial_table,
    node_name,
    under_replicated,
    with_member,
    with_moves,
    with_replicas,
)
from kvcluster.core.protocol import (
    CopyDone,
    CopySlot,
    Drain,
    Fenced,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Join,
    JoinAnswer,
    Message,
    NodeExited,
    NotLeader,
    NotReady,
    StatusReport,
    StatusRequest,
    Table,
    TableRequest,
    Timing,
)
from kvcluster.core.restart import Recovery, recovered_table
from kvcluster.core.wire import EventKind, NodeReport, TableData
from kvcluster.errors import ProtocolError

log = logging.getLogger(__name__)

TICK = 0.02  # how often liveness is checked, in seconds
REPAIR_TABLE_INTERVAL = 0.5  # seconds between tables that add caught-up replicas: each table costs every node


class MasterCore(FailureDetection):
    """The master's state; every public method is an event, and ``take()`` returns what to do about it."""

    def __init__(
        self,
        nodes: int,
        rep: int,
        timing: Timing,
        pid: int,
        slots: int = NUM_SLOTS,
        *,
        master_id: int = 1,
        replicated: bool = False,
    ) -> None:
        self.expected = nodes
        self.rep = rep
        self.slots = slots  # of the first table; a simulated cluster uses a few
        self.timing = timing
        self.pid = pid
        self.outbox: list[Action] = []
        self.nodes: dict[int, NodeRecord] = {}
        self.table: TableData | None = None  # the newest table made; with a group, perhaps not yet committed
        self.committed: TableData | None = None  # the newest table nodes and clients may see
        self.master_id = master_id
        self.replicated = replicated
        self.acting = not replicated  # a group member acts only once its driver says it leads
        self.term = 0 if replicated else 1
        self.leader = 0 if replicated else master_id
        self.stalled: dict[int, None] = {}  # nodes caught in a mass silence: they get the longer deadline
        self.last_tick: float | None = None
        self.repairs = Repairs()
        self.draining: frozenset[int] = frozenset()  # nodes whose slots move elsewhere before they are removed
        self.drained: frozenset[int] = frozenset()  # draining nodes that hold nothing any more
        self.events = EventLog()
        self.healthy = True  # every slot has rep replicas: nothing to plan
        self.recovery = Recovery()  # the hellos heard before the first table
        self.returning: dict[int, dict[int, tuple[int, int]]] = {}  # restarted node -> slot -> (version, digest)
        self.last_repair_table = 0.0
        self.copies_from = 0.0  # no copy starts before then (``COPIES_AFTER_DEATH``)
        self.joins = Reservations()  # node ids given to nodes started by hand, until their hello arrives
        self.complaints = Complaints()  # live nodes that cannot reach each other

    def take(self) -> list[Action]:
        """The actions the events so far asked for, oldest first; the outbox is emptied."""
        actions, self.outbox = self.outbox, []
        return actions

    def on_message(self, now: float, route: Route, message: Message) -> None:
        self.now = now
        if self.acting:
            self._handle(route, message)
        elif isinstance(message, TableRequest | StatusRequest | Drain | Join):
            self._send(route, NotLeader(self.term, self.leader))
        elif not isinstance(message, Hello | Heartbeat | CopyDone | NodeExited):  # sent to every member: one acts
            raise ProtocolError(f"unexpected message: {type(message).__name__}")

    def lead(self, now: float, term: int, state: MasterState | None, grace: float) -> None:
        """This member won ``term``: carry on from the newest committed ``state``, judging no node for ``grace``.

        Routes are per master, so every node is unreachable until its next
        heartbeat (which names its incarnation); moves that were under way are
        asked for again from their source then.
        """
        self.now, self.term, self.leader, self.acting = now, term, self.master_id, True
        self.nodes, self.stalled, self.last_tick, self.repairs = {}, {}, None, Repairs()
        self.recovery, self.complaints = Recovery(), Complaints()
        self.outbox = []
        table = state.table if state is not None else None
        self.table = self.committed = table
        if state is None or table is None:
            self.draining = frozenset()
            return
        self.draining = frozenset(state.draining)
        for node_id, pid in state.pids.items():
            self.nodes[node_id] = NodeRecord(None, table.endpoints[node_id], pid, now + grace)
        for m in state.moves:
            self.repairs.moves[m.slot] = Move(m.slot, m.source, m.target, m.epoch, now, m.replaces or None)
        self.healthy = False
        log.info("leading the master group in term %d from table version %d", term, table.version)

    def follow(self, term: int, leader: int) -> None:
        """Another member leads ``term`` (``leader`` 0: none is known yet): stop acting."""
        if self.acting:
            log.warning("no longer leading the master group (term %d)", term)
        self.term, self.leader, self.acting = term, leader, False
        self.outbox = []

    def on_committed(self, state: MasterState) -> None:
        """``state`` is in the group's log: its table may now reach nodes and clients."""
        table = state.table
        if self.acting and table is not None and (self.committed is None or table.version > self.committed.version):
            self._announce(table)

    def on_commit_failed(self) -> None:
        """The log dropped a proposal (its leader changed): while still acting, propose the newest state again."""
        if self.acting:
            self.outbox.append(Propose(self._state()))

    def tick(self, now: float) -> None:
        """Time passed: declare dead the nodes that stayed silent too long.

        The driver delivers every message that has arrived before it ticks, so
        a heartbeat that waited while the master was busy still counts.
        """
        self.now = now
        if not self.acting:
            return
        if self.table is None:
            self._form_table()  # the wait for nodes with data may be over
            return
        if self.last_tick is not None:
            self._forgive_own_stall(now - self.last_tick)
        self.last_tick = now
        self._detect_failures(now)
        self._judge_complaints(now)
        if not self.healthy and self._settled() and now >= self.copies_from:
            self._heal(now)

    def _settled(self) -> bool:
        """Every table made is committed: copies name epochs of the table they were planned on, so nodes need it."""
        return self.table is not None and self.committed is not None and self.committed.version == self.table.version

    def _heal(self, now: float) -> None:
        """Publish the copies that caught up (batched), cancel broken moves, and start new ones."""
        assert self.table is not None
        cancelled = self.repairs.cancel_broken(self.table, now)
        for move in cancelled:
            log.info("cancelled copying slot %d to %s", move.slot, node_name(move.target))
        self.events.moves(now, EventKind.MOVES_CANCELLED, len(cancelled))
        if self.repairs.finished and now - self.last_repair_table >= REPAIR_TABLE_INTERVAL:
            self.last_repair_table = now
            finished = self.repairs.take_finished()
            self.events.moves(now, EventKind.MOVES_FINISHED, len(finished))
            table = with_replicas(self.table, [(f.slot, f.target) for f in finished if f.replaces is None])
            replaced = [(f.slot, f.replaces, f.target) for f in finished if f.replaces is not None]
            self._publish(with_moves(table, replaced, []) if replaced else table)
            if not self._settled():
                return  # plan from that table once nodes hold it
        self._note_drained(now)
        # A node that holds no table yet would refuse a copy, which then waits out COPY_TIMEOUT: no copies to it.
        unready = frozenset(n for n, r in self.nodes.items() if not r.table_version and n not in self.table.dead)
        if under_replicated(self.table):
            self._start(self.repairs.plan(now, self.table, self.draining | unready))
            return
        if unready:
            return  # rebalancing waits for the nodes that just joined
        if self.repairs.started is not None and self.repairs.idle():
            self._log_healed(now)
        before = set(self.repairs.moves)
        held = frozenset(s for slots in self.returning.values() for s in slots)
        switches = plan_rebalance(self.table, self.repairs, now, self.draining, held)
        self._start([m for slot, m in self.repairs.moves.items() if slot not in before])
        if switches and now - self.last_repair_table >= REPAIR_TABLE_INTERVAL:
            self.last_repair_table = now
            log.info("moving %d primaries to even out the nodes", len(switches))
            self._publish(with_moves(self.table, [], switches))
        elif not switches and self.repairs.idle() and not self._draining_holds_slots():
            self.healthy = True
            log.info("every slot has %d replicas and the nodes are balanced", self.rep)

    def _note_drained(self, now: float) -> None:
        assert self.table is not None
        for node_id in sorted(self.draining - self.drained):
            copying = any(node_id in (m.source, m.target) for m in self.repairs.moves.values())
            if not copying and not any(node_id in nodes for nodes in self.table.replicas):
                self.events.record(now, EventKind.DRAIN_FINISHED, node_id)
                self.drained = self.drained | {node_id}

    def _draining_holds_slots(self) -> bool:
        assert self.table is not None
        return any(n in nodes for nodes in self.table.replicas for n in self.draining)

    def _start(self, moves: list[Move]) -> None:
        self.events.moves(self.now, EventKind.MOVES_STARTED, len(moves))
        for move in moves:
            # Once only: if the target turns out not to hold what it said, the move's retry copies in full.
            base, digest = self.returning.get(move.target, {}).pop(move.slot, (0, 0))
            route = self.nodes[move.source].route
            if route is not None:  # else asked for once the source is heard (see ``lead``)
                self._send(route, CopySlot(move.slot, move.epoch, move.target, base, digest))

    def _log_healed(self, now: float) -> None:
        started = self.repairs.started
        if started is None:
            return
        took = max(now - started, 1e-9)
        log.info(
            "every slot has %d replicas again: %d slots, %d keys copied in %.1f s (%.0f keys/s)",
            self.rep,
            self.repairs.slots_done,
            self.repairs.keys_done,
            took,
            self.repairs.keys_done / took,
        )
        self.repairs.started = None

    def _send(self, route: Route, message: Message) -> None:
        self.outbox.append(Answer(route, message))

    def _handle(self, route: Route, message: Message) -> None:
        match message:
            case Hello():
                self._on_hello(route, message)
            case Heartbeat():
                self._on_heartbeat(route, message)
            case TableRequest():
                table = self.committed
                self._send(route, Table(table) if table else NotReady(len(self.nodes), self.expected))
            case StatusRequest():
                self._send(route, self._status())
            case CopyDone():
                if self.table is not None:
                    self.repairs.on_done(message, self.table)
            case Drain(node_id):
                self._drain_node(node_id)
                self._send(route, self._status())
            case NodeExited(node_id, pid):
                self._on_exit(node_id, pid)
            case Join():
                self._send(route, self._answer_join(message))
            case _:
                raise ProtocolError(f"unexpected message: {type(message).__name__}")

    def _answer_join(self, join: Join) -> JoinAnswer:
        holders = {n: Holder(r.pid, r.endpoint, r.last_seen) for n, r in self.nodes.items()}
        answer = self.joins.answer(self.now, join, self.table, holders, self.expected, self.timing.dead_after)
        if answer.refusal:
            log.warning("refused %s (pid %d): %s", node_name(answer.node_id), join.pid, answer.refusal)
        return answer

    def _is_dead(self, node_id: int) -> bool:
        return self.table is not None and node_id in self.table.dead

    def _on_hello(self, route: Route, hello: Hello) -> None:
        if self.table is not None:
            self._on_join(route, hello, self.table)
            return
        old = self.nodes.get(hello.node_id)
        if old is not None and old.pid != hello.pid and self.now - old.last_seen < self.timing.dead_after:
            # Two processes under one id before the first table: the one heard first keeps it while it lives.
            log.warning("%s (pid %d) ignored: pid %d holds that id", node_name(hello.node_id), hello.pid, old.pid)
            return
        self.recovery.hear(self.now, hello)
        stored = self.recovery.newest_table()
        known = stored.endpoints if stored is not None else range(1, self.expected + 1)
        if hello.node_id not in known:
            raise ProtocolError(f"hello from unknown node id {hello.node_id}")
        self.nodes[hello.node_id] = NodeRecord(route, hello.endpoint, hello.pid, self.now)
        log.info(
            "%s registered at %s (pid %d, %s), %d/%d",
            node_name(hello.node_id),
            hello.endpoint,
            hello.pid,
            "no data" if hello.held is None else f"data of table version {hello.held.table.version}",
            len(self.nodes),
            len(known),
        )
        self._form_table()

    def _gone_before_table(self, node_id: int) -> None:
        """A node exited before the first table (it refused its damaged data): do not wait for its hello."""
        self.recovery.gone.add(node_id)
        self._form_table()

    def _form_table(self) -> None:
        """Publish the first table: from the nodes' data if any kept some, else a fresh one once all are here."""
        if self.recovery.since is not None:
            stored = self.recovery.ready(self.now)
            if stored is not None:
                table, dropped = recovered_table(stored, self.recovery.hellos)
                self.nodes = {n: r for n, r in self.nodes.items() if n in table.endpoints}
                log.info("starting again from the nodes' data (table version %d); %d stale replicas dropped", *(
                    stored.version, dropped))  # fmt: skip
                self.events.record(self.now, EventKind.RECOVERED, slots=dropped)
                self._publish(table)
                self.healthy = False
        elif len(self.nodes) == self.expected:
            self._publish(initial_table({i: r.endpoint for i, r in self.nodes.items()}, self.rep, self.slots))

    def _on_join(self, route: Route, hello: Hello, table: TableData) -> None:
        """A node joining a running cluster: the next id (added), or a dead node's id (restarted).

        It holds no data we trust, so it joins with none and receives slots by
        rebalancing. A hello under the id of a node not yet declared dead
        waits (the node says hello again every heartbeat): the old incarnation
        may still hold a lease.
        """
        node_id = hello.node_id
        if node_id in table.endpoints and node_id not in table.dead:
            record = self.nodes.get(node_id)
            if record is None or record.route != route:
                log.info("%s (pid %d) waits to join: the old %s is not declared dead", *(
                    node_name(node_id), hello.pid, node_name(node_id)))  # fmt: skip
            return
        if node_id not in table.endpoints and node_id != max(table.endpoints) + 1:
            raise ProtocolError(f"hello from unknown node id {node_id}")
        restarted = node_id in table.endpoints
        if hello.held is not None and len(hello.held.highs) == table.slots:
            # What it recovered: copies of these slots back to it may carry only the writes since.
            held = hello.held
            self.returning[node_id] = {s: (h, held.digests[s]) for s, h in enumerate(held.highs) if h}
        self.events.record(self.now, EventKind.RESTARTED if restarted else EventKind.JOINED, node_id)
        self.nodes[node_id] = NodeRecord(route, hello.endpoint, hello.pid, self.now)
        data = "holding what it recovered" if hello.held is not None else "with no data"
        log.info("%s joined at %s (pid %d) %s; rebalancing", node_name(node_id), hello.endpoint, hello.pid, data)
        self._publish(with_member(table, node_id, hello.endpoint))
        self.healthy = False

    def _drain_node(self, node_id: int) -> None:
        """Move every slot off ``node_id`` (replicas first copied elsewhere), so it can be stopped safely."""
        if self.table is None or node_id not in self.table.endpoints or node_id in self.table.dead:
            return
        staying = set(self.table.endpoints) - set(self.table.dead) - self.draining - {node_id}
        if len(staying) < self.table.rep:
            log.warning("not draining %s: %d nodes would be left for %d replicas", *(
                node_name(node_id), len(staying), self.table.rep))  # fmt: skip
            return
        if node_id not in self.draining:
            log.info("draining %s: moving its slots to the other nodes", node_name(node_id))
            self.draining = self.draining | {node_id}
            self.drained = self.drained - {node_id}
            self.events.record(self.now, EventKind.DRAIN_STARTED, node_id)
            self.healthy = False
            if self.replicated:
                self.outbox.append(Propose(self._state()))

    def _on_heartbeat(self, route: Route, beat: Heartbeat) -> None:
        record = self.nodes.get(beat.node_id)
        if record is not None and record.route is None and record.pid == beat.pid:
            self._adopt(beat.node_id, record, route)
        if record is None or record.route != route or self._is_dead(beat.node_id):
            self._send(route, Fenced(beat.node_id, self.term))
            return
        if self.complaints.condemned == beat.node_id:
            return  # unheard and unacknowledged: its lease runs out before it is declared dead
        self.complaints.hear(self.now, beat.node_id, beat.overdue)
        record.last_seen = self.now
        self.stalled.pop(beat.node_id, None)
        record.keys = beat.keys
        record.disk = beat.disk
        record.table_version = beat.table_version
        version = self.committed.version if self.committed else 0
        self._send(route, HeartbeatAck(beat.sent_at, version, self.term))
        if self.committed is not None and beat.table_version < version:
            self._send(route, Table(self.committed))

    def _adopt(self, node_id: int, record: NodeRecord, route: Route) -> None:
        """The first heartbeat under a new leader: this incarnation is the one the log names."""
        record.route = route
        for move in self.repairs.moves.values():
            if move.source == node_id:
                self._send(route, CopySlot(move.slot, move.epoch, move.target))

    def _publish(self, table: TableData) -> None:
        self.events.promotions(self.now, self.table, table)
        self.table = table
        if self.replicated:
            self.outbox.append(Propose(self._state()))
        else:
            self._announce(table)

    def _announce(self, table: TableData) -> None:
        self.committed = table
        message = Table(table)
        for node_id, record in self.nodes.items():
            if node_id not in table.dead and record.route is not None:
                self._send(record.route, message)
        log.info("published table version %d (dead: %s)", table.version, [node_name(n) for n in table.dead])

    def _state(self) -> MasterState:
        moves = [MoveRecord(m.slot, m.source, m.target, m.epoch, m.replaces or 0) for m in self.repairs.moves.values()]
        pids = {node_id: record.pid for node_id, record in self.nodes.items()}
        return MasterState(self.table, sorted(self.draining), pids, moves)

    def _status(self) -> StatusReport:
        now = self.now
        reports = [
            NodeReport(
                node_id, r.endpoint, r.pid, not self._is_dead(node_id), r.keys, (now - r.last_seen) * 1000, r.disk
            )
            for node_id, r in sorted(self.nodes.items())
        ]
        repairs = self.repairs
        moving = [[m.slot, m.source, m.target] for m in repairs.moves.values()]
        seconds = 0.0 if repairs.started is None else now - repairs.started
        draining = sorted(self.draining)
        return StatusReport(
            self.pid,
            self.master_id,
            self.term,
            self.committed,
            reports,
            moving,
            repairs.slots_done,
            repairs.keys_done,
            seconds,
            draining,
            self.events.report(now),
        )
