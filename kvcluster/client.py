"""The connection to a cluster: the ZeroMQ driver of ``core.client.ClientCore``.

A ``Connection`` owns the sockets (a DEALER per master and per node, a
monitor per node socket), the clock and the poller; ``ClientCore`` decides
everything else (routing, retries, suspects, table fetches, deadlines; see
its module). The table is loaded from a cache file when there is one.

A connection may be shared by threads. Whichever thread waits for an answer
while no other does drives the core (polls, feeds it what arrives, carries out
its actions); the others submit their operations and wait to be told they are
done, and a submission wakes the driving thread through an inproc socket. So
operations from several threads to one node, like those of one ``execute``,
travel together in one request while earlier ones are in flight.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import zmq

from kvcluster.core.client import REFRESH_INTERVAL, RETRIES_BEFORE_REFRESH, RETRY_DELAY, ClientCore
from kvcluster.core.client_masters import AskMaster
from kvcluster.core.client_ops import (
    DEFAULT_DEADLINE,
    DEFAULT_TRY_TIMEOUT,
    ClientAction,
    ClientConfig,
    Complete,
    Completion,
    Lane,
    NewTable,
    Note,
    OpResult,
    PendingOp,
    SendRequest,
    Spec,
    WakeAt,
)
from kvcluster.core.placement import RoutingTable, node_name
from kvcluster.core.protocol import (
    Drain,
    Message,
    Reply,
    StatusReport,
    StatusRequest,
    Table,
    check_key,
    check_value,
    decode,
    encode,
)
from kvcluster.core.wire import OpKind
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

__all__ = [
    "DEFAULT_PAGE",
    "NOBLOCK",
    "REFRESH_INTERVAL",
    "RETRIES_BEFORE_REFRESH",
    "RETRY_DELAY",
    "Completion",
    "Connection",
    "OpResult",
    "validate",
]

NOBLOCK = int(zmq.NOBLOCK)  # a plain int: flag arithmetic on zmq's enum costs more than the send itself
DEFAULT_PAGE = 2000  # keys per page and node: fewer round trips, yet a page takes a node a few ms of one loop pass
SHARED_BATCH = 256  # single operations of any thread that wait for the same node travel in one request of up to this
SHARED_DEPTH = 1  # requests of single operations in flight per node; the next ones queue and travel together
UNLIMITED = 1 << 30
TABLE_WAIT_POLL = 0.01  # seconds between looks at the table of a caller that waits for one while another drives
IDLE_POLL = 1.0  # seconds a driver polls at most when the core names no wake-up (it always does while busy)


def validate(key: str, value: str | None = None) -> None:
    """Raise ``InvalidKey`` or ``InvalidValue`` for input the cluster would refuse."""
    problem = check_key(key)
    if problem is not None:
        raise InvalidKey(problem)
    if value is not None:
        problem = check_value(value)
        if problem is not None:
            raise InvalidValue(problem)


class _Call:
    """What one caller waits for: the results of its operations, in order, and the event that wakes it."""

    __slots__ = ("ops", "remaining", "wake")

    def __init__(self, count: int) -> None:
        self.ops: list[PendingOp] = []
        self.remaining = count
        # Set when its operations are done, or when it should drive; made only once its caller has to wait.
        self.wake: threading.Event | None = None


class Connection:
    """A connection to one cluster; threads may share it."""

    def __init__(
        self,
        master: str,
        *,
        deadline: float = DEFAULT_DEADLINE,
        try_timeout: float = DEFAULT_TRY_TIMEOUT,
        table_cache: Path | None = None,
        on_event: Callable[[str], None] | None = None,
        recorder: HistoryRecorder | None = None,
        curve: Curve | None = None,
    ) -> None:
        self.address = master
        self.curve = curve
        self.deadline = deadline
        self.table_cache = table_cache
        self.on_event = on_event
        self.recorder = recorder
        self.client_id = random.getrandbits(62)
        self.ctx = zmq.Context()
        self.ctx.linger = 0
        self.masters = MasterLink(self.ctx, master, deadline, curve)
        self.nodes = NodeSockets(self.ctx, curve)
        for sock in self.masters.sockets:
            self.nodes.watch(sock)
        config = ClientConfig(deadline, try_timeout, notes=on_event is not None)
        self.core = ClientCore(self.client_id, len(self.masters.sockets), config, self._load_cached_table())
        self.core.wall_offset = time.time() - time.monotonic()
        self.try_timeouts = self.core.try_timeouts
        self.shared = Lane(SHARED_BATCH, UNLIMITED, SHARED_DEPTH)
        self.wake_at = float("inf")
        # One thread drives at a time; ``lock`` guards the core, ``driver`` and ``waiting``.
        self.lock = threading.Lock()
        self.driver: int | None = None  # the thread driving the core, if one does
        # Callers waiting while another thread drives, and what they wait for: one takes over when it stops.
        self.waiting: dict[_Call, Callable[[], bool]] = {}
        self.poke_in = self.ctx.socket(zmq.PAIR)
        self.poke_out = self.ctx.socket(zmq.PAIR)
        address = f"inproc://poke-{id(self)}-{next(_POKES)}"
        self.poke_out.bind(address)
        self.poke_in.connect(address)
        self.nodes.watch(self.poke_out)

    def close(self) -> None:
        self.ctx.destroy(linger=0)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def table(self) -> RoutingTable | None:
        return self.core.table

    @property
    def last_refresh(self) -> float:
        return self.core.last_refresh

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
        result = self._run([(kind, key, value)], self.shared)[0]
        self._record(kind, key, value, invoked, result)
        if result.completion in (Completion.OK, Completion.NOT_FOUND):
            return result
        raise self.failure(kind, key, result)

    def failure(self, kind: OpKind, key: str, result: OpResult) -> KvclusterError:
        """The error to raise for an operation that ended neither ``OK`` nor ``NOT_FOUND``."""
        verb, completion = kind.name.lower(), result.completion
        if completion == Completion.UNAVAILABLE:
            self.masters.check_handshakes(final=True)
            return ClusterUnavailable(self.address, self.deadline)
        if completion == Completion.NO_REPLICA:
            table = self._ensure_table(time.monotonic() + self.deadline)
            return NoLiveReplica(f"key {key!r}", [node_name(n) for n in table.replicas(table.slot_of(key))])
        if completion == Completion.INVALID:
            return ProtocolError(f"the cluster refused {verb} {key!r} as malformed")
        if completion == Completion.UNWRITABLE:
            return LogUnwritable(f"{node_name(result.node_id)} cannot write its log: {result.value}")
        applied = "" if kind == OpKind.GET else "; it may or may not have been applied"
        return OperationTimedOut(f"{verb} {key!r} did not complete within {self.deadline:g} s{applied}")

    def _record(self, kind: OpKind, key: str, value: str | None, invoked: float, result: OpResult) -> None:
        """Add the operation to the history if this connection keeps one."""
        if self.recorder is not None:
            # Only a recording connection (the chaos benchmark) needs the history types: a put or get does not.
            from kvcluster.check.history import history_operation  # noqa: PLC0415

            op = history_operation(self.client_id, kind, key, value, invoked, time.monotonic(), result)
            self.recorder.record(op)

    # --- many operations in flight ---

    def execute(self, ops: Sequence[Spec], *, batch: int = 1, window: int = 64) -> list[OpResult]:
        """Run ``ops`` with up to ``window`` messages of up to ``batch`` operations in flight.

        Operations to the same key may run concurrently: order between them is
        not guaranteed. Each result says how its operation ended; the call
        raises only ``ClusterUnavailable`` when no master gave a table in time.
        """
        window = max(1, window)
        results = self._run(ops, Lane(max(1, batch), window, window))
        if any(r.completion == Completion.UNAVAILABLE for r in results):
            self.masters.check_handshakes(final=True)
            raise ClusterUnavailable(self.address, self.deadline)
        return results

    def _run(self, specs: Sequence[Spec], lane: Lane) -> list[OpResult]:
        call = _Call(len(specs))
        with self.lock:
            core = self.core
            call.ops = core.submit(time.monotonic(), lane, specs, itertools.repeat(call))
            if self.driver is not None and any(isinstance(a, SendRequest | AskMaster) for a in core.outbox):
                self.poke_in.send(b"")  # the driving thread is polling: it sends these for us
        self._wait_until(call, lambda: not call.remaining, None)
        return [cast("OpResult", op.result) for op in call.ops]

    def _wait_until(self, call: _Call, done: Callable[[], bool], until: float | None) -> None:
        """Wait until ``done()`` or ``until``, driving the core whenever no other thread does."""
        with self._driving(call, done, until) as driving:
            if driving:
                self._drive(done, until)

    @contextlib.contextmanager
    def _driving(self, call: _Call, done: Callable[[], bool], until: float | None) -> Iterator[bool]:
        """Become the thread that drives (yields True, ``lock`` held), or wait until ``done()`` (yields False)."""
        me = threading.get_ident()
        while True:
            self.lock.acquire()
            now = time.monotonic()
            if done() or (until is not None and now >= until):
                self.lock.release()
                yield False
                return
            if self.driver is None or self.driver == me:
                break  # the lock stays held: the driving starts with it
            wake = call.wake = call.wake or threading.Event()
            wake.clear()
            self.waiting[call] = done
            self.lock.release()
            # A caller that waits for a table polls now and then: a table that comes does not wake it.
            wake.wait(None if until is None else min(until - now, TABLE_WAIT_POLL))
            with self.lock:
                self.waiting.pop(call, None)
        mine = self.driver is None  # else this thread holds the sockets already (``exclusive``)
        self.driver = me
        try:
            yield True
        finally:
            if mine:
                self.driver = None
                self._hand_over()
            self.lock.release()

    def _hand_over(self) -> None:
        """Wake a caller that still waits: it drives from now on."""
        for waiter, done in self.waiting.items():
            if not done() and waiter.wake is not None:
                waiter.wake.set()
                return

    def _drive(self, done: Callable[[], bool], until: float | None) -> None:
        core = self.core
        while True:
            self._carry_out(core.take())
            if done():
                return
            now = time.monotonic()
            if until is not None and now >= until:
                return
            if core.refreshing:
                self.masters.check_handshakes(final=False)
            wake = min(self.wake_at, now + IDLE_POLL) if until is None else min(self.wake_at, until)
            self.lock.release()
            try:
                messages, lost, ready = self.nodes.poll(max(0, int((wake - now) * 1000)) + (wake > now))
            finally:
                self.lock.acquire()
            now = time.monotonic()
            if messages:
                core.on_replies(now, [m for m in messages if isinstance(m, Reply)])
            for node_id in lost:
                core.on_lost(now, node_id)
            for sock in ready:
                self._read_other(now, sock)
            if now >= self.wake_at:
                core.on_timer(now)

    def _read_other(self, now: float, sock: zmq.Socket[bytes]) -> None:
        if sock is self.poke_out:
            with contextlib.suppress(zmq.Again):
                while True:
                    sock.recv(NOBLOCK)
            self.core.on_timer(now)  # sends what other threads submitted
            return
        index = self.masters.sockets.index(sock)
        for message in self.masters.receive(index):
            self.core.on_master(now, index, message)

    def _carry_out(self, actions: list[ClientAction]) -> None:
        for action in actions:
            if isinstance(action, Complete):
                for op in action.ops:
                    call = cast("_Call", op.tag)
                    call.remaining -= 1
                    if not call.remaining and call.wake is not None:
                        call.wake.set()
            elif isinstance(action, SendRequest):
                # A full queue means the node is not reading: the flight then times out like any unanswered one.
                try:  # noqa: SIM105 - contextlib.suppress costs a microsecond on every send
                    self.nodes.get(action.node_id, action.endpoint).send(encode(action.request), NOBLOCK)
                except zmq.Again:
                    pass
            elif isinstance(action, WakeAt):
                self.wake_at = action.at
            elif isinstance(action, AskMaster):
                self.masters.send(action)
            elif isinstance(action, NewTable):
                assert self.core.table is not None
                self.nodes.drop_stale(self.core.table)
                self._save_cached_table(action.message)
            elif isinstance(action, Note):
                self._event(action.text)

    # --- the table and the master ---

    def _ensure_table(self, deadline: float) -> RoutingTable:
        if self.core.table is None:
            self.refresh_table(deadline)
        assert self.core.table is not None
        return self.core.table

    def refresh_table(self, deadline: float | None = None, *, quiet_if_unchanged: bool = False) -> RoutingTable:
        """Fetch the current table from the master, waiting at most until ``deadline``."""
        until = deadline if deadline is not None else time.monotonic() + self.deadline
        core = self.core
        with self.lock:
            version = core.table.version if core.table is not None else -1
            core.fetch_table(time.monotonic())
        self._wait_until(_Call(0), lambda: not core.refreshing, until)
        with self.lock:
            if core.refreshing or core.table is None:
                core.stop_fetching()
                self.masters.check_handshakes(final=True)
                raise ClusterUnavailable(self.address, self.deadline)
            table = core.table
        if table.version == version and not quiet_if_unchanged:
            dead = ", ".join(node_name(n) for n in table.data.dead) or "none"
            self._event(f"fetched table version {table.version} from master (dead: {dead})")
        return table

    def status(self) -> StatusReport:
        """Ask the master for its view of the cluster."""
        return self._ask_master(StatusRequest())

    def drain(self, node_id: int) -> StatusReport:
        """Ask the master to move every slot off ``node_id``; answered with its view of the cluster."""
        return self._ask_master(Drain(node_id))

    def _ask_master(self, message: Message) -> StatusReport:
        with self.exclusive():
            reply = self.masters.ask(message, StatusReport, time.monotonic() + self.deadline)
        if not isinstance(reply, StatusReport):
            raise ProtocolError(f"unexpected reply from master: {type(reply).__name__}")
        return reply

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Use the sockets directly (a scan, a question to the master) while no thread drives the core."""
        with self._driving(_Call(0), lambda: False, None):
            self.lock.release()  # the sockets are this thread's; the core is locked only while it is used
            try:
                yield
            finally:
                self.lock.acquire()

    def poll_nodes(self, timeout_ms: int) -> list[Message]:
        """Within ``exclusive``: wait for the nodes' messages; replies to operations go to the core on the way."""
        messages, lost, ready = self.nodes.poll(timeout_ms)
        now = time.monotonic()
        with self.lock:
            self.core.on_replies(now, [m for m in messages if isinstance(m, Reply)])
            for node_id in lost:
                self.core.on_lost(now, node_id)
            for sock in ready:
                self._read_other(now, sock)
            self._carry_out(self.core.take())
        return [m for m in messages if not isinstance(m, Reply)]

    def _load_cached_table(self) -> RoutingTable | None:
        if self.table_cache is None:
            return None
        try:
            raw = self.table_cache.read_bytes()
            endpoint, _, frame = raw.partition(b"\n")
            message = decode(frame, Table)
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


_POKES = itertools.count()
