"""Chaos runs: nodes killed and paused under concurrent load, the history checked for linearizability.

``run_chaos`` starts a cluster, runs client processes that put, get and delete on a
few keys (so operations on one key overlap), and meanwhile injects faults on
a schedule drawn from ``random.Random(seed)``. Every client records its
operations with invoke and complete times (``time.monotonic``, one clock for
every process on Linux); the merged history is checked with
``linearizability.check``. The same seed gives the same schedule of fault
kinds, victims and delays, so a failing run can be replayed with its seed.

The fault kinds and their schedule are in ``chaos_faults``; the analysis of
the history and the tables in ``chaos_report``.
"""

from __future__ import annotations

import json
import math
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kvcluster.bench.bulk import BulkCheck, bulk_load, bulk_verify, release_timeout
from kvcluster.bench.chaos_faults import (
    STALL_SHARE,
    TAKING_KINDS,
    FaultInjector,
    FaultSchedule,
    chaos_keys,
    node_ids,
)
from kvcluster.bench.chaos_masters import MasterFaults
from kvcluster.bench.chaos_membership import MembershipSchedule, change_membership, settled
from kvcluster.bench.chaos_report import (
    ChaosReport,
    RunRecord,
    Shape,
    analyse,
    faults_table,
    rounds_summary,
    summary_table,
)
from kvcluster.check.history import HistoryRecorder, Operation, OpKind, Outcome
from kvcluster.client_pool import ClientPool, Worker, interrupt_on_sigterm
from kvcluster.core.protocol import Timing
from kvcluster.errors import KvclusterError, UsageError
from kvcluster.master_group import DEFAULT_MASTERS

if TYPE_CHECKING:
    from kvcluster.client import Connection

CLIENT_DEADLINE = 3.0  # seconds one client operation may take, retries included
DELETE_SHARE = 0.2  # of the writes: deletes, which the checker takes as writes of "absent"
FAULT_TAIL = 3.0  # no fault starts this close to the end, so its recovery is observed
# The load must not starve the cluster it tests: a node that misses heartbeats
# for want of CPU is declared dead, a fault nobody scheduled.
CLIENT_NICENESS = 10
COLLECT_GRACE = 60.0  # after the run, how long the clients may take to hand over their histories
HISTORY_FILE = "history.jsonl"  # in the state directory, after a run that is not linearizable


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
) -> ChaosReport:
    """Run a cluster under load and faults for ``duration`` seconds, then check the history.

    Faults come every ``fault_interval`` seconds (drawn uniformly); a share
    ``stall_share`` of them are stalls. ``preload`` keys are bulk-loaded
    before the clients start, so the faults land on a large data set; each
    is read back at the end, and one lost makes the run fail. ``membership``
    mixes restarts, additions and removals of nodes into the faults
    (``chaos_membership``), and ``master_faults`` kills and pauses the
    leading master on a track of its own (``chaos_masters``). A temporary home (``home`` None) is
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
    schedule = (
        MembershipSchedule(nodes, rep, rng, timing, fault_interval)
        if membership
        else FaultSchedule(nodes, rep, rng, timing, fault_interval, stall_share)
    )
    with _home(home) as (path, temporary):
        masters = MasterFaults(seed) if master_faults else None
        run = _run_cluster(path, shape, (schedule, masters), timing, on_event or (lambda _text: None), on_tick)
        if on_event is not None:
            on_event(f"checking {len(run.history):,} operations")
        report = analyse(shape, run)
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


def _run_cluster(
    path: Path,
    shape: Shape,
    schedules: tuple[FaultSchedule, MasterFaults | None],
    timing: Timing,
    say: Callable[[str], None],
    on_tick: Callable[[float], None] | None,
) -> RunRecord:
    """Start the cluster and the clients, inject faults until the end, collect the history, stop everything."""
    from kvcluster.client import Connection  # noqa: PLC0415
    from kvcluster.supervisor import Supervisor  # noqa: PLC0415

    supervisor = Supervisor(path, shape.nodes, shape.rep, DEFAULT_MASTERS, "127.0.0.1:0", timing)
    injector: FaultInjector | None = None
    try:
        say(f"starting {shape.nodes} nodes with {shape.rep} replicas in {path}")
        state = supervisor.start()
        injector = FaultInjector(supervisor, state, say, change_membership)
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
            _inject_until(schedules, injector, observer, injector.released + shape.duration, on_tick)
            histories = pool.collect(timeout=CLIENT_DEADLINE + COLLECT_GRACE)
            declared = _declared_dead(observer)
        check = BulkCheck(0, 0, 0)
        if shape.preload:
            say(f"reading the {shape.preload:,} loaded keys back")
            check = bulk_verify(state.master_endpoint, shape.preload, _ignore)
        history = [Operation.from_json(record) for records in histories for record in records]
        targeted = {n for f in injector.faults if f.kind in TAKING_KINDS for n in node_ids(f.nodes)}
        dead = declared - targeted
        return RunRecord(
            history, injector.faults, injector.released, dead, declared - injector.exited(), preload_s, check
        )
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
    schedules: tuple[FaultSchedule, MasterFaults | None],
    injector: FaultInjector,
    observer: Connection,
    end: float,
    on_tick: Callable[[float], None] | None,
) -> None:
    """Inject the schedule's faults until ``end``, or until no safe fault remains; the leader's on their own track."""
    schedule, masters = schedules
    next_fault: float | None = injector.released + schedule.delay()
    next_master = injector.released + masters.delay() if masters is not None else math.inf
    while (now := time.monotonic()) < end:
        if on_tick is not None:
            on_tick(now - injector.released)
        if masters is not None and now >= next_master and end - now > FAULT_TAIL:
            masters.inject(injector)
            next_master = time.monotonic() + masters.delay()
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
    """Plain faults are safe by the static placement; after membership changes, only on a settled cluster."""
    if not isinstance(schedule, MembershipSchedule):
        return True
    try:
        report = observer.status()
    except KvclusterError:
        return False
    return settled(report, schedule.gone() | injector.exited())


def _check_options(nodes: int, rep: int, clients: int, keys: int, duration: float) -> None:
    if nodes < 1:
        raise UsageError(f"--nodes must be at least 1, got {nodes}")
    if not 1 <= rep <= nodes:
        raise UsageError(f"--rep must be in 1..{nodes} for {nodes} nodes, got {rep}")
    if clients < 1 or keys < 1:
        raise UsageError("--clients and --keys must be at least 1")
    if duration <= 0:
        raise UsageError(f"--duration must be positive, got {duration:g}")


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
    membership: Annotated[
        bool,
        typer.Option(
            "--membership",
            help="Also restart dead nodes, add nodes and remove nodes (kvcluster restart, add-node, remove-node); "
            "each fault then waits until every slot has its replicas again.",
        ),
    ] = False,
    master_faults: Annotated[
        bool,
        typer.Option(
            "--master-faults",
            help="Also kill -9 (then restart) and pause the leading master, every 4 to 7 s, on a track of its own.",
        ),
    ] = False,
    preload: Annotated[
        int,
        typer.Option(
            "--preload",
            min=0,
            help="Keys with 100-byte values to load before the faults start, so they land on a large data set; "
            "each is read back at the end, and any missing or wrong is a lost write (exit 1).",
        ),
    ] = 0,
) -> None:
    """Kill and pause nodes (and with --membership restart, add and remove them) under concurrent load, then check
    the history for linearizability; exit 1 if it is not."""
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
        report = _chaos_round(
            console, nodes, rep, clients, keys, duration, round_seed, home, preload, (membership, master_faults)
        )
        reports.append(report)
        if save_history is not None:
            per_round = save_history.with_name(f"{save_history.stem}-{round_seed}{save_history.suffix}")
            _save_history(report.history, per_round if rounds > 1 else save_history)
    if json_out is not None:
        doc = reports[0].to_json() if rounds == 1 else {"rounds": [r.to_json() for r in reports]}
        json_out.write_text(json.dumps(doc, indent=2) + "\n")
    if rounds > 1:
        console.print(rounds_summary(reports))
    if not all(report.ok for report in reports):
        raise typer.Exit(1)


def _chaos_round(
    console: Any,
    nodes: int,
    rep: int,
    clients: int,
    keys: int,
    duration: float,
    seed: int,
    home: Path | None,
    preload: int,
    changes: tuple[bool, bool],
) -> ChaosReport:
    """One run on a fresh cluster, with its tables printed; ``changes``: membership changes, leader faults."""
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
            preload=preload,
            membership=changes[0],
            master_faults=changes[1],
        )
    console.print(faults_table(report))
    console.print(summary_table(report))
    if report.violation is not None:
        console.print(report.violation, style="bold red", markup=False, highlight=False)
    if report.logs is not None:
        console.print(f"cluster logs kept in {report.logs}")
    if report.history_file is not None:
        console.print(f"history saved in {report.history_file}")
    return report


def register(app: typer.Typer) -> None:
    """Add the ``chaos`` command to ``app``."""
    app.command("chaos")(chaos_command)
