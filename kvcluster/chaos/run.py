"""Chaos runs: faults under concurrent load, the history checked for linearizability, every key read back.

``run_chaos`` starts a cluster, runs client processes that put, get and delete on a
few keys (so operations on one key overlap), and meanwhile injects faults on
a schedule drawn from ``random.Random(seed)``, with the leader's and the
network's faults on tracks of their own. Every client records its
operations with invoke and complete times (``time.monotonic``, one clock for
every process on Linux); once the load is over a new client reads every key
back, and the merged history is judged by ``check.verdict``. The same seed
gives the same schedule of fault kinds, victims and delays, so a failing run
can be replayed with its seed.

The node faults and their schedule are in ``injection``, the others in
``masters``, ``membership`` and ``partitions``; the analysis of the history
and the tables in ``report``.
"""

from __future__ import annotations

import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from kvcluster.bench.bulk import BulkCheck, bulk_load, bulk_verify, release_timeout
from kvcluster.chaos.injection import (
    STALL_SHARE,
    TAKING_KINDS,
    FaultInjector,
    FaultSchedule,
    chaos_keys,
    node_ids,
)
from kvcluster.chaos.masters import MasterFaults
from kvcluster.chaos.membership import KIND_ORDER, MembershipSchedule, change_membership, settled
from kvcluster.chaos.partitions import NetworkFaults
from kvcluster.chaos.report import (
    ChaosReport,
    RunRecord,
    Shape,
    analyse,
)
from kvcluster.check.faults import NETWORK_FAULTS, NODE_FAULTS
from kvcluster.check.history import HistoryRecorder, Operation, OpKind, Outcome
from kvcluster.client_pool import ClientPool, Worker
from kvcluster.core.protocol import Timing
from kvcluster.errors import KvclusterError
from kvcluster.master_group import DEFAULT_MASTERS
from kvcluster.netns import NetHosts

if TYPE_CHECKING:
    from kvcluster.client import Connection

CLIENT_DEADLINE = 3.0  # seconds one client operation may take, retries included
DELETE_SHARE = 0.2  # of the writes: deletes, which the checker takes as writes of "absent"
FAULT_TAIL = 3.0  # no fault starts this close to the end, so its recovery is observed
# The load must not starve the cluster it tests: a node that misses heartbeats
# for want of CPU is declared dead, a fault nobody scheduled.
CLIENT_NICENESS = 10
FINAL_READ_DEADLINE = 15.0  # seconds a final read may take: the last fault's healing may still be under way
COLLECT_GRACE = 60.0  # after the run, how long the clients may take to hand over their histories
HISTORY_FILE = "history.jsonl"  # in the state directory, after a run that is not linearizable
TARGETING = (*TAKING_KINDS, *NETWORK_FAULTS)  # faults after which the master may rightly declare their nodes dead


class SideTrack(Protocol):
    """Faults drawn on a clock of their own, beside the node faults: the leader's, the network's."""

    def delay(self) -> float: ...

    def inject(self, injector: FaultInjector) -> None: ...


@dataclass
class Tracks:
    """The fault tracks of a run, and the hosts the cluster runs on (with ``--partitions``)."""

    nodes: FaultSchedule
    side: list[SideTrack]
    hosts: NetHosts | None


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
    from kvcluster.client import Connection  # noqa: PLC0415

    rng = random.Random(job.seed)
    recorder = _CountingRecorder()
    with Connection(job.master, deadline=CLIENT_DEADLINE, recorder=recorder) as client:
        client.refresh_table()
        worker.wait_for_release()
        stop_at = time.monotonic() + job.duration
        seq = 0
        while time.monotonic() < stop_at:
            key = rng.choice(job.keys)
            if rng.random() < job.read_ratio:
                _attempt(client, recorder, OpKind.GET, key, None)
            elif rng.random() < DELETE_SHARE:
                _attempt(client, recorder, OpKind.DELETE, key, None)
            else:
                seq += 1
                _attempt(client, recorder, OpKind.PUT, key, f"c{job.index}-{seq}")
    return [op.to_json() for op in recorder.operations]


def _attempt(client: Connection, recorder: _CountingRecorder, kind: OpKind, key: str, value: str | None) -> None:
    """One get, delete or put; its outcome goes to the history, whatever happens."""
    before = recorder.count
    invoked = time.monotonic()
    try:
        if kind is OpKind.GET:
            client.read(key)
        elif kind is OpKind.DELETE:
            client.delete(key)
        else:
            assert value is not None
            client.put(key, value)
    except KvclusterError:
        if recorder.count == before:
            # The client records what it can classify; a failure it did not (a malformed
            # answer from the master) may still have let a write through.
            outcome = Outcome.FAILED if kind is OpKind.GET else Outcome.UNKNOWN
            recorder.record(Operation(client.client_id, kind, key, value, invoked, time.monotonic(), outcome))


def _read_back(endpoint: str, keys: list[str]) -> list[Operation]:
    """Every key read once more by a new client after the faults: the verdict holds them to the acknowledged writes."""
    from kvcluster.client import Connection  # noqa: PLC0415

    recorder = _CountingRecorder()
    with Connection(endpoint, deadline=FINAL_READ_DEADLINE, recorder=recorder) as client:
        for key in keys:
            _attempt(client, recorder, OpKind.GET, key, None)
    return recorder.operations


def _declared_dead(client: Connection) -> set[int]:
    """The nodes the master's table lists as dead; empty if the master does not answer."""
    try:
        report = client.status()
    except KvclusterError:
        return set()
    return set(report.table.dead) if report.table is not None else set()


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
    preload: int = 0,
    membership: bool = False,
    master_faults: bool = False,
    partitions: bool = False,
) -> ChaosReport:
    """Run a cluster under load and faults for ``duration`` seconds, then check the history.

    Faults come every ``fault_interval`` seconds (drawn uniformly); a share
    ``stall_share`` of them are stalls. ``preload`` keys are bulk-loaded
    before the clients start, so the faults land on a large data set; each
    is read back at the end, and one lost makes the run fail. ``membership``
    mixes restarts, additions and removals of nodes into the faults
    (``membership``), ``master_faults`` kills and pauses the leading master
    on a track of its own (``masters``), and ``partitions`` runs every
    process on a host of its own and cuts links between them on another
    (``partitions``; root only). A temporary home (``home`` None) is
    removed after a linearizable run and kept otherwise, with the nodes'
    logs. ``on_event`` receives a line per fault and phase; ``on_tick`` the
    seconds elapsed, a few times a second.
    """
    from kvcluster.supervisor import LOG_DIR  # noqa: PLC0415

    if seed is None:
        seed = secrets.randbelow(2**31)
    timing = Timing()
    shape = Shape(nodes, rep, clients, chaos_keys(keys, nodes, rep), duration, read_ratio, seed, preload, membership)
    rng = random.Random(seed)
    # With partitions, fenced nodes come back: the static placement no longer says which victims are safe.
    schedule = (
        MembershipSchedule(
            nodes, rep, rng, timing, fault_interval, KIND_ORDER if membership else NODE_FAULTS, revive=partitions
        )
        if membership or partitions
        else FaultSchedule(nodes, rep, rng, timing, fault_interval, stall_share)
    )
    hosts = NetHosts() if partitions else None
    tracks = Tracks(schedule, [], hosts)
    if master_faults:
        tracks.side.append(MasterFaults(seed))
    if hosts is not None:
        tracks.side.append(NetworkFaults(seed, hosts, schedule))
    with _home(home) as (path, temporary):
        run = _run_cluster(path, shape, tracks, timing, on_event or (lambda _text: None), on_tick)
        if on_event is not None:
            on_event(f"checking {len(run.history):,} operations")
        report = analyse(shape, run)
        if not report.ok:
            report.history_file = str(save_history(report.history, path / HISTORY_FILE))
        if temporary and report.ok:
            shutil.rmtree(path, ignore_errors=True)
        else:
            report.logs = str(path / LOG_DIR)
    return report


def save_history(history: list[Operation], path: Path) -> Path:
    recorder = HistoryRecorder()
    recorder.extend(history)
    recorder.save(path)
    return path


def _run_cluster(
    path: Path,
    shape: Shape,
    tracks: Tracks,
    timing: Timing,
    say: Callable[[str], None],
    on_tick: Callable[[float], None] | None,
) -> RunRecord:
    """Start the cluster and the clients, inject faults until the end, collect the history, stop everything."""
    from kvcluster.client import Connection  # noqa: PLC0415
    from kvcluster.supervisor import Supervisor  # noqa: PLC0415

    supervisor = Supervisor(path, shape.nodes, shape.rep, DEFAULT_MASTERS, "127.0.0.1:0", timing, hosts=tracks.hosts)
    injector: FaultInjector | None = None
    try:
        where = ", each on a host of its own" if tracks.hosts is not None else ""
        say(f"starting {shape.nodes} nodes with {shape.rep} replicas in {path}{where}")
        state = supervisor.start()
        injector = FaultInjector(supervisor, state, say, change_membership)
        first_pids = [info.pid for info in state.servers]
        jobs = [
            ClientJob(
                state.master_endpoint, i, tuple(shape.keys), shape.duration, shape.read_ratio, f"{shape.seed}/{i}"
            )
            for i in range(shape.clients)
        ]
        preload_s = 0.0
        with (
            ClientPool(
                _run_client, jobs, niceness=CLIENT_NICENESS, release_timeout=release_timeout(shape.preload)
            ) as pool,
            Connection(state.master_endpoint, deadline=1.0) as observer,
        ):
            say(f"starting {shape.clients} client processes")
            if shape.preload:
                say(f"loading {shape.preload:,} keys")
                preload_s = bulk_load(state.master_endpoint, shape.preload, _ignore)
                say(f"loaded {shape.preload:,} keys in {preload_s:.1f} s")
            injector.released = pool.release()
            say(f"load on keys {', '.join(shape.keys)} for {shape.duration:g} s")
            _inject_until(tracks, injector, observer, injector.released + shape.duration, on_tick)
            histories = pool.collect(timeout=CLIENT_DEADLINE + COLLECT_GRACE)
            say(f"reading the {len(shape.keys)} keys back")
            final = _read_back(state.master_endpoint, shape.keys)
            declared = _declared_dead(observer)
        check = BulkCheck(0, 0, 0)
        if shape.preload:
            say(f"reading the {shape.preload:,} loaded keys back")
            check = bulk_verify(state.master_endpoint, shape.preload, _ignore)
        history = [Operation.from_json(record) for records in histories for record in records]
        targeted = {n for f in injector.faults if f.kind in TARGETING for n in node_ids(f.nodes)}
        dead = declared - targeted
        # A new incarnation (started again after its fencing) is not the process the master declared dead.
        first = {n for n, info in enumerate(injector.state.servers, start=1) if info.pid in first_pids}
        running = (declared - injector.exited()) & first
        return RunRecord(history, injector.faults, injector.released, dead, running, preload_s, check, final)
    finally:
        if injector is not None:
            injector.resume()
        supervisor.stop()
        if injector is not None:
            injector.stop_started()


def _ignore(_done: int) -> None:
    """No progress bar for a chaos run's bulk load: its phases are reported as lines."""


@contextmanager
def _home(home: Path | None) -> Iterator[tuple[Path, bool]]:
    """The state directory to use, and whether it is a temporary one of ours."""
    if home is not None:
        yield home, False
        return
    yield Path(tempfile.mkdtemp(prefix="kvcluster-chaos-")), True


def _inject_until(
    tracks: Tracks,
    injector: FaultInjector,
    observer: Connection,
    end: float,
    on_tick: Callable[[float], None] | None,
) -> None:
    """Inject the node faults until ``end``, or until no safe fault remains; the side tracks' on their own clocks."""
    schedule = tracks.nodes
    next_fault: float | None = injector.released + schedule.delay()
    next_side = [injector.released + track.delay() for track in tracks.side]
    while (now := time.monotonic()) < end:
        if on_tick is not None:
            on_tick(now - injector.released)
        for index, track in enumerate(tracks.side):
            if now >= next_side[index] and end - now > FAULT_TAIL:
                track.inject(injector)
                next_side[index] = time.monotonic() + track.delay()
        if (
            next_fault is not None
            and now >= next_fault
            and end - now > FAULT_TAIL
            and _ready(schedule, injector, observer)
        ):
            planned = schedule.next(_declared_dead(observer) | injector.exited())
            if planned is not None:
                injector.inject(planned)
                next_fault = time.monotonic() + schedule.delay()
            else:
                injector.on_event(f"{now - injector.released:7.2f} s  no safe fault remains; the load goes on")
                next_fault = None
        injector.wait(min(end, time.monotonic() + 0.2))


def _ready(schedule: FaultSchedule, injector: FaultInjector, observer: Connection) -> bool:
    """Plain faults are safe by the static placement; with membership changes or partitions, only on a settled
    cluster (where nodes the master declared dead and came back count again)."""
    if not isinstance(schedule, MembershipSchedule):
        return True
    try:
        report = observer.status()
    except KvclusterError:
        return False
    out = schedule.removed if schedule.revive else schedule.gone()
    return settled(report, out | injector.exited())
