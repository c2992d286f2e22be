"""``kvcluster bench recovery`` and ``rebalance``: their commands, tables, timelines, and section of the report.

A timeline has two panels over the same time axis, throughput and p99
latency per bucket, with the event (kill or add) marked and the healing
window shaded. ``run_healing`` runs the report's recovery and rebalance runs
at each size asked for, and ``write_healing`` puts their section (prose from
``report_template.md``) into the report, in place of a previous one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kvcluster.bench.common import JsonOut, Nodes, Plot, check_shape
from kvcluster.bench.healing import HealingRun, HealingShape, Rebalance, Recovery, check_keys, run_healing_event
from kvcluster.bench.output import (
    measure_table,
    png_chart,
    run_benchmark,
    template,
    terminal_chart,
    to_json,
    write_section,
)
from kvcluster.bench.workload import Phase
from kvcluster.errors import UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import RenderableType
    from rich.progress import Progress

HEALING_TIMEOUT = 900.0


def ms(value: float | None, digits: int = 1) -> str:
    """Milliseconds for a table cell ("n/a" when no operation completed)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def versus(phase: Phase, before: Phase) -> str:
    """Throughput in ``phase`` against ``before``, with the ratio."""
    ratio = f" ({phase.ops_per_s / before.ops_per_s:.0%})" if before.ops_per_s else ""
    return f"{phase.ops_per_s:,.0f} / {before.ops_per_s:,.0f} ops/s{ratio}"


def _specific(result: HealingRun) -> tuple[str, list[tuple[str, str]]]:
    """The title of a run's table, and the rows only its kind of run has."""
    before = result.phase("before")
    if isinstance(result, Recovery):
        return f"Recovery: {result.keys:,} keys, {result.nodes} nodes, rep {result.rep}", [
            ("killed (SIGKILL)", f"{result.killed} at {result.event_t:.1f} s"),
            ("declared dead after", f"{result.declared_dead_s:.2f} s"),
            (f"time to restore {result.rep} replicas of every slot", f"{result.restore_s:.2f} s"),
            ("slots / keys copied", f"{result.slots_copied:,} / {result.keys_copied:,}"),
            ("throughput while copying / before", versus(result.phase("copying"), before)),
            ("slots per live node at the end", " ".join(str(v) for v in result.slots_per_node.values())),
        ]
    assert isinstance(result, Rebalance)
    return f"Rebalance: {result.keys:,} keys, {result.nodes} + {len(result.added)} nodes, rep {result.rep}", [
        ("added", f"{', '.join(result.added)} at {result.event_t:.1f} s"),
        ("joined after", f"{result.joined_s:.2f} s"),
        ("totals within one slot after", _seconds(result.totals_within_one_s)),
        ("every rank within one slot after", _seconds(result.ranks_within_one_s)),
        ("moves over (table still) after", f"{result.settled_s:.2f} s"),
        ("spread at each rank / in total at the end", f"{result.rank_spread} / {result.total_spread}"),
        ("throughput while moving / before", versus(result.phase("during"), before)),
    ]


def healing_table(result: HealingRun) -> RenderableType:
    """The run's own figures, then throughput and latency per phase, keys lost, and the machine's load."""
    title, specific = _specific(result)
    table = measure_table(title)
    rate = result.keys / result.fill_s if result.fill_s else 0.0
    table.add_row("keys loaded (100-byte values)", f"{result.keys:,} in {result.fill_s:.1f} s ({rate:,.0f}/s)")
    for name, value in specific:
        table.add_row(name, value)
    for p in result.phases:
        table.add_row(
            f"{p.name} ({p.start_s:.1f}-{p.end_s:.1f} s): ops/s, p50 / p99 ms, failed",
            f"{p.ops_per_s:,.0f}, {ms(p.p50_ms)} / {ms(p.p99_ms)}, {p.failed}",
        )
    lost = result.keys_lost + result.keys_unreadable
    table.add_row("keys lost / unreadable at the end", f"[bold red]{lost}[/]" if lost else "0 / 0")
    table.add_row(
        "load average at start / end (1 min)", f"{result.load_average['start'][0]} / {result.load_average['end'][0]}"
    )
    return table


def _event(result: HealingRun) -> str:
    if isinstance(result, Recovery):
        return f"kill {result.killed}"
    assert isinstance(result, Rebalance)
    return f"add {', '.join(result.added)}"


def _series(result: HealingRun) -> tuple[list[float], list[float], list[float | None]]:
    ts = [b.t + result.bucket_s / 2 for b in result.timeline]
    return ts, [b.ops_per_s for b in result.timeline], [b.p99_ms for b in result.timeline]


def plot_healing(result: HealingRun) -> None:
    """Throughput, then p99, per bucket in the terminal; the event and the end of the healing as vertical lines."""
    ts, ops, p99 = _series(result)
    marks = [result.event_t] + ([result.healed_t] if result.healed_t is not None else [])
    title = f"ops/s per {result.bucket_s:g} s ({_event(result)} at {result.event_t:.1f} s)"
    with terminal_chart(title, ops) as plt:
        plt.plot(ts, ops)
        for x in marks:
            plt.vline(x)
    known = [(t, v) for t, v in zip(ts, p99, strict=True) if v is not None]
    latencies = [v for _, v in known]
    with terminal_chart("p99 latency, ms", latencies) as plt:
        plt.plot([t for t, _ in known], latencies)
        for x in marks:
            plt.vline(x)


def chart_healing(result: HealingRun, path: Path) -> None:
    """Throughput and p99 per bucket, the event as a line and the healing window shaded, as a PNG."""
    if isinstance(result, Recovery):
        title = f"kill -9 {result.killed}: {result.keys:,} keys, {result.nodes} nodes, rep {result.rep}"
        window = f"restoring {result.rep} replicas ({result.restore_s:.1f} s)"
    else:
        assert isinstance(result, Rebalance)
        added = ", ".join(result.added)
        title = f"add {added} to {result.nodes} nodes: {result.keys:,} keys, rep {result.rep}"
        window = f"moving slots ({result.settled_s:.1f} s)"
    ts, ops, p99 = _series(result)
    with png_chart(path, rows=2) as (top, bottom):
        top.plot(ts, ops, color="tab:blue", linewidth=1.2)
        top.set_ylabel("ops/s")
        top.set_ylim(bottom=0)
        top.set_title(title)
        bottom.plot(ts, [float("nan") if v is None else v for v in p99], color="tab:red", linewidth=1.2)
        bottom.set_ylabel("p99 latency, ms")
        bottom.set_xlabel("seconds from the start of the load")
        bottom.set_ylim(bottom=0)
        for ax in (top, bottom):
            ax.axvline(result.event_t, color="black", linestyle="--", linewidth=1, label=_event(result))
            if result.healed_t is not None:
                ax.axvspan(result.event_t, result.healed_t, color="tab:orange", alpha=0.2, label=window)
            ax.grid(alpha=0.3)
        top.legend(loc="lower right", fontsize=8)


# --- the report's section ---


@dataclass(frozen=True)
class HealingSizes:
    """The cluster shapes of the healing runs (the sizes in keys come from the command line)."""

    recovery_nodes: int
    recovery_rep: int
    rebalance_nodes: int
    rebalance_rep: int
    rebalance_add: int
    duration: float
    clients: int


FULL_HEALING = HealingSizes(7, 3, 5, 3, 2, 5.0, 2)
QUICK_HEALING = HealingSizes(3, 2, 3, 2, 1, 1.5, 1)


@dataclass
class HealingResults:
    recoveries: list[Recovery] = field(default_factory=list)
    rebalances: list[Rebalance] = field(default_factory=list)
    command: str = ""
    """The report command that measured them."""

    def __bool__(self) -> bool:
        return bool(self.recoveries or self.rebalances)


def healing_command(recovery_keys: Sequence[int], rebalance_keys: Sequence[int], *, quick: bool, only: bool) -> str:
    """The ``kvcluster bench report`` command line that runs these healing runs."""
    words = ["kvcluster bench report"]
    words += ["--quick"] if quick else []
    words += ["--only-healing"] if only else []
    words += [f"--recovery-keys {','.join(map(str, recovery_keys))}"] if recovery_keys else []
    words += [f"--rebalance-keys {','.join(map(str, rebalance_keys))}"] if rebalance_keys else []
    return " ".join(words)


def run_healing(
    sizes: HealingSizes, recovery_keys: Sequence[int], rebalance_keys: Sequence[int], progress: Progress
) -> HealingResults:
    s = sizes
    recoveries = [
        HealingShape(s.recovery_nodes, s.recovery_rep, keys, s.duration, s.clients, HEALING_TIMEOUT)
        for keys in recovery_keys
    ]
    rebalances = [
        HealingShape(s.rebalance_nodes, s.rebalance_rep, keys, s.duration, s.clients, HEALING_TIMEOUT, s.rebalance_add)
        for keys in rebalance_keys
    ]
    results = HealingResults()
    for shape in [*recoveries, *rebalances]:
        run = run_healing_event(shape, progress)
        if isinstance(run, Recovery):
            results.recoveries.append(run)
        else:
            results.rebalances.append(run)
    return results


def _load_note(run: HealingRun) -> str:
    start, end = run.load_average["start"], run.load_average["end"]
    cores = os.cpu_count() or 1
    note = (
        f"load average {start[0]:g} before the cluster started, {end[0]:g} at the end (1 min; the end counts this "
        "run's own dozen processes, the start the previous run's for about a minute)"
    )
    if start[0] > cores:
        note += f": **busy, {start[0]:g} before the start is above the {cores} cores**"
    return note


def _p99s(run: HealingRun) -> str:
    return " / ".join(ms(run.phase(name).p99_ms, 0) for name in ("before", "during", "after"))


def _recovery_row(r: Recovery) -> str:
    before, during, copying = (r.phase(n) for n in ("before", "during", "copying"))
    copy_ratio = copying.ops_per_s / before.ops_per_s if before.ops_per_s else None
    return (
        f"| {r.keys:,} | {r.nodes}, {r.rep} | **{r.restore_s:.1f} s** | {r.declared_dead_s:.2f} s "
        f"| {r.slots_copied:,} / {r.keys_copied:,} | {before.ops_per_s:,.0f} "
        f"| {during.ops_per_s:,.0f} ({_ratio(r.throughput_ratio)}) | {copying.ops_per_s:,.0f} ({_ratio(copy_ratio)}) "
        f"| {_p99s(r)} | **{r.keys_lost + r.keys_unreadable}** |"
    )


def _rebalance_row(r: Rebalance) -> str:
    before, during = r.phase("before"), r.phase("during")
    return (
        f"| {r.keys:,} | {r.nodes} + {len(r.added)}, rep {r.rep} | {r.joined_s:.1f} s "
        f"| {_seconds(r.totals_within_one_s)} | {_seconds(r.ranks_within_one_s)} | **{r.settled_s:.1f} s** "
        f"| {before.ops_per_s:,.0f} | {during.ops_per_s:,.0f} ({_ratio(r.throughput_ratio)}) "
        f"| {_p99s(r)} | {r.rank_spread} | **{r.keys_lost + r.keys_unreadable}** |"
    )


RECOVERY_HEADER = [
    "| keys | nodes, rep | time to restore | declared dead | slots / keys copied | ops/s before | ops/s during"
    " (ratio) | ops/s copying (ratio) | p99 ms before / during / after | keys lost |",
    "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]
REBALANCE_HEADER = [
    "| keys | nodes | joined | totals within one | every rank within one | moves over | ops/s before | ops/s"
    " during (ratio) | p99 ms before / during / after | spread per rank at the end | keys lost |",
    "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
]


def _runs_lines(
    kind: str, prose: list[str], runs: Sequence[HealingRun], rows: list[str], header: list[str]
) -> list[str]:
    lines = [*prose, *header, *rows, ""]
    for r in runs:
        lines += [f"![{kind} at {r.keys:,} keys]({kind}_{r.keys}.png)", "", f"`{r.command}`: {_load_note(r)}.", ""]
    return lines


def healing_markdown(results: HealingResults) -> list[str]:
    """The section's lines (without the markers ``write_section`` adds)."""
    lines = template("healing", command=results.command)
    if results.recoveries:
        rows = [_recovery_row(r) for r in results.recoveries]
        lines += _runs_lines("recovery", template("recovery"), results.recoveries, rows, RECOVERY_HEADER)
    if results.rebalances:
        rows = [_rebalance_row(r) for r in results.rebalances]
        lines += _runs_lines("rebalance", template("rebalance"), results.rebalances, rows, REBALANCE_HEADER)
    return lines + template("healing_after")


def write_healing(out: Path, results: HealingResults) -> None:
    """Charts beside ``out``, the runs into its JSON copy, and the section into ``out`` (kept or created)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for run in [*results.recoveries, *results.rebalances]:
        chart_healing(run, out.parent / f"{'recovery' if isinstance(run, Recovery) else 'rebalance'}_{run.keys}.png")
    data: dict[str, Any] = {
        "recovery": to_json(results.recoveries),
        "rebalance": to_json(results.rebalances),
        "healing_command": results.command,
    }
    write_section(out, "healing", healing_markdown(results), data)


# --- the commands ---


def _run_command(shape: HealingShape, plot: bool, json_out: JsonOut) -> None:
    check_shape(shape.nodes, [shape.rep])
    result = run_benchmark(
        lambda progress: run_healing_event(shape, progress),
        healing_table,
        plot_healing,
        to_json,
        plot=plot,
        json_out=json_out,
    )
    check_keys(result)


FilledKeys = Annotated[int, typer.Option("--keys", min=1, help="Keys with 100-byte values to load first.")]
LoadClients = Annotated[int, typer.Option("--clients", min=1, help="Load client processes.")]


def recovery_command(
    nodes: Nodes = 7,
    rep: Annotated[int, typer.Option("--rep", min=2, help="Replicas per key (at least 2).")] = 3,
    keys: FilledKeys = 100_000,
    duration: Annotated[
        float,
        typer.Option("--duration", min=1.0, help="Seconds of load before the kill, and again after the healing."),
    ] = 5.0,
    clients: LoadClients = 2,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, help="Give up when the slots are not whole this long after the kill.")
    ] = 600.0,
    plot: Plot = False,
    json_out: JsonOut = None,
) -> None:
    """SIGKILL a node under load: time until every slot has rep replicas again, throughput and p99 meanwhile."""
    if nodes - 1 < rep:
        raise UsageError(f"after a kill {nodes - 1} nodes cannot hold {rep} replicas; use more --nodes or less --rep")
    _run_command(HealingShape(nodes, rep, keys, duration, clients, timeout), plot, json_out)


def rebalance_command(
    nodes: Annotated[int, typer.Option("--nodes", min=1, help="Storage nodes before the add.")] = 5,
    rep: Annotated[int, typer.Option("--rep", min=1, help="Replicas per key.")] = 3,
    add: Annotated[int, typer.Option("--add", min=1, max=64, help="Nodes to add, as add-node --count does.")] = 2,
    keys: FilledKeys = 100_000,
    duration: Annotated[
        float,
        typer.Option("--duration", min=1.0, help="Seconds of load before the add, and again after the moves."),
    ] = 5.0,
    clients: LoadClients = 2,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, help="Give up when the moves are not over this long after the add.")
    ] = 600.0,
    plot: Plot = False,
    json_out: JsonOut = None,
) -> None:
    """Add nodes under load: time until the slots are spread over them, throughput and p99 meanwhile."""
    _run_command(HealingShape(nodes, rep, keys, duration, clients, timeout, add), plot, json_out)
