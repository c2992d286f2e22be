"""The connection to a cluster: routing, retries and failover from the caller's side.

A ``Connection`` fetches the routing table from the master once (or loads it from
a cache file) and then sends each operation straight to its slot's primary
over one DEALER socket per node, with many requests in flight. When a node
does not answer in time, or answers that it is not the primary, the client
fetches a new table and resends; when a node answers "retry" (it is still
catching up) the client resends shortly after. Every put carries an id that
is unique for this client, so a node that already applied it answers OK
without applying it twice. Every wait is bounded by the call's deadline.
"""

from __future__ import annotations

import enum
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from kvcluster.core.placement import RoutingTable, node_name
from kvcluster.core.protocol import (
    Drain,
    NotReady,
    Op,
    OpKind,
    Reply,
    Request,
    Status,
    StatusReport,
    StatusRequest,
    Table,
    TableRequest,
    check_key,
    check_value,
    decode,
    encode,
)
from kvcluster.errors import (
    ClusterUnavailable,
    InvalidKey,
    InvalidValue,
    KeyNotFound,
    KvclusterError,
    LogUnwritable,
    NoLiveReplica,
    OperationTimedOut,
    ProtocolError,
)
from kvcluster.leader_link import MasterLink
from kvcluster.node_sockets import NodeSockets

if TYPE_CHECKING:
    from kvcluster.check.history import HistoryRecorder
    from kvcluster.curve import Curve

RETRY_DELAY = 0.01  # seconds before resending an operation a node asked us to retry
RETRIES_BEFORE_REFRESH = 5  # "retry" answers to one operation before the client also asks the master
MAX_TRY_TIMEOUT = 2.0  # a single try never waits longer than this, however often it was retried
REFRESH_INTERVAL = 0.05  # at most one table fetch per this many seconds while nothing changes
NOBLOCK = int(zmq.NOBLOCK)  # a plain int: flag arithmetic on zmq's enum costs more than the send itself
SUSPECT_POLL = 0.1  # how often to ask for a new table while operations wait on a node that timed out
LOST_POLL = 0.01  # the same for a node whose connection dropped: the master hears of its exit in milliseconds
DEFAULT_PAGE = 2000  # keys per page and node: fewer round trips, yet a page takes a node a few ms of one loop pass


def validate(key: str, value: str | None = None) -> None:
    """Raise ``InvalidKey`` or ``InvalidValue`` for input the cluster would refuse."""
    problem = check_key(key)
    if problem is not None:
        raise InvalidKey(problem)
    if value is not None:
        problem = check_value(value)
        if problem is not None:
            raise InvalidValue(problem)


class Completion(enum.Enum):
    """How one operation of ``Connection.execute`` ended."""

    OK = "ok"
    NOT_FOUND = "not_found"
    NO_REPLICA = "no_replica"  # every replica of the slot is dead: definitely not applied
    TIMED_OUT = "timed_out"  # the deadline passed: a put may or may not have been applied
    INVALID = "invalid"  # a node refused the operation as malformed
    UNWRITABLE = "unwritable"  # the primary cannot write its log (value: why): not applied


@dataclass(slots=True)
class OpResult:
    """The result of one operation: for a get the value read, and the node that served it."""

    completion: Completion = Completion.TIMED_OUT
    value: str | None = None
    node_id: int = 0
    latency: float = 0.0


@dataclass(slots=True)
class _Flight:
    node_id: int
    indices: list[int]
    sent_at: float
    expires: float


class Connection:
    """A connection to one cluster. Not thread-safe: use one per thread or process."""

    def __init__(
        self,
        master: str,
        *,
        deadline: float = 5.0,
        try_timeout: float = 0.3,
        table_cache: Path | None = None,
        on_event: Callable[[str], None] | None = None,
        recorder: HistoryRecorder | None = None,
        curve: Curve | None = None,
    ) -> None:
        self.address = master
        self.curve = curve
        self.deadline = deadline
        # The timeout of a try doubles with every earlier try of the same operation, up to MAX_TRY_TIMEOUT.
        self.try_timeouts = [min(MAX_TRY_TIMEOUT, try_timeout * 2**attempt) for attempt in range(8)]
        self.table_cache = table_cache
        self.on_event = on_event
        self.recorder = recorder
        self.client_id = random.getrandbits(62)
        self.ctx = zmq.Context()
        self.ctx.linger = 0
        self.masters = MasterLink(self.ctx, master, deadline, curve)
        self.nodes = NodeSockets(self.ctx, curve)
        self.table: RoutingTable | None = self._load_cached_table()
        self.last_refresh = 0.0
        self.next_op_id = 0
        self.next_request_id = 0

    def close(self) -> None:
        self.ctx.destroy(linger=0)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _event(self, text: str) -> None:
        if self.on_event is not None:
            self.on_event(text)

    # --- the single-operation API ---

    def put(self, key: str, value: str) -> str:
        """Store ``value`` under ``key``; return the name of the primary that acknowledged it."""
        validate(key, value)
        result = self._single(OpKind.PUT, key, value)
        return node_name(result.node_id)

    def get(self, key: str) -> tuple[str, str]:
        """Return ``(value, server name)`` for ``key``, or raise ``KeyNotFound``."""
        value, server = self.read(key)
        if value is None:
            raise KeyNotFound(key)
        return value, server

    def read(self, key: str) -> tuple[str | None, str]:
        """Return ``(value, server name)`` for ``key``; the value is None when the key is absent."""
        validate(key)
        result = self._single(OpKind.GET, key, None)
        return result.value, node_name(result.node_id)

    def delete(self, key: str) -> tuple[bool, str]:
        """Delete ``key``; return whether it held a value, and the name of the primary that acknowledged it."""
        validate(key)
        result = self._single(OpKind.DELETE, key, None)
        return result.completion == Completion.OK, node_name(result.node_id)

    def _single(self, kind: OpKind, key: str, value: str | None) -> OpResult:
        invoked = time.monotonic()
        try:
            result = self.execute([(kind, key, value)], window=1)[0]
        except ClusterUnavailable:
            self._record(kind, key, value, invoked, None)
            raise
        self._record(kind, key, value, invoked, result)
        if result.completion in (Completion.OK, Completion.NOT_FOUND):
            return result
        raise self.failure(kind, key, result)

    def failure(self, kind: OpKind, key: str, result: OpResult) -> KvclusterError:
        """The error to raise for an operation that ended neither ``OK`` nor ``NOT_FOUND``."""
        verb, completion = kind.name.lower(), result.completion
        if completion == Completion.NO_REPLICA:
            table = self._ensure_table(time.monotonic() + self.deadline)
            return NoLiveReplica(f"key {key!r}", [node_name(n) for n in table.replicas(table.slot_of(key))])
        if completion == Completion.INVALID:
            return ProtocolError(f"the cluster refused {verb} {key!r} as malformed")
        if completion == Completion.UNWRITABLE:
            return LogUnwritable(f"{node_name(result.node_id)} cannot write its log: {result.value}")
        applied = "" if kind == OpKind.GET else "; it may or may not have been applied"
        return OperationTimedOut(f"{verb} {key!r} did not complete within {self.deadline:g} s{applied}")

    def _record(self, kind: OpKind, key: str, value: str | None, invoked: float, result: OpResult | None) -> None:
        """Add the operation to the history if this connection keeps one; ``result`` is None when no master answered."""
        if self.recorder is None:
            return
        # Only a recording connection (the chaos benchmark) needs the history types, so a put or get does not load them.
        from kvcluster.check.history import Operation, Outcome  # noqa: PLC0415
        from kvcluster.check.history import OpKind as HistoryKind  # noqa: PLC0415

        # A write that failed in any way may still have reached a primary before it died.
        outcome = Outcome.FAILED if kind == OpKind.GET else Outcome.UNKNOWN
        if result is not None and result.completion in (Completion.OK, Completion.NOT_FOUND):
            found = result.completion == Completion.OK
            outcome = Outcome.OK if found or kind == OpKind.DELETE else Outcome.NOT_FOUND
            value = result.value if kind == OpKind.GET else value
        elif result is not None:
            value = None if kind == OpKind.GET else value
        op = Operation(self.client_id, HistoryKind[kind.name], key, value, invoked, time.monotonic(), outcome)
        self.recorder.record(op)

    # --- many operations in flight ---

    def execute(
        self,
        ops: Sequence[tuple[OpKind, str, str | None]],
        *,
        batch: int = 1,
        window: int = 64,
    ) -> list[OpResult]:
        """Run ``ops`` with up to ``window`` messages of up to ``batch`` operations in flight.

        Operations to the same key may run concurrently: order between them is
        not guaranteed. Each result says how its operation ended; the call
        raises only ``ClusterUnavailable`` when the master cannot be reached.
        """
        run = _Run(self, ops, batch, window)
        run.go()
        return run.results

    def _ensure_table(self, deadline: float) -> RoutingTable:
        if self.table is None:
            self.refresh_table(deadline)
        assert self.table is not None
        return self.table

    def refresh_table(self, deadline: float | None = None, *, quiet_if_unchanged: bool = False) -> RoutingTable:
        """Fetch the current table from the master, waiting at most until ``deadline``."""
        until = deadline if deadline is not None else time.monotonic() + self.deadline
        self.last_refresh = time.monotonic()
        while True:
            reply = self._ask_master(TableRequest(), until)
            if isinstance(reply, Table):
                changed = self.table is None or reply.data.version > self.table.version
                if changed:
                    self.table = RoutingTable(reply.data)
                    self._save_cached_table(reply)
                    self.nodes.drop_stale(self.table)
                assert self.table is not None
                if changed or not quiet_if_unchanged:
                    dead = ", ".join(node_name(n) for n in self.table.data.dead) or "none"
                    self._event(f"fetched table version {self.table.version} from master (dead: {dead})")
                return self.table
            if isinstance(reply, NotReady):
                self._event(f"cluster starting: {reply.registered}/{reply.expected} nodes registered")
                time.sleep(0.05)
                continue
            raise ProtocolError(f"unexpected reply from master: {type(reply).__name__}")

    def status(self) -> StatusReport:
        """Ask the master for its view of the cluster."""
        reply = self._ask_master(StatusRequest(), time.monotonic() + self.deadline)
        if not isinstance(reply, StatusReport):
            raise ProtocolError(f"unexpected reply from master: {type(reply).__name__}")
        return reply

    def drain(self, node_id: int) -> StatusReport:
        """Ask the master to move every slot off ``node_id``; answered with its view of the cluster."""
        reply = self._ask_master(Drain(node_id), time.monotonic() + self.deadline)
        if not isinstance(reply, StatusReport):
            raise ProtocolError(f"unexpected reply from master: {type(reply).__name__}")
        return reply

    def _ask_master(self, message: TableRequest | StatusRequest | Drain, until: float) -> object:
        wanted = Table if isinstance(message, TableRequest) else StatusReport
        return self.masters.ask(message, wanted, until)

    def _load_cached_table(self) -> RoutingTable | None:
        if self.table_cache is None:
            return None
        try:
            raw = self.table_cache.read_bytes()
            endpoint, _, frame = raw.partition(b"\n")
            message = decode(frame)
            if endpoint.decode(errors="replace") != self.masters.key or not isinstance(message, Table):
                return None
            return RoutingTable(message.data)
        except (OSError, ProtocolError, ValueError, KeyError):
            return None  # no usable cache: the table is fetched from the master instead

    def _save_cached_table(self, message: Table) -> None:
        if self.table_cache is None:
            return
        tmp = self.table_cache.with_suffix(".tmp")
        tmp.write_bytes(self.masters.key.encode() + b"\n" + encode(message))
        tmp.replace(self.table_cache)


class _Run:
    """One ``Connection.execute`` call: queues per node, flights, retries and the deadline."""

    def __init__(
        self, client: Connection, ops: Sequence[tuple[OpKind, str, str | None]], batch: int, window: int
    ) -> None:
        self.client = client
        self.ops = ops
        self.batch = max(1, batch)
        self.window = max(1, window)
        self.results = [OpResult() for _ in ops]
        self.first_sent = [0.0] * len(ops)
        self.attempts = [0] * len(ops)
        self.op_ids = list(range(client.next_op_id, client.next_op_id + len(ops)))
        client.next_op_id += len(ops)
        self.queues: dict[int, deque[int]] = {}
        self.delayed: deque[tuple[float, int]] = deque()
        self.flights: dict[int, _Flight] = {}
        self.slots: list[int] = []
        self.next_expiry = math.inf  # no flight expires before this
        self.suspects: set[int] = set()  # nodes that let a flight time out during this run
        self.lost: set[int] = set()  # nodes whose connection dropped: dead, most likely, any moment now
        self.remaining = len(ops)
        self.deadline = time.monotonic() + client.deadline

    def go(self) -> None:
        table = self.client._ensure_table(self.deadline)
        self.slots = [table.slot_of(key) for _, key, _ in self.ops]
        for index in range(len(self.ops)):
            self._route(index, table)
        while self.remaining:
            now = time.monotonic()
            if now >= self.deadline:
                break
            while self.delayed and self.delayed[0][0] <= now:
                self._route(self.delayed.popleft()[1], self._table())
            self._send_some(now)
            self._wait(now)
            now = time.monotonic()
            self._expire(now)
            self._watch_suspects(now)

    def _table(self) -> RoutingTable:
        assert self.client.table is not None
        return self.client.table

    def _route(self, index: int, table: RoutingTable) -> None:
        primary = table.primary(self.slots[index])
        if primary is None:
            self._finish(index, OpResult(Completion.NO_REPLICA))
            return
        self.queues.setdefault(primary, deque()).append(index)

    def _finish(self, index: int, result: OpResult) -> None:
        self.results[index] = result
        self.remaining -= 1

    def _send_some(self, now: float) -> None:
        table = self._table()
        while len(self.flights) < self.window and self.queues:
            for node_id in list(self.queues):
                queue = self.queues[node_id]
                indices = [queue.popleft() for _ in range(min(self.batch, len(queue)))]
                if not queue:
                    del self.queues[node_id]
                self._send(node_id, indices, table, now)
                if len(self.flights) >= self.window:
                    return

    def _send(self, node_id: int, indices: list[int], table: RoutingTable, now: float) -> None:
        client = self.client
        ops = []
        timeout = 0.0
        for index in indices:
            kind, key, value = self.ops[index]
            slot = self.slots[index]
            ops.append(Op(kind, key, value, slot, table.epoch(slot), self.op_ids[index]))
            if not self.first_sent[index]:
                self.first_sent[index] = now
            elif client.on_event is not None:
                client._event(f"resent {kind.name.lower()} {key!r} to {node_name(node_id)}")
            timeout = max(timeout, client.try_timeouts[min(self.attempts[index], len(client.try_timeouts) - 1)])
            self.attempts[index] += 1
        client.next_request_id += 1
        request_id = client.next_request_id
        if client.on_event is not None and len(indices) == 1 and self.attempts[indices[0]] == 1:
            kind, key, _ = self.ops[indices[0]]
            client._event(
                f"{kind.name.lower()} {key!r} -> {node_name(node_id)} (slot {ops[0].slot}, epoch {ops[0].epoch})"
            )
        # A full queue means the node is not reading: the flight then times out like any unanswered one.
        try:  # noqa: SIM105 - contextlib.suppress costs a microsecond on every send
            client.nodes.get(node_id, table).send(encode(Request(client.client_id, request_id, ops)), NOBLOCK)
        except zmq.Again:
            pass
        self.flights[request_id] = _Flight(node_id, indices, now, now + timeout)
        self.next_expiry = min(self.next_expiry, now + timeout)

    def _wait(self, now: float) -> None:
        wake = min(self.deadline, self.next_expiry)
        if self._waiting_on_suspects():
            wake = min(wake, self.client.last_refresh + (LOST_POLL if self.lost & self.suspects else SUSPECT_POLL))
        if self.delayed:
            wake = min(wake, self.delayed[0][0])
        if self.queues and len(self.flights) < self.window:
            wake = now
        replies, lost = self.client.nodes.poll(max(0, int((wake - now) * 1000)))
        for reply in replies:
            if isinstance(reply, Reply):
                self._on_reply(reply)
        for node_id in lost:
            self._lost(node_id)

    def _on_reply(self, reply: Reply) -> None:
        flight = self.flights.get(reply.request_id)
        if flight is None or len(reply.results) != len(flight.indices):
            return  # a late answer to a flight we gave up on, or a garbled one: the flight will time out and be resent
        del self.flights[reply.request_id]
        now = time.monotonic()
        refresh = False
        for index, result in zip(flight.indices, reply.results, strict=True):
            match result.status:
                case Status.OK | Status.NOT_FOUND:
                    completion = Completion.OK if result.status == Status.OK else Completion.NOT_FOUND
                    self._finish(index, OpResult(completion, result.value, reply.node_id, now - self.first_sent[index]))
                case Status.RETRY:
                    self.delayed.append((now + RETRY_DELAY, index))
                    # A node that keeps saying "retry" may be waiting for a master that is gone: ask it too.
                    refresh = refresh or self.attempts[index] >= RETRIES_BEFORE_REFRESH
                case Status.NOT_PRIMARY:
                    refresh = True
                    self.delayed.append((now, index))
                case Status.UNWRITABLE:
                    self._finish(index, OpResult(Completion.UNWRITABLE, result.value, reply.node_id))
                case _:
                    self._finish(index, OpResult(Completion.INVALID, None, reply.node_id))
        if refresh:
            self.client._event(f"{node_name(flight.node_id)} cannot serve now; refreshing table")
            self._refresh()

    def _expire(self, now: float) -> None:
        if now < self.next_expiry:
            return  # nothing can have expired: spares a scan of every flight per reply
        expired = [rid for rid, f in self.flights.items() if f.expires <= now]
        self.next_expiry = min((f.expires for f in self.flights.values() if f.expires > now), default=math.inf)
        if not expired:
            return
        for rid in expired:
            flight = self.flights.pop(rid)
            self.suspects.add(flight.node_id)
            waited = (now - flight.sent_at) * 1000
            self.client._event(f"{node_name(flight.node_id)} did not answer within {waited:.0f} ms")
            self.delayed.extend((now, index) for index in flight.indices)
        self._refresh()

    def _lost(self, node_id: int) -> None:
        """The connection to ``node_id`` dropped or was refused: its flights will not be answered, so resend them
        and ask the master now (it may already have declared the node dead) and often until it does."""
        waiting = [rid for rid, f in self.flights.items() if f.node_id == node_id]
        if not waiting:
            return
        now = time.monotonic()
        self.client._event(f"lost the connection to {node_name(node_id)}")
        for rid in waiting:
            self.delayed.extend((now, index) for index in self.flights.pop(rid).indices)
        self.suspects.add(node_id)
        self.lost.add(node_id)
        self.client.refresh_table(self.deadline, quiet_if_unchanged=True)

    def _refresh(self) -> None:
        if time.monotonic() - self.client.last_refresh < REFRESH_INTERVAL:
            return
        self.client.refresh_table(self.deadline)

    def _waiting_on_suspects(self) -> bool:
        return bool(self.suspects) and any(f.node_id in self.suspects for f in self.flights.values())

    def _watch_suspects(self, now: float) -> None:
        """While flights wait on a node that already timed out once, ask the master often whether it died.

        A resend to a node that is only slow must wait out a growing timeout,
        but once the master declares the node dead its operations can go to
        the new primary at once instead of when their flights expire.
        """
        poll = LOST_POLL if self.lost & self.suspects else SUSPECT_POLL
        if now - self.client.last_refresh < poll or not self._waiting_on_suspects():
            return
        version = self._table().version
        table = self.client.refresh_table(self.deadline, quiet_if_unchanged=True)
        if table.version == version:
            return
        for rid in [rid for rid, f in self.flights.items() if table.is_dead(f.node_id)]:
            flight = self.flights.pop(rid)
            self.client._event(f"{node_name(flight.node_id)} was declared dead; resending its operations")
            self.delayed.extend((now, index) for index in flight.indices)
