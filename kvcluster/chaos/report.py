"""What a chaos run measured: the linearizability verdict, unavailability per fault, and the tables that show it.

Pure analysis of a finished run (``Shape`` asked for, ``RunRecord`` produced),
so it can be tested on hand-made histories without a cluster.
"""

from __future__ import annotations

import bisect
import math
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from kvcluster.bench.bulk import BulkCheck
from kvcluster.bench.output import measure_table
from kvcluster.chaos.injection import FATAL_KINDS, Fault, node_ids, primary_of
from kvcluster.check.faults import LEADER_FAULTS
from kvcluster.check.history import Operation, OpKind, Outcome
from kvcluster.check.verdict import Verdict, judge, lost_writes
from kvcluster.core.placement import node_name
from kvcluster.core.protocol import Timing


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
    verdict: Verdict
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
    preloaded: int = 0
    """Keys (100-byte values) bulk-loaded before the faults started."""
    preload_s: float = 0.0
    preloaded_lost: int = 0
    """Preloaded keys read back at the end with another value, missing, or with no live replica: lost writes."""
    preloaded_unreadable: int = 0
    """Preloaded keys whose final read did not complete."""
    membership: bool = False
    """Whether restarts, additions and removals of nodes were among the faults."""
    membership_errors: int = 0
    """Restart, add and remove commands that failed."""
    final_reads: int = 0
    """Keys read back after the faults (each key once), checked with the history."""
    lost_writes: list[str] = field(default_factory=list)
    """Final reads that missed an acknowledged write, or failed (``check.verdict.lost_writes``)."""
    history: list[Operation] = field(default_factory=list, repr=False)
    """What was judged: the load's operations, then the final reads."""

    @property
    def ok(self) -> bool:
        return (
            self.verdict == Verdict.LINEARIZABLE
            and self.preloaded_lost == 0
            and self.membership_errors == 0
            and not self.lost_writes
        )

    def to_json(self) -> dict[str, Any]:
        """The report without the history, ready for ``json.dumps``."""
        doc = asdict(self)
        del doc["history"]
        return doc


@dataclass(frozen=True)
class Shape:
    """The cluster and load a run was asked for."""

    nodes: int
    rep: int
    clients: int
    keys: list[str]
    duration: float
    read_ratio: float
    seed: int
    preload: int = 0
    """Keys bulk-loaded before the faults start, all read back at the end."""
    membership: bool = False
    """Whether restarts, additions and removals of nodes were among the faults."""


@dataclass
class RunRecord:
    """What a run produced, before analysis."""

    history: list[Operation]
    faults: list[Fault]
    released: float
    unplanned_dead: set[int]
    dead_but_running: set[int]
    preload_s: float = 0.0
    preloaded: BulkCheck = field(default_factory=lambda: BulkCheck(0, 0, 0))
    final: list[Operation] = field(default_factory=list)
    """Every key read once more after the faults, by a new client."""


def analyse(shape: Shape, run: RunRecord) -> ChaosReport:
    _measure_unavailability(run, shape)
    started = time.monotonic()
    judgement = judge([*run.history, *run.final])
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
        checked=judgement.checked,
        verdict=judgement.verdict,
        violation=judgement.detail,
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
        preloaded=shape.preload,
        preload_s=round(run.preload_s, 2),
        preloaded_lost=run.preloaded.lost,
        preloaded_unreadable=run.preloaded.unreadable,
        membership=shape.membership,
        membership_errors=sum(f.error is not None for f in run.faults),
        final_reads=len(run.final),
        lost_writes=lost_writes(run.history, run.final, ()),
        history=[*run.history, *run.final],
    )


def _succeeded(op: Operation) -> bool:
    return op.outcome in (Outcome.OK, Outcome.NOT_FOUND)


def _affected(fault: Fault, shape: Shape) -> list[str]:
    """The keys whose primary was one of the fault's victims when it began; every key for the leading master."""
    if fault.kind in LEADER_FAULTS:
        return list(shape.keys)
    dead, victims = node_ids(fault.dead_before), node_ids(fault.nodes)
    return [key for key in shape.keys if primary_of(key, shape.nodes, shape.rep, dead) in victims]


def _measure_unavailability(run: RunRecord, shape: Shape) -> None:
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


def _reads_across_faults(run: RunRecord, shape: Shape) -> tuple[int, int]:
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


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def summary_table(report: ChaosReport) -> Any:
    table = measure_table(
        f"chaos: {report.nodes} nodes, {report.rep} replicas, {report.clients} clients, {report.duration_s:g} s"
    )
    verdict = {Verdict.LINEARIZABLE: "[bold green]linearizable[/]", Verdict.VIOLATION: "[bold red]NOT LINEARIZABLE[/]"}
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
    lost = len(report.lost_writes)
    table.add_row(
        "keys read back after the faults",
        f"{report.final_reads}, lost writes: {lost}"
        if not lost
        else f"{report.final_reads}, [bold red]lost writes: {lost}[/]",
    )
    table.add_row("gets reading a value written before the latest fault", f"{report.reads_across_faults:,}")
    table.add_row("  of which across a failover of the key's primary", f"{report.reads_across_failovers:,}")
    if report.unplanned_dead:
        table.add_row("declared dead without a fatal fault", ", ".join(report.unplanned_dead))
    if report.membership_errors:
        table.add_row("[bold red]restart, add or remove commands that failed[/]", f"{report.membership_errors}")
    if report.dead_but_running:
        table.add_row("[bold red]declared dead but still running[/]", ", ".join(report.dead_but_running))
    if report.preloaded:
        table.add_row("keys loaded before the faults", f"{report.preloaded:,} in {report.preload_s:.1f} s")
        lost = report.preloaded_lost
        table.add_row("  lost (read back wrong, missing or with no replica)", f"[bold red]{lost:,}[/]" if lost else "0")
        table.add_row("  unreadable at the end", f"{report.preloaded_unreadable:,}")
    return table


def faults_table(report: ChaosReport) -> Any:
    from rich.table import Table  # noqa: PLC0415

    table = Table(title="faults")
    for column in ("t", "fault", "nodes", "stopped or cut for", "keys hit", "unavailable"):
        table.add_column(column, justify="left" if column in ("fault", "nodes") else "right")
    if report.membership:
        table.add_column("command took", justify="right")
    for f in report.faults:
        stopped = f"{f.duration_s:.2f} s" if f.duration_s else "-"
        row = [f"{f.t:.2f} s", f.kind, ", ".join(f.nodes), stopped, str(f.affected_keys), _ms(f.unavailable_ms)]
        if report.membership:
            row.append(f"[red]{f.error}[/]" if f.error else f"{f.took_s:.2f} s" if f.took_s else "-")
        table.add_row(*row)
    return table


def rounds_summary(reports: list[ChaosReport]) -> Any:
    """Totals over every round of a long run."""
    faults: Counter[str] = Counter()
    for report in reports:
        faults.update(report.faults_by_kind)
    table = measure_table(f"chaos: {len(reports)} rounds")
    table.add_row("operations checked", f"{sum(r.checked for r in reports):,}")
    table.add_row("faults injected", ", ".join(f"{kind} {count}" for kind, count in sorted(faults.items())) or "none")
    table.add_row("verdicts", ", ".join(f"{v} {n}" for v, n in sorted(Counter(r.verdict for r in reports).items())))
    if any(r.preloaded for r in reports):
        table.add_row("preloaded keys lost", f"{sum(r.preloaded_lost for r in reports):,}")
    return table
