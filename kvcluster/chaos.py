"""Chaos runs: nodes killed and paused under concurrent load, the history checked for linearizability.

``run_chaos`` starts a cluster, runs client processes that put and get on a
few keys (so operations on one key overlap), and meanwhile injects faults on
a schedule drawn from ``random.Random(seed)``. Every client records its
operations with invoke and complete times (``time.monotonic``, one clock for
every process on Linux); the merged history is checked with
``linearizability.check``. The same seed gives the same schedule of fault
kinds, victims and delays, so a failing run can be replayed with its seed.

Faults:

* ``pause``: SIGSTOP a node for well over the failure detector's
  ``dead_after``, then SIGCONT. The master has declared it dead meanwhile;
  the resumed node must neither serve a stale read nor acknowledge a write,
  and it exits once the master fences it.
* ``kill``: SIGKILL a node.
* ``double-kill``: SIGKILL two nodes less than 0.3 s apart, so the second dies
  while the first one's failover is under way.
* ``stall``: SIGSTOP a node for about its lease, less than ``dead_after``,
  then SIGCONT: its lease may run out while it is stopped, and it must serve
  again without being declared dead.

Every node is the primary of some slots, so every victim is a primary. The
schedule never makes a slot lose all its replicas: a set of dead nodes (a
paused or stalled node counts as dead, since the master may declare it so)
is safe when no slot has every replica in it. The first fault that takes a
node for good is a pause and the second a kill, so every run with room for
two such faults exercises both; when no safe fault remains, injection stops
and the load runs on to the end.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import json
import math
import os
import random
import secrets
import shutil
import signal
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kvcluster.errors import KvclusterError, UsageError
from kvcluster.history import HistoryRecorder, Operation, OpKind, Outcome
from kvcluster.placement import NUM_SLOTS, node_name, replicas_for, slot_of
from kvcluster.protocol import Timing
from kvcluster.workers import ClientPool, Worker, interrupt_on_sigterm

if TYPE_CHECKING:
    from kvcluster.client import Client
    from kvcluster.supervisor import ClusterState, ProcessInfo, Supervisor


class FaultKind(enum.StrEnum):
    """What a fault does to its victims."""

    PAUSE = "pause"
    KILL = "kill"
    DOUBLE_KILL = "double-kill"
    STALL = "stall"


FATAL_KINDS = (FaultKind.PAUSE, FaultKind.KILL, FaultKind.DOUBLE_KILL)  # the victim never serves again

CLIENT_DEADLINE = 3.0  # seconds one client operation may take, retries included
STALL_SHARE = 0.3  # chance that the next fault is a stall (when one is safe)
DOUBLE_KILL_GAP = (0.05, 0.25)  # seconds between the two kills of a double kill
FAULT_TAIL = 3.0  # no fault starts this close to the end, so its recovery is observed
REAP_INTERVAL = 0.05
# The load must not starve the cluster it tests: a node that misses heartbeats
# for want of CPU is declared dead, a fault nobody scheduled.
CLIENT_NICENESS = 10
COLLECT_GRACE = 60.0  # after the run, how long the clients may take to hand over their histories
HISTORY_FILE = "history.jsonl"  # in the state directory, after a run that is not linearizable


# --- results ---


@dataclass
class Fault:
    """One injected fault; ``t`` is seconds since the clients were released."""

    t: float
    kind: FaultKind
    nodes: list[str]
    duration_s: float
    """How long a pause or stall kept the node stopped; 0 for kills."""
    dead_before: list[str]
    """Nodes already dead (or declared dead) when the fault began."""
    affected_keys: int = 0
    """Keys whose primary was a victim when the fault began."""
    unavailable_ms: float | None = None
    """From the fault until every affected key had served a successful operation invoked after it."""


@dataclass
class ChaosReport:
    """Everything a chaos run measured, and the checker's verdict."""

    seed: int
    nodes: int
    rep: int
    clients: int
    keys: list[str]
    duration_s: float
    operations: int
    by_outcome: dict[str, int]
    checked: int
    verdict: str
    """``linearizable``, ``violation``, or ``inconclusive`` when the check ran out of budget."""
    violation: str | None
    faults: list[Fault]
    faults_by_kind: dict[str, int]
    unavailability_ms: dict[str, dict[str, float | None]]
    """Per fault kind: ``median`` and ``max`` of the faults' unavailability."""
    reads_across_faults: int
    """OK gets that returned a value written before the latest fault preceding them."""
    reads_across_failovers: int
    """OK gets answered by a new primary with a value written before a fault took down the old one."""
    unplanned_dead: list[str]
    """Nodes the master declared dead that no fatal fault targeted (e.g. a stalled node)."""
    dead_but_running: list[str]
    """Nodes the master declared dead whose process still ran at the end: fencing should have stopped them."""
    check_s: float
    logs: str | None
    """Where the cluster's logs were kept (a temporary home is removed after a clean run)."""
    history_file: str | None
    """Where the history was saved for a second look, when the verdict was not ``linearizable``."""
    history: list[Operation] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.verdict == "linearizable"

    def to_json(self) -> dict[str, Any]:
        """The report without the history, ready for ``json.dumps``."""
        doc = asdict(self)
        del doc["history"]
        return doc


# --- client processes ---


@dataclass(frozen=True)
class ClientJob:
    """What one client process does (pickled to a spawned process)."""

    master: str
    index: int
    keys: tuple[str, ...]
    duration: float
    read_ratio: float
    seed: str


class _CountingRecorder(HistoryRecorder):
    """A recorder that says cheaply how many operations it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def record(self, op: Operation) -> None:
        super().record(op)
        self.count += 1


def _run_client(job: ClientJob, worker: Worker) -> list[dict[str, object]]:
    """Entry point of a client process: wait for the release, run the load, hand over the history."""
    from kvcluster.client import Client  # noqa: PLC0415

    rng = random.Random(job.seed)
    recorder = _CountingRecorder()
    with Client(job.master, deadline=CLIENT_DEADLINE, recorder=recorder) as client:
        client.refresh_table()
        worker.wait_for_release()
        stop_at = time.monotonic() + job.duration
        seq = 0
        while time.monotonic() < stop_at:
            key = rng.choice(job.keys)
            if rng.random() < job.read_ratio:
                _attempt(client, recorder, key, None)
            else:
                seq += 1
                _attempt(client, recorder, key, f"c{job.index}-{seq}")
    return [op.to_json() for op in recorder.operations]


def _attempt(client: Client, recorder: _CountingRecorder, key: str, value: str | None) -> None:
    """One get (``value`` None) or put; its outcome goes to the history, whatever happens."""
    before = recorder.count
    invoked = time.monotonic()
    try:
        if value is None:
            client.get(key)
        else:
            client.put(key, value)
    except KvclusterError:
        if recorder.count == before:
            # The client records what it can classify; a failure it did not (a malformed
            # answer from the master) may still have let a put through.
            kind, outcome = (OpKind.GET, Outcome.FAILED) if value is None else (OpKind.PUT, Outcome.UNKNOWN)
            recorder.record(Operation(client.client_id, kind, key, value, invoked, time.monotonic(), outcome))


# --- keys and placement ---


def chaos_keys(count: int, nodes: int, rep: int) -> list[str]:
    """``count`` keys whose primaries go round the nodes, so every victim is the primary of some."""
    candidates = (f"k{j}" for j in itertools.count())
    return [
        next(key for key in candidates if replicas_for(slot_of(key), nodes, rep)[0] == index % nodes + 1)
        for index in range(count)
    ]


def _primary(key: str, nodes: int, rep: int, dead: set[int]) -> int | None:
    return next((n for n in replicas_for(slot_of(key), nodes, rep) if n not in dead), None)


class Placement:
    """Which sets of dead nodes leave every slot a live replica."""

    def __init__(self, nodes: int, rep: int) -> None:
        self.replica_sets = {frozenset(replicas_for(slot, nodes, rep)) for slot in range(NUM_SLOTS)}

    def safe(self, dead: set[int]) -> bool:
        return not any(replicas <= dead for replicas in self.replica_sets)


# --- fault injection ---


def _ids(names: Sequence[str]) -> set[int]:
    return {int(name.removeprefix("server")) for name in names}


@dataclass(frozen=True)
class PlannedFault:
    """The next fault of a schedule."""

    kind: FaultKind
    victims: tuple[int, ...]
    length: float
    """Seconds a pause or stall keeps the node stopped, or between the kills of a double kill; 0 for a kill."""
    dead_before: frozenset[int]


class FaultSchedule:
    """The seeded sequence of faults: kinds, victims, lengths and the delays between them.

    Every draw is made in the same order whatever happens, so a seed fixes the
    schedule as long as nodes die only where the schedule says.
    """

    def __init__(
        self,
        nodes: int,
        rep: int,
        rng: random.Random,
        timing: Timing,
        interval: tuple[float, float] = (2.0, 4.0),
        stall_share: float = STALL_SHARE,
    ) -> None:
        self.nodes = nodes
        self.rng = rng
        self.timing = timing
        self.interval = interval
        self.stall_share = stall_share
        self.placement = Placement(nodes, rep)
        self.dead: set[int] = set()  # nodes gone for good: by a fatal fault, or declared dead by the master
        self.fatal = 0

    def delay(self) -> float:
        """Seconds until the next fault."""
        return self.rng.uniform(*self.interval)

    def next(self, also_dead: set[int]) -> PlannedFault | None:
        """The next fault, given nodes that died meanwhile; None when no fault is safe any more."""
        self.dead |= also_dead
        alive = [n for n in range(1, self.nodes + 1) if n not in self.dead]
        for kind in self._kinds():
            candidates = self._candidates(kind, alive)
            if candidates:
                victims = self.rng.choice(candidates)
                fault = PlannedFault(kind, victims, self._length(kind), frozenset(self.dead))
                if kind in FATAL_KINDS:
                    self.dead.update(victims)
                    self.fatal += 1
                return fault
        return None

    def _kinds(self) -> list[FaultKind]:
        """Fault kinds to try, in order of preference."""
        # The first two fatal faults are a pause and a kill, so every run with room for two exercises both.
        first = (FaultKind.PAUSE, FaultKind.KILL)[self.fatal] if self.fatal < 2 else self.rng.choice(FATAL_KINDS)
        kinds = [first, *(k for k in FATAL_KINDS if k != first)]
        return [FaultKind.STALL, *kinds] if self.rng.random() < self.stall_share else kinds

    def _candidates(self, kind: FaultKind, alive: list[int]) -> list[tuple[int, ...]]:
        """Victims that leave every slot a live replica even if they never come back."""
        size = 2 if kind == FaultKind.DOUBLE_KILL else 1
        return [v for v in itertools.permutations(alive, size) if self.placement.safe(self.dead.union(v))]

    def _length(self, kind: FaultKind) -> float:
        t = self.timing
        if kind == FaultKind.PAUSE:
            # Well beyond the failure detector: the master declares the node dead while it is stopped.
            return self.rng.uniform(2 * t.dead_after, 3.5 * t.dead_after)
        if kind == FaultKind.STALL:
            # About the lease, but short enough that heartbeats resume before ``dead_after``.
            return self.rng.uniform(t.lease / 2, t.dead_after - 2 * t.heartbeat)
        if kind == FaultKind.DOUBLE_KILL:
            return self.rng.uniform(*DOUBLE_KILL_GAP)
        return 0.0


class FaultInjector:
    """Injects planned faults into a running cluster and records them."""

    def __init__(self, supervisor: Supervisor, state: ClusterState, on_event: Callable[[str], None]) -> None:
        self.supervisor = supervisor
        self.state = state
        self.on_event = on_event
        self.stopped: ProcessInfo | None = None  # a node under SIGSTOP, resumed whatever happens
        self.faults: list[Fault] = []
        self.released = 0.0

    def exited(self) -> set[int]:
        """Nodes whose process is gone."""
        return {n for n, info in enumerate(self.state.servers, start=1) if not info.alive()}

    def inject(self, fault: PlannedFault) -> None:
        at = time.monotonic()
        match fault.kind:
            case FaultKind.KILL:
                self._signal(fault.victims[0], signal.SIGKILL)
            case FaultKind.DOUBLE_KILL:
                self._signal(fault.victims[0], signal.SIGKILL)
                time.sleep(fault.length)
                self._signal(fault.victims[1], signal.SIGKILL)
            case _:
                self._stop_for(fault.victims[0], fault.length)
        recorded = Fault(
            t=at - self.released,
            kind=fault.kind,
            nodes=[node_name(n) for n in fault.victims],
            duration_s=fault.length if fault.kind in (FaultKind.PAUSE, FaultKind.STALL) else 0.0,
            dead_before=[node_name(n) for n in sorted(fault.dead_before)],
        )
        self.faults.append(recorded)
        stopped = f" for {recorded.duration_s:.2f} s" if recorded.duration_s else ""
        self.on_event(f"{recorded.t:7.2f} s  {fault.kind} {', '.join(recorded.nodes)}{stopped}")

    def _signal(self, node_id: int, signum: signal.Signals) -> None:
        info = self.state.servers[node_id - 1]
        if info.alive():
            os.kill(info.pid, signum)

    def _stop_for(self, node_id: int, length: float) -> None:
        """SIGSTOP the node and SIGCONT it ``length`` seconds later."""
        info = self.state.servers[node_id - 1]
        if not info.alive():
            return
        self.stopped = info
        os.kill(info.pid, signal.SIGSTOP)
        self.wait(time.monotonic() + length)
        self.resume()

    def resume(self) -> None:
        """SIGCONT the stopped node, if any (also on the way out, so it can be stopped cleanly)."""
        if self.stopped is not None and self.stopped.alive():
            os.kill(self.stopped.pid, signal.SIGCONT)
        self.stopped = None

    def wait(self, until: float) -> None:
        """Sleep until ``until``, reaping nodes that exit meanwhile."""
        while (left := until - time.monotonic()) > 0:
            self.supervisor.reap()
            time.sleep(min(REAP_INTERVAL, left))


def _declared_dead(client: Client) -> set[int]:
    """The nodes the master's table lists as dead; empty if the master does not answer."""
    try:
        report = client.status()
    except KvclusterError:
        return set()
    return set(report.table.dead) if report.table is not None else set()


# --- the run ---


def run_chaos(
    nodes: int = 5,
    rep: int = 3,
    clients: int = 4,
    keys: int = 8,
    duration: float = 30.0,
    seed: int | None = None,
    home: Path | None = None,
    fault_interval: tuple[float, float] = (2.0, 4.0),
    stall_share: float = STALL_SHARE,
    read_ratio: float = 0.5,
    on_event: Callable[[str], None] | None = None,
    on_tick: Callable[[float], None] | None = None,
) -> ChaosReport:
    """Run a cluster under load and faults for ``duration`` seconds, then check the history.

    Faults come every ``fault_interval`` seconds (drawn uniformly); a share
    ``stall_share`` of them are stalls. A temporary home (``home`` None) is
    removed after a linearizable run and kept otherwise, with the nodes'
    logs. ``on_event`` receives a line per fault and phase; ``on_tick`` the
    seconds elapsed, a few times a second.
    """
    from kvcluster.supervisor import LOG_DIR  # noqa: PLC0415

    if seed is None:
        seed = secrets.randbelow(2**31)
    timing = Timing()
    shape = _Shape(nodes, rep, clients, chaos_keys(keys, nodes, rep), duration, read_ratio, seed)
    schedule = FaultSchedule(nodes, rep, random.Random(seed), timing, fault_interval, stall_share)
    with _home(home) as (path, temporary):
        run = _run_cluster(path, shape, schedule, timing, on_event or (lambda _text: None), on_tick)
        if on_event is not None:
            on_event(f"checking {len(run.history):,} operations")
        report = _report(shape, run)
        if not report.ok:
            report.history_file = str(_save_history(report.history, path / HISTORY_FILE))
        if temporary and report.ok:
            shutil.rmtree(path, ignore_errors=True)
        else:
            report.logs = str(path / LOG_DIR)
    return report


def _save_history(history: list[Operation], path: Path) -> Path:
    recorder = HistoryRecorder()
    recorder.extend(history)
    recorder.save(path)
    return path


@dataclass(frozen=True)
class _Shape:
    """The cluster and load a run was asked for."""

    nodes: int
    rep: int
    clients: int
    keys: list[str]
    duration: float
    read_ratio: float
    seed: int


@dataclass
class _Run:
    """What a run produced, before analysis."""

    history: list[Operation]
    faults: list[Fault]
    released: float
    unplanned_dead: set[int]
    dead_but_running: set[int]


def _run_cluster(
    path: Path,
    shape: _Shape,
    schedule: FaultSchedule,
    timing: Timing,
    say: Callable[[str], None],
    on_tick: Callable[[float], None] | None,
) -> _Run:
    """Start the cluster and the clients, inject faults until the end, collect the history, stop everything."""
    from kvcluster.client import Client  # noqa: PLC0415
    from kvcluster.supervisor import Supervisor  # noqa: PLC0415

    supervisor = Supervisor(path, shape.nodes, shape.rep, "127.0.0.1:0", timing)
    injector: FaultInjector | None = None
    try:
        say(f"starting {shape.nodes} nodes with {shape.rep} replicas in {path}")
        state = supervisor.start()
        injector = FaultInjector(supervisor, state, say)
        jobs = [
            ClientJob(
                state.master_endpoint, i, tuple(shape.keys), shape.duration, shape.read_ratio, f"{shape.seed}/{i}"
            )
            for i in range(shape.clients)
        ]
        with (
            ClientPool(_run_client, jobs, niceness=CLIENT_NICENESS) as pool,
            Client(state.master_endpoint, deadline=1.0) as observer,
        ):
            say(f"starting {shape.clients} client processes")
            injector.released = pool.release()
            say(f"load on keys {', '.join(shape.keys)} for {shape.duration:g} s")
            _inject_until(schedule, injector, observer, injector.released + shape.duration, on_tick)
            histories = pool.collect(timeout=CLIENT_DEADLINE + COLLECT_GRACE)
            declared = _declared_dead(observer)
        history = [Operation.from_json(record) for records in histories for record in records]
        targeted = {n for f in injector.faults if f.kind in FATAL_KINDS for n in _ids(f.nodes)}
        return _Run(history, injector.faults, injector.released, declared - targeted, declared - injector.exited())
    finally:
        if injector is not None:
            injector.resume()
        supervisor.stop()


@contextmanager
def _home(home: Path | None) -> Iterator[tuple[Path, bool]]:
    """The state directory to use, and whether it is a temporary one of ours."""
    if home is not None:
        yield home, False
        return
    yield Path(tempfile.mkdtemp(prefix="kvcluster-chaos-")), True


def _inject_until(
    schedule: FaultSchedule,
    injector: FaultInjector,
    observer: Client,
    end: float,
    on_tick: Callable[[float], None] | None,
) -> None:
    """Inject the schedule's faults until ``end``, or until no safe fault remains."""
    next_fault: float | None = injector.released + schedule.delay()
    while (now := time.monotonic()) < end:
        if on_tick is not None:
            on_tick(now - injector.released)
        if next_fault is not None and now >= next_fault and end - now > FAULT_TAIL:
            planned = schedule.next(_declared_dead(observer) | injector.exited())
            if planned is not None:
                injector.inject(planned)
                next_fault = time.monotonic() + schedule.delay()
            else:
                injector.on_event(f"{now - injector.released:7.2f} s  no safe fault remains; the load goes on")
                next_fault = None
        injector.wait(min(end, time.monotonic() + 0.2))


# --- analysis ---


def _report(shape: _Shape, run: _Run) -> ChaosReport:
    from kvcluster.linearizability import CheckTooExpensive, check  # noqa: PLC0415

    _measure_unavailability(run, shape)
    started = time.monotonic()
    try:
        result = check(run.history)
        verdict = "linearizable" if result.ok else "violation"
        checked = result.operations
        violation = result.violation.describe() if result.violation is not None else None
    except CheckTooExpensive as exc:
        verdict, checked, violation = "inconclusive", 0, str(exc)
    check_s = time.monotonic() - started
    across, failovers = _reads_across_faults(run, shape)
    return ChaosReport(
        seed=shape.seed,
        nodes=shape.nodes,
        rep=shape.rep,
        clients=shape.clients,
        keys=shape.keys,
        duration_s=shape.duration,
        operations=len(run.history),
        by_outcome=dict(sorted(Counter(f"{op.kind} {op.outcome}" for op in run.history).items())),
        checked=checked,
        verdict=verdict,
        violation=violation,
        faults=run.faults,
        faults_by_kind=dict(Counter(f.kind for f in run.faults)),
        unavailability_ms=_unavailability_by_kind(run.faults),
        reads_across_faults=across,
        reads_across_failovers=failovers,
        unplanned_dead=[node_name(n) for n in sorted(run.unplanned_dead)],
        dead_but_running=[node_name(n) for n in sorted(run.dead_but_running)],
        check_s=check_s,
        logs=None,
        history_file=None,
        history=run.history,
    )


def _succeeded(op: Operation) -> bool:
    return op.outcome in (Outcome.OK, Outcome.NOT_FOUND)


def _affected(fault: Fault, shape: _Shape) -> list[str]:
    """The keys whose primary was one of the fault's victims when it began."""
    dead, victims = _ids(fault.dead_before), _ids(fault.nodes)
    return [key for key in shape.keys if _primary(key, shape.nodes, shape.rep, dead) in victims]


def _measure_unavailability(run: _Run, shape: _Shape) -> None:
    """Fill in every fault's affected keys and unavailability.

    A key is available again when an operation invoked after the fault
    succeeds on it; the fault's window ends when that holds for every key.
    """
    by_key: dict[str, list[Operation]] = defaultdict(list)
    for op in sorted(run.history, key=lambda op: op.invoke):
        if _succeeded(op):
            by_key[op.key].append(op)
    for fault in run.faults:
        at = run.released + fault.t
        affected = _affected(fault, shape)
        fault.affected_keys = len(affected)
        recovered = []
        for key in affected:
            ops = by_key[key]
            first = bisect.bisect_left(ops, at, key=lambda op: op.invoke)
            recovered.append(min((op.complete for op in ops[first:]), default=math.inf))
        if recovered and max(recovered) < math.inf:
            fault.unavailable_ms = (max(recovered) - at) * 1000


def _unavailability_by_kind(faults: list[Fault]) -> dict[str, dict[str, float | None]]:
    windows: dict[str, list[float]] = {f.kind: [] for f in faults}
    for fault in faults:
        if fault.unavailable_ms is not None:
            windows[fault.kind].append(fault.unavailable_ms)
    return {
        kind: {"median": statistics.median(values) if values else None, "max": max(values, default=None)}
        for kind, values in sorted(windows.items())
    }


def _reads_across_faults(run: _Run, shape: _Shape) -> tuple[int, int]:
    """How many OK gets read a value written before the latest fault, and before a failover of the key's primary."""
    promoted_after = Timing().dead_after
    writers = {op.value: op for op in run.history if op.kind is OpKind.PUT}
    times = [run.released + f.t for f in run.faults]
    failover_times: dict[str, list[float]] = defaultdict(list)
    for fault, at in zip(run.faults, times, strict=True):
        if fault.kind in FATAL_KINDS:
            for key in _affected(fault, shape):
                failover_times[key].append(at)
    across = failovers = 0
    for op in run.history:
        writer = writers.get(op.value) if op.kind is OpKind.GET and op.outcome is Outcome.OK else None
        if writer is None:
            continue
        latest = bisect.bisect_right(times, op.invoke) - 1
        if latest >= 0 and times[latest] >= writer.complete:
            across += 1
        # No backup is promoted before ``dead_after``: a get answered later came from the new primary.
        if any(writer.complete <= t <= op.complete - promoted_after for t in failover_times[op.key]):
            failovers += 1
    return across, failovers


# --- the command ---


def _check_options(nodes: int, rep: int, clients: int, keys: int, duration: float) -> None:
    if nodes < 1:
        raise UsageError(f"--nodes must be at least 1, got {nodes}")
    if not 1 <= rep <= nodes:
        raise UsageError(f"--rep must be in 1..{nodes} for {nodes} nodes, got {rep}")
    if clients < 1 or keys < 1:
        raise UsageError("--clients and --keys must be at least 1")
    if duration <= 0:
        raise UsageError(f"--duration must be positive, got {duration:g}")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def _summary_table(report: ChaosReport) -> Any:
    from kvcluster.bench import measure_table  # noqa: PLC0415

    table = measure_table(
        f"chaos: {report.nodes} nodes, {report.rep} replicas, {report.clients} clients, {report.duration_s:g} s"
    )
    verdict = {"linearizable": "[bold green]linearizable[/]", "violation": "[bold red]NOT LINEARIZABLE[/]"}
    table.add_row("verdict", verdict.get(report.verdict, f"[bold yellow]{report.verdict}[/]"))
    table.add_row("seed", str(report.seed))
    table.add_row("operations recorded", f"{report.operations:,}")
    for name, count in report.by_outcome.items():
        table.add_row(f"  {name}", f"{count:,}")
    table.add_row("operations checked", f"{report.checked:,} on {len(report.keys)} keys in {report.check_s:.1f} s")
    faults = ", ".join(f"{count} {kind}" for kind, count in sorted(report.faults_by_kind.items())) or "none"
    table.add_row("faults", faults)
    for kind, window in report.unavailability_ms.items():
        table.add_row(f"  unavailability after {kind}, median / max", f"{_ms(window['median'])} / {_ms(window['max'])}")
    table.add_row("gets reading a value written before the latest fault", f"{report.reads_across_faults:,}")
    table.add_row("  of which across a failover of the key's primary", f"{report.reads_across_failovers:,}")
    if report.unplanned_dead:
        table.add_row("declared dead without a fatal fault", ", ".join(report.unplanned_dead))
    if report.dead_but_running:
        table.add_row("[bold red]declared dead but still running[/]", ", ".join(report.dead_but_running))
    return table


def _faults_table(report: ChaosReport) -> Any:
    from rich.table import Table  # noqa: PLC0415

    table = Table(title="faults")
    for column in ("t", "fault", "nodes", "stopped for", "keys hit", "unavailable"):
        table.add_column(column, justify="left" if column in ("fault", "nodes") else "right")
    for f in report.faults:
        stopped = f"{f.duration_s:.2f} s" if f.duration_s else "-"
        table.add_row(f"{f.t:.2f} s", f.kind, ", ".join(f.nodes), stopped, str(f.affected_keys), _ms(f.unavailable_ms))
    return table


def chaos_command(
    nodes: Annotated[int, typer.Option("--nodes", help="Storage nodes in the cluster.")] = 5,
    rep: Annotated[int, typer.Option("--rep", help="Replicas per key.")] = 3,
    clients: Annotated[int, typer.Option("--clients", help="Client processes.")] = 4,
    keys: Annotated[int, typer.Option("--keys", help="Keys the clients share (few keys, more contention).")] = 8,
    duration: Annotated[float, typer.Option("--duration", help="Seconds of load and faults.")] = 30.0,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed of the fault schedule and the load; replays a run.")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON to this file.")] = None,
    save_history: Annotated[
        Path | None, typer.Option("--save-history", help="Write the recorded history as JSON lines to this file.")
    ] = None,
    rounds: Annotated[
        int,
        typer.Option(
            "--rounds",
            help="Runs in a row, each on a fresh cluster with the next seed: a cluster only ever loses nodes, "
            "so a long run needs new ones.",
        ),
    ] = 1,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            help="State directory for the run's cluster, kept afterwards (default: a temporary one, kept on failure).",
        ),
    ] = None,
) -> None:
    """Kill and pause nodes under concurrent load, then check the history for linearizability; exit 1 if it is not."""
    from rich.console import Console  # noqa: PLC0415

    _check_options(nodes, rep, clients, keys, duration)
    if rounds < 1:
        raise UsageError(f"--rounds must be at least 1, got {rounds}")
    if seed is None:
        seed = secrets.randbelow(2**31)
    console = Console()
    console.print(f"chaos seed {seed} (replay with: kvcluster bench chaos --seed {seed})")
    reports = []
    for round_seed in range(seed, seed + rounds):
        if rounds > 1:
            console.rule(f"round {round_seed - seed + 1} of {rounds}: seed {round_seed}")
        report = _chaos_round(console, nodes, rep, clients, keys, duration, round_seed, home)
        reports.append(report)
        if save_history is not None:
            per_round = save_history.with_name(f"{save_history.stem}-{round_seed}{save_history.suffix}")
            _save_history(report.history, per_round if rounds > 1 else save_history)
    if json_out is not None:
        doc = reports[0].to_json() if rounds == 1 else {"rounds": [r.to_json() for r in reports]}
        json_out.write_text(json.dumps(doc, indent=2) + "\n")
    if rounds > 1:
        console.print(_rounds_summary(reports))
    if not all(report.ok for report in reports):
        raise typer.Exit(1)


def _chaos_round(
    console: Any, nodes: int, rep: int, clients: int, keys: int, duration: float, seed: int, home: Path | None
) -> ChaosReport:
    """One run on a fresh cluster, with its tables printed."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with interrupt_on_sigterm(), Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("load and faults", total=duration)
        report = run_chaos(
            nodes=nodes,
            rep=rep,
            clients=clients,
            keys=keys,
            duration=duration,
            seed=seed,
            home=home.expanduser().resolve() if home is not None else None,
            on_event=progress.console.print,
            on_tick=lambda elapsed: progress.update(task, completed=elapsed),
        )
    console.print(_faults_table(report))
    console.print(_summary_table(report))
    if report.violation is not None:
        console.print(report.violation, style="bold red", markup=False, highlight=False)
    if report.logs is not None:
        console.print(f"cluster logs kept in {report.logs}")
    if report.history_file is not None:
        console.print(f"history saved in {report.history_file}")
    return report


def _rounds_summary(reports: list[ChaosReport]) -> Any:
    """Totals over every round of a long run."""
    from kvcluster.bench import measure_table  # noqa: PLC0415

    faults: Counter[str] = Counter()
    for report in reports:
        faults.update(report.faults_by_kind)
    table = measure_table(f"chaos: {len(reports)} rounds")
    table.add_row("operations checked", f"{sum(r.checked for r in reports):,}")
    table.add_row("faults injected", ", ".join(f"{kind} {count}" for kind, count in sorted(faults.items())) or "none")
    table.add_row("verdicts", ", ".join(f"{v} {n}" for v, n in sorted(Counter(r.verdict for r in reports).items())))
    return table


def register(app: typer.Typer) -> None:
    """Add the ``chaos`` command to ``app``."""
    app.command("chaos")(chaos_command)
