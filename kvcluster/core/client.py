"""The client's protocol logic, sans I/O: routing, retries, suspects, table refreshes and deadlines.

``ClientCore`` takes events with the time they happened (operations
submitted, a node's ``Reply``, a master's answer, a lost connection, a timer)
and returns actions (``SendRequest``, ``AskMaster``, ``WakeAt``,
``Complete``, ``NewTable``, ``Note``). The ZeroMQ driver (``client.py``) and
the simulator (``sim/clients.py``) both drive it, so every rule below is
written once:

- an operation goes to its slot's primary in the newest table, with the
  slot's epoch and an op id unique to this client; every resend reuses the
  op id, so a node that applied it already answers without applying it again;
- a try waits ``try_timeout * 2**attempt`` (at most ``MAX_TRY_TIMEOUT``); when
  it expires the node becomes a suspect, and its operations wait for a new
  table before they are resent. While a flight waits on a suspect the master
  is asked every ``SUSPECT_POLL`` (``LOST_POLL`` once the connection dropped),
  and a table that names a node dead resends its flights at once;
- ``NOT_PRIMARY``: wait for a new table, then resend; ``RETRY``: resend after
  ``RETRY_DELAY``, and from the ``RETRIES_BEFORE_REFRESH``-th try on ask for
  a new table too. Table fetches are rate-limited to one per
  ``REFRESH_INTERVAL``; operations that need one wait for it;
- at its deadline an operation completes ``TIMED_OUT`` (``UNAVAILABLE`` when
  no table was ever had): a write may or may not have been applied.

Operations belong to a ``Lane``, which bounds the operations per request and
the requests in flight (in all and per node). Operations queued for the same
node travel together in one request, whichever lane or caller they came from.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Iterable

from kvcluster.core.client_masters import LeaderSeeker
from kvcluster.core.client_ops import (
    ClientAction,
    ClientConfig,
    Complete,
    Completion,
    Flight,
    Lane,
    NewTable,
    Note,
    OpResult,
    PendingOp,
    SendRequest,
    Spec,
    Submission,
    WakeAt,
)
from kvcluster.core.placement import RoutingTable, node_name
from kvcluster.core.protocol import Message, NotReady, Reply, Request, Table, TableRequest
from kvcluster.core.wire import Op, Status

RETRY_DELAY = 0.01  # seconds before resending an operation a node asked us to retry
RETRIES_BEFORE_REFRESH = 5  # "retry" answers to one operation before the client also asks the master
MAX_TRY_TIMEOUT = 2.0  # a single try never waits longer than this, however often it was retried
REFRESH_INTERVAL = 0.05  # at most one table fetch per this many seconds
SUSPECT_POLL = 0.1  # how often to ask for a new table while operations wait on a node that timed out
LOST_POLL = 0.01  # the same for a node whose connection dropped: the master hears of its exit in milliseconds
TRY_DOUBLINGS = 8  # a try timeout doubles at most this many times (it hits MAX_TRY_TIMEOUT long before)


class ClientCore:
    """Every operation of one client in flight, and what the client knows of the cluster."""

    def __init__(self, client_id: int, masters: int, config: ClientConfig, table: RoutingTable | None = None) -> None:
        self.client_id = client_id
        self.config = config
        self.try_timeouts = [min(MAX_TRY_TIMEOUT, config.try_timeout * 2**n) for n in range(TRY_DOUBLINGS)]
        self.wall_offset = 0.0  # wall-clock time minus the driver's clock: deadlines travel as wall-clock time
        self.table = table
        self.seeker = LeaderSeeker(masters)
        self.outbox: list[ClientAction] = []
        self.completed: list[PendingOp] = []  # ends one ``Complete`` action, at the end of the event
        self.next_op_id = 0
        self.next_request_id = 0
        self.queues: dict[int, deque[PendingOp]] = {}
        self.delayed: list[tuple[float, int, PendingOp]] = []  # (when, tie-breaker, op): resends after RETRY
        self.deadlines: deque[Submission] = deque()  # in deadline order, as time never goes back
        self.order = itertools.count()
        self.unrouted: list[PendingOp] = []  # operations that wait for a new table
        self.flights: dict[int, Flight] = {}
        self.next_expiry = math.inf  # no flight expires before this
        self.suspects: set[int] = set()  # nodes that let a flight time out, until they answer again
        self.lost: set[int] = set()  # nodes whose connection dropped, until they answer again
        self.last_refresh = -math.inf
        self.refresh_due = math.inf  # a table is wanted, as soon as the rate limit allows
        self.refreshing = False
        self.fetch_asked = False  # the driver wants a table even though no operation waits for one
        self.open = 0  # operations submitted and not completed yet
        self.woken_at = math.inf

    def take(self) -> list[ClientAction]:
        out, self.outbox = self.outbox, []
        return out

    # --- events ---

    def submit(self, now: float, lane: Lane, specs: Iterable[Spec], tags: Iterable[object] = ()) -> list[PendingOp]:
        """Start ``specs`` in ``lane``, each with the configured deadline; a ``Complete`` will name each."""
        deadline = now + self.config.deadline
        tag_of = iter(tags)
        ops: list[PendingOp] = []
        submission = Submission(deadline, ops, 0)
        op_id = self.next_op_id
        for kind, key, value in specs:
            ops.append(PendingOp(kind, key, value, op_id, lane, deadline, submission, next(tag_of, None)))
            op_id += 1
        self.next_op_id = op_id
        submission.remaining = len(ops)
        self.deadlines.append(submission)
        self.open += len(ops)
        if self.table is None:
            self.unrouted.extend(ops)
            self.want_table(now, urgent=True)
        else:
            for op in ops:
                self._route(op, now)
        self._pump(now)
        return ops

    def on_reply(self, now: float, reply: Reply) -> None:
        self._take_reply(now, reply)
        self._pump(now)

    def on_replies(self, now: float, replies: Iterable[Reply]) -> None:
        """Several replies that arrived together: one pass of sends and timers after all of them."""
        for reply in replies:
            self._take_reply(now, reply)
        self._pump(now)

    def _take_reply(self, now: float, reply: Reply) -> None:
        flight = self.flights.get(reply.request_id)
        if flight is None or len(reply.results) != len(flight.ops):
            return  # a late answer to a flight given up on, or a garbled one: the flight times out and is resent
        self._land(reply.request_id)
        self.suspects.discard(reply.node_id)
        self.lost.discard(reply.node_id)
        refresh = False
        for op, result in zip(flight.ops, reply.results, strict=True):
            if op.done:
                continue
            match result.status:
                case Status.OK | Status.NOT_FOUND:
                    completion = Completion.OK if result.status == Status.OK else Completion.NOT_FOUND
                    self._complete(op, OpResult(completion, result.value, reply.node_id, now - op.first_sent))
                case Status.RETRY:
                    heapq.heappush(self.delayed, (now + RETRY_DELAY, next(self.order), op))
                    # A node that keeps saying "retry" may be waiting for a master that is gone: ask it too.
                    refresh = refresh or op.attempts >= RETRIES_BEFORE_REFRESH
                case Status.NOT_PRIMARY:
                    refresh = True
                    self.unrouted.append(op)
                case Status.UNWRITABLE:
                    self._complete(op, OpResult(Completion.UNWRITABLE, result.value, reply.node_id))
                case _:
                    self._complete(op, OpResult(Completion.INVALID, None, reply.node_id))
        if refresh:
            self._note(f"{node_name(flight.node_id)} cannot serve now; refreshing table")
            self.want_table(now)

    def on_master(self, now: float, index: int, message: Message) -> None:
        """An answer from master ``index`` (0-based)."""
        answer, ask = self.seeker.on_answer(now, index, message)
        if ask is not None:
            self.outbox.append(ask)
        if isinstance(answer, Table):
            self._on_table(now, answer)
        elif isinstance(answer, NotReady):
            self._note(f"cluster starting: {answer.registered}/{answer.expected} nodes registered")
        self._pump(now)

    def on_lost(self, now: float, node_id: int) -> None:
        """The connection to ``node_id`` dropped or was refused: its flights will not be answered.

        Their operations wait for a table fetched now (the master may have declared the node dead
        already), and the master is asked often until it does.
        """
        waiting = [rid for rid, f in self.flights.items() if f.node_id == node_id]
        if not waiting:
            return
        self._note(f"lost the connection to {node_name(node_id)}")
        for rid in waiting:
            self.unrouted.extend(self._land(rid).ops)
        self.suspects.add(node_id)
        self.lost.add(node_id)
        self.want_table(now, urgent=True)
        self._pump(now)

    def on_timer(self, now: float) -> None:
        ask = self.seeker.on_timer(now)
        if ask is not None:
            self.outbox.append(ask)
        self._pump(now)

    def want_table(self, now: float, *, urgent: bool = False) -> None:
        """Fetch a table: at once if ``urgent``, else as soon as the rate limit allows."""
        if self.refreshing:
            return
        due = now if urgent else max(now, self.last_refresh + REFRESH_INTERVAL)
        self.refresh_due = min(self.refresh_due, due)

    def fetch_table(self, now: float) -> None:
        """Fetch a table now, whether or not an operation needs one; ``refreshing`` is False once it came."""
        self.fetch_asked = True
        self.want_table(now, urgent=True)
        self._pump(now)

    def stop_fetching(self) -> None:
        """The driver gave up waiting for the table ``fetch_table`` asked for."""
        self.fetch_asked = False
        if self.refreshing and not self.open:
            self.refreshing = False
            self.seeker.cancel()

    def new_request_id(self) -> int:
        self.next_request_id += 1
        return self.next_request_id

    # --- the table ---

    def _on_table(self, now: float, message: Table) -> None:
        self.refreshing = self.fetch_asked = False
        self.last_refresh = now  # the rate limit and the suspect poll count from the newest answer
        old = self.table
        if old is None or message.data.version > old.version:
            self.table = table = RoutingTable(message.data)
            self.outbox.append(NewTable(message))
            dead = ", ".join(node_name(n) for n in table.data.dead) or "none"
            self._note(f"fetched table version {table.version} from master (dead: {dead})")
            for rid in [rid for rid, f in self.flights.items() if table.is_dead(f.node_id)]:
                self._note(f"{node_name(self.flights[rid].node_id)} was declared dead; resending its operations")
                self.unrouted.extend(self._land(rid).ops)
        waiting, self.unrouted = self.unrouted, []
        for op in waiting:
            self._route(op, now)

    def _start_refresh(self, now: float) -> None:
        self.refresh_due = math.inf
        self.refreshing = True
        self.last_refresh = now
        self.outbox.append(self.seeker.ask(now, TableRequest()))

    # --- routing and sending ---

    def _route(self, op: PendingOp, now: float) -> None:
        if op.done:
            return
        table = self.table
        assert table is not None
        if op.slot < 0:
            op.slot = table.slot_of(op.key)
        primary = table.primary(op.slot)
        if primary is None:
            self._complete(op, OpResult(Completion.NO_REPLICA, latency=now - op.first_sent if op.first_sent else 0.0))
            return
        queue = self.queues.get(primary)
        if queue is None:
            queue = self.queues[primary] = deque()
        queue.append(op)

    def _send_queued(self, now: float) -> None:
        """Send what the lanes' limits allow, a request per node in turn, so that every node gets its share."""
        sending = list(self.queues)
        while sending:
            still = []
            for node_id in sending:
                queue = self.queues[node_id]
                ops, lanes = self._take_batch(node_id, queue)
                if ops:
                    self._send(node_id, ops, lanes, now)
                if not queue:
                    del self.queues[node_id]
                elif ops:
                    still.append(node_id)
            sending = still

    def _take_batch(self, node_id: int, queue: deque[PendingOp]) -> tuple[list[PendingOp], list[Lane]]:
        """The operations at the head of ``queue`` that may go to ``node_id`` now, in one request, and their lanes."""
        ops: list[PendingOp] = []
        limit = math.inf
        lanes: list[Lane] = []
        current = None  # the lane of the previous operation: consecutive ones mostly share it
        while queue:
            op = queue[0]
            if op.done:
                queue.popleft()
                continue
            lane = op.lane
            if lane is not current:
                if lane not in lanes:
                    if not lane.may_send(node_id):
                        break  # this lane's limits are reached: its operations wait, and those behind them too
                    lanes.append(lane)
                current = lane
                limit = min(limit, lane.batch)
            if len(ops) >= limit:
                break
            ops.append(queue.popleft())
        return ops, lanes

    def _send(self, node_id: int, ops: list[PendingOp], lanes: list[Lane], now: float) -> None:
        table = self.table
        assert table is not None
        timeout = 0.0
        wire = []
        for op in ops:
            wire.append(Op(op.kind, op.key, op.value, op.slot, table.epoch(op.slot), op.op_id))
            if not op.first_sent:
                op.first_sent = now
                if self.config.notes and len(ops) == 1:
                    where = f"slot {op.slot}, epoch {table.epoch(op.slot)}"
                    self._note(f"{op.kind.name.lower()} {op.key!r} -> {node_name(node_id)} ({where})")
            elif self.config.notes:
                self._note(f"resent {op.kind.name.lower()} {op.key!r} to {node_name(node_id)}")
            timeout = max(timeout, self.try_timeouts[min(op.attempts, TRY_DOUBLINGS - 1)])
            op.attempts += 1
        deadline = max(op.deadline for op in ops) + self.wall_offset
        request_id = self.new_request_id()
        self.outbox.append(
            SendRequest(node_id, table.endpoint(node_id), Request(self.client_id, request_id, wire, deadline))
        )
        for lane in lanes:
            lane.count(node_id, 1)
        self.flights[request_id] = Flight(node_id, ops, lanes, now, now + timeout)
        self.next_expiry = min(self.next_expiry, now + timeout)

    def _land(self, request_id: int) -> Flight:
        """Take a flight off the books: answered, expired, or its node is gone."""
        flight = self.flights.pop(request_id)
        for lane in flight.lanes:
            lane.count(flight.node_id, -1)
        return flight

    def _complete(self, op: PendingOp, result: OpResult) -> None:
        op.done = True
        self.open -= 1
        op.submission.remaining -= 1
        op.result = result
        self.completed.append(op)

    def _note(self, text: str) -> None:
        if self.config.notes:
            self.outbox.append(Note(text))

    # --- the passage of time ---

    def _pump(self, now: float) -> None:
        """Everything due by ``now``: deadlines, expired tries, resends, table fetches, sends; then the next wake-up."""
        self._expire_deadlines(now)
        self._expire_flights(now)
        self._watch_suspects(now)
        if not self.open and not self.fetch_asked and (self.refreshing or self.refresh_due < math.inf):
            self.refreshing = False  # nobody waits for a table any more
            self.refresh_due = math.inf
            self.seeker.cancel()
        if self.refresh_due <= now and not self.refreshing:
            self._start_refresh(now)
        if not self.refreshing and self.refresh_due == math.inf and self.unrouted and self.table is not None:
            waiting, self.unrouted = self.unrouted, []  # no fetch is due any more: resend with the table at hand
            for op in waiting:
                self._route(op, now)
        while self.delayed and self.delayed[0][0] <= now:
            self._route(heapq.heappop(self.delayed)[2], now)
        self._send_queued(now)
        if self.completed:
            self.outbox.append(Complete(self.completed))
            self.completed = []
        self._schedule()

    def _expire_deadlines(self, now: float) -> None:
        deadlines = self.deadlines
        while deadlines and (not deadlines[0].remaining or deadlines[0].deadline <= now):
            for op in deadlines.popleft().ops:
                if not op.done:
                    completion = Completion.TIMED_OUT if self.table is not None else Completion.UNAVAILABLE
                    self._complete(op, OpResult(completion, latency=now - op.first_sent if op.first_sent else 0.0))

    def _expire_flights(self, now: float) -> None:
        if now < self.next_expiry:
            return  # nothing can have expired: spares a scan of every flight per reply
        expired = [rid for rid, f in self.flights.items() if f.expires <= now]
        self.next_expiry = min((f.expires for f in self.flights.values() if f.expires > now), default=math.inf)
        for rid in expired:
            flight = self._land(rid)
            self.suspects.add(flight.node_id)
            self._note(f"{node_name(flight.node_id)} did not answer within {(now - flight.sent_at) * 1000:.0f} ms")
            self.unrouted.extend(op for op in flight.ops if not op.done)
        if self.unrouted:
            self.want_table(now)

    def _suspect_poll_at(self) -> float:
        """When to ask the master whether a suspect died; never while no flight waits on a suspect."""
        if not self.suspects or not any(f.node_id in self.suspects for f in self.flights.values()):
            return math.inf
        return self.last_refresh + (LOST_POLL if self.lost & self.suspects else SUSPECT_POLL)

    def _watch_suspects(self, now: float) -> None:
        """While flights wait on a node that already timed out once, ask the master often whether it died.

        A resend to a node that is only slow must wait out a growing timeout,
        but once the master declares the node dead its operations go to the
        new primary at once instead of when their flights expire.
        """
        if not self.refreshing and self._suspect_poll_at() <= now:
            self.refresh_due = now

    def _schedule(self) -> None:
        wake = min(self.next_expiry, self.seeker.next_wake())
        if self.deadlines:
            wake = min(wake, self.deadlines[0].deadline)
        if self.delayed:
            wake = min(wake, self.delayed[0][0])
        if not self.refreshing:
            wake = min(wake, self.refresh_due, self._suspect_poll_at())
        if wake != self.woken_at:
            self.woken_at = wake
            self.outbox.append(WakeAt(wake))
