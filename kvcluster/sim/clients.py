"""Simulated clients: ``client.py``'s routing and retry rules on simulated sockets and the simulated clock.

``client.py`` is welded to ZeroMQ sockets and the real clock, so this is the
one part of the simulation that is not shared code. ``Call`` follows
``client._Run`` step for step (one ``Client.execute``: up to ``window``
requests of up to ``batch`` operations in flight), and a single operation
is a call with one operation, as ``Client.put``/``get`` make it:

- route by slot to the primary of the cached table, with the slot's epoch;
- a try waits ``min(2.0, 0.3 * 2**attempts)``; on timeout the node becomes a
  suspect, the table is refreshed and the same op ids are resent; while a
  flight waits on a suspect the master is asked every 100 ms, and a table
  naming the suspect dead resends its operations at once;
- ``NOT_PRIMARY``: refresh and resend at once; ``RETRY``: resend after 10 ms,
  refreshing too from the fifth try on; refreshes are rate-limited to one
  per 50 ms and block the client until the master answers;
- give up at the 5 s deadline: a put that did not complete is recorded
  UNKNOWN, a get FAILED.

Every operation is recorded as a ``history.Operation``, invoked when its
call started and completed when its answer arrived.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kvcluster.check.history import Operation, Outcome
from kvcluster.check.history import OpKind as HistoryKind
from kvcluster.client import MAX_TRY_TIMEOUT, REFRESH_INTERVAL, RETRIES_BEFORE_REFRESH, RETRY_DELAY, SUSPECT_POLL
from kvcluster.core.placement import RoutingTable
from kvcluster.core.protocol import (
    Message,
    NotLeader,
    NotReady,
    Op,
    OpKind,
    Reply,
    Request,
    Status,
    Table,
    TableRequest,
)
from kvcluster.sim.clock import Clock
from kvcluster.sim.network import Link

DEADLINE = 5.0
TRY_TIMEOUTS = [min(MAX_TRY_TIMEOUT, 0.3 * 2**attempt) for attempt in range(8)]
NOT_READY_PAUSE = 0.05

Spec = tuple[OpKind, str, str | None]


@dataclass(frozen=True)
class CallSpec:
    """One ``Client.execute``: its operations, and how many per request and requests in flight."""

    ops: list[Spec]
    batch: int = 1
    window: int = 1


Workload = Callable[[], CallSpec | None]  # the next call, or None when the client is done


@dataclass(slots=True)
class Flight:
    node_id: int
    indices: list[int]
    expires: float


@dataclass
class Call:
    """The state of one ``execute`` (``client._Run``)."""

    spec: CallSpec
    invoked: float
    deadline: float
    op_ids: list[int]
    slots: list[int] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    done: list[bool] = field(default_factory=list)
    queues: dict[int, deque[int]] = field(default_factory=dict)
    delayed: deque[tuple[float, int]] = field(default_factory=deque)
    flights: dict[int, Flight] = field(default_factory=dict)
    next_expiry: float = math.inf
    suspects: dict[int, None] = field(default_factory=dict)
    remaining: int = 0


class SimClient:
    """One client process: a DEALER to the master and one per node, running calls one after another."""

    def __init__(
        self,
        index: int,
        clock: Clock,
        rng: random.Random,
        connect: Callable[[SimClient, int | None], Link],
        workload: Workload,
        think: Callable[[], float],
        record: Callable[[Operation], None],
    ) -> None:
        self.pid = 1000 + index
        self.index = index
        self.name = f"client{index}"
        self.clock = clock
        self.alive = True
        self.links_out: list[Link] = []
        self.connect = connect
        self.workload = workload
        self.think = think
        self.record = record
        self.client_id = rng.getrandbits(62)
        self.table: RoutingTable | None = None
        self.last_refresh = -math.inf
        self.refreshing = False
        self.after_refresh: Callable[[], None] | None = None
        self.master_inbox: deque[Message] = deque()
        self.replies: deque[Reply] = deque()
        self.conns: dict[int, Link] = {}
        self.master: Link | None = None
        self.next_op_id = 0
        self.next_request_id = 0
        self.call: Call | None = None
        self.timer_token = 0
        self.done = False
        self.invalid: list[str] = []  # operations a node refused as malformed: the simulation built them wrong
        self.on_done: Callable[[SimClient], None] | None = None

    # --- arrivals ---

    def arrive_master(self, _link: Link, message: Message) -> None:
        self.master_inbox.append(message)
        if self.refreshing:
            self._take_master_answer()

    def arrive_reply(self, _link: Link, message: Message) -> None:
        if isinstance(message, Reply):
            self.replies.append(message)
            self._step()

    def forget_link(self, old: object) -> None:
        """The node process ``old`` is gone for good: the next request to its endpoint reaches its successor."""
        for node_id, link in list(self.conns.items()):
            if link.dst is old:
                self.conns.pop(node_id).close()

    # --- calls ---

    def start(self, at: float) -> None:
        self.clock.at(at, self._begin)

    def _begin(self, _arg: object) -> None:
        spec = self.workload()
        if spec is None:
            self.done = True
            if self.on_done is not None:
                self.on_done(self)
            return
        now = self.clock.now
        count = len(spec.ops)
        call = Call(spec, now, now + DEADLINE, list(range(self.next_op_id, self.next_op_id + count)))
        call.attempts, call.done, call.remaining = [0] * count, [False] * count, count
        self.next_op_id += count
        self.call = call
        if self.table is None:
            self._refresh_table(self._route_all)
        else:
            self._route_all()
            self._step()

    def _route_all(self) -> None:
        call, table = self.call, self.table
        assert call is not None
        assert table is not None
        call.slots = [table.slot_of(key) for _, key, _ in call.spec.ops]
        for index in range(len(call.spec.ops)):
            self._route(call, index)

    def _route(self, call: Call, index: int) -> None:
        assert self.table is not None
        primary = self.table.primary(call.slots[index])
        if primary is None:
            self._finish(call, index, None, ok=False)  # no live replica
            return
        call.queues.setdefault(primary, deque()).append(index)

    def _send_some(self, call: Call, now: float) -> None:
        spec = call.spec
        while len(call.flights) < spec.window and call.queues:
            for node_id in list(call.queues):
                queue = call.queues[node_id]
                indices = [queue.popleft() for _ in range(min(spec.batch, len(queue)))]
                if not queue:
                    del call.queues[node_id]
                self._send(call, node_id, indices, now)
                if len(call.flights) >= spec.window:
                    return

    def _send(self, call: Call, node_id: int, indices: list[int], now: float) -> None:
        table = self.table
        assert table is not None
        ops = []
        timeout = 0.0
        for index in indices:
            kind, key, value = call.spec.ops[index]
            slot = call.slots[index]
            ops.append(Op(kind, key, value, slot, table.epoch(slot), call.op_ids[index]))
            timeout = max(timeout, TRY_TIMEOUTS[min(call.attempts[index], len(TRY_TIMEOUTS) - 1)])
            call.attempts[index] += 1
        self.next_request_id += 1
        conn = self.conns.get(node_id)
        if conn is None:
            conn = self.conns[node_id] = self.connect(self, node_id)
        conn.send(Request(self.client_id, self.next_request_id, ops), now)
        call.flights[self.next_request_id] = Flight(node_id, indices, now + timeout)
        call.next_expiry = min(call.next_expiry, now + timeout)

    def _step(self, _arg: object = None) -> None:
        """Turns of ``client._Run.go``'s loop (replies, expiry, suspects, deadline, resends, sends) until it waits."""
        call = self.call
        turns = 0
        while call is not None and not self.refreshing:
            turns += 1
            if turns > 10_000:
                raise RuntimeError(f"{self.name} spins without waiting")  # a bug in this module, not in a core
            now = self.clock.now
            while self.replies:
                self._on_reply(call, self.replies.popleft(), now)
                if self.refreshing:
                    return
            if self._expire(call, now) or self._watch_suspects(call, now):
                return
            if not call.remaining:
                self._end(call)
                return
            if now >= call.deadline:
                for index in range(len(call.spec.ops)):
                    if not call.done[index]:
                        self._finish(call, index, None, ok=False)
                self._end(call)
                return
            while call.delayed and call.delayed[0][0] <= now:
                self._route(call, call.delayed.popleft()[1])
            self._send_some(call, now)
            if not call.remaining:
                continue
            wake = min(call.deadline, call.next_expiry)
            if self._waiting_on_suspects(call):
                wake = min(wake, self.last_refresh + SUSPECT_POLL)
            if call.delayed:
                wake = min(wake, call.delayed[0][0])
            if call.queues and len(call.flights) < call.spec.window:
                wake = now
            if wake > now:
                self._wake_at(wake)
                return

    def _on_reply(self, call: Call, reply: Reply, now: float) -> None:
        flight = call.flights.get(reply.request_id)
        if flight is None or len(reply.results) != len(flight.indices):
            return  # a late answer to a try we gave up on
        del call.flights[reply.request_id]
        refresh = False
        for index, result in zip(flight.indices, reply.results, strict=True):
            status, value = result.status, result.value
            if status in (Status.OK, Status.NOT_FOUND):
                self._finish(call, index, value, ok=True, found=status == Status.OK)
            elif status == Status.RETRY:
                call.delayed.append((now + RETRY_DELAY, index))
                refresh = refresh or call.attempts[index] >= RETRIES_BEFORE_REFRESH
            elif status == Status.NOT_PRIMARY:
                refresh = True
                call.delayed.append((now, index))
            else:
                kind, key, _ = call.spec.ops[index]
                self.invalid.append(f"{self.name}: status {status} for {kind.name} {key!r}")
                self._finish(call, index, None, ok=False)
        if refresh:
            self._refresh()

    def _expire(self, call: Call, now: float) -> bool:
        """Resend what timed out; True if that started a refresh the loop must wait for."""
        if now < call.next_expiry:
            return False
        expired = [rid for rid, f in call.flights.items() if f.expires <= now]
        call.next_expiry = min((f.expires for f in call.flights.values() if f.expires > now), default=math.inf)
        if not expired:
            return False
        for rid in expired:
            flight = call.flights.pop(rid)
            call.suspects[flight.node_id] = None
            call.delayed.extend((now, index) for index in flight.indices)
        return self._refresh()

    def _waiting_on_suspects(self, call: Call) -> bool:
        return bool(call.suspects) and any(f.node_id in call.suspects for f in call.flights.values())

    def _watch_suspects(self, call: Call, now: float) -> bool:
        # Compared as the wake-up time is computed, so that waking at it always polls (float rounding).
        if now < self.last_refresh + SUSPECT_POLL or not self._waiting_on_suspects(call):
            return False
        assert self.table is not None
        version = self.table.version

        def after() -> None:
            table = self.table
            assert table is not None
            if table.version == version:
                return
            for rid in [rid for rid, f in call.flights.items() if table.is_dead(f.node_id)]:
                call.delayed.extend((self.clock.now, index) for index in call.flights.pop(rid).indices)

        self._refresh_table(after)
        return True

    def _finish(self, call: Call, index: int, value: str | None, *, ok: bool, found: bool = True) -> None:
        if call.done[index]:
            return
        call.done[index] = True
        call.remaining -= 1
        kind, key, put_value = call.spec.ops[index]
        now = self.clock.now
        if kind in (OpKind.PUT, OpKind.DELETE):
            outcome = Outcome.OK if ok else Outcome.UNKNOWN
            history_kind = HistoryKind.PUT if kind == OpKind.PUT else HistoryKind.DELETE
            self.record(Operation(self.index, history_kind, key, put_value, call.invoked, now, outcome))
        else:
            outcome = (Outcome.OK if found else Outcome.NOT_FOUND) if ok else Outcome.FAILED
            read = value if ok and found else None
            self.record(Operation(self.index, HistoryKind.GET, key, read, call.invoked, now, outcome))

    def _end(self, call: Call) -> None:
        assert self.call is call
        self.call = None
        self.timer_token += 1
        self.clock.at(self.clock.now + self.think(), self._begin)

    # --- the table ---

    def _refresh(self) -> bool:
        """Ask the master for the table unless asked within the last 50 ms; True if now waiting for it."""
        if self.clock.now - self.last_refresh < REFRESH_INTERVAL:
            return False
        self._refresh_table(None)
        return True

    def _refresh_table(self, after: Callable[[], None] | None) -> None:
        """Block until the master answers a ``TableRequest`` (or the call's deadline passes)."""
        self.last_refresh = self.clock.now
        self.refreshing = True
        self.after_refresh = after
        if self.master is None:
            self.master = self.connect(self, None)
        self.master.send(TableRequest(), self.clock.now)
        if self.call is not None:
            self._wake_at(self.call.deadline)
        self._take_master_answer()

    def _take_master_answer(self) -> None:
        while self.master_inbox and self.refreshing:
            message = self.master_inbox.popleft()
            if isinstance(message, Table):
                if self.table is None or message.data.version > self.table.version:
                    self.table = RoutingTable(message.data)
                    for node_id in [n for n in self.conns if self.table.is_dead(n)]:
                        self.conns.pop(node_id).close()
                self.refreshing = False
                after, self.after_refresh = self.after_refresh, None
                if after is not None:
                    after()
                self._step()
            elif isinstance(message, NotReady | NotLeader):  # starting, or the group is electing: ask again
                self.clock.at(self.clock.now + NOT_READY_PAUSE, self._ask_again)

    def _ask_again(self, _arg: object) -> None:
        if self.refreshing and self.master is not None:
            self.master.send(TableRequest(), self.clock.now)

    def _wake_at(self, at: float) -> None:
        self.timer_token += 1
        self.clock.at(at, self._on_timer, self.timer_token)

    def _on_timer(self, token: int) -> None:
        if token != self.timer_token:
            return
        call = self.call
        if self.refreshing:
            if call is not None and self.clock.now >= call.deadline:
                # The master did not answer: ClusterUnavailable ends the call; every open operation failed.
                self.refreshing = False
                self.after_refresh = None
                for index in range(len(call.spec.ops)):
                    self._finish(call, index, None, ok=False)
                self._end(call)
            return
        self._step()
