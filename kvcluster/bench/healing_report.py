"""The healing section of ``kvcluster bench report``: recovery and rebalance runs at several sizes, as Markdown.

``run_healing`` runs ``recovery`` and ``rebalance`` at each size asked for;
``write_healing_charts`` draws one PNG per run beside the report;
``healing_markdown`` writes the section, with every run's exact command and
the machine's load average while it ran. With ``--only-healing`` the report
runs nothing else and ``splice_section`` puts the section into an existing
report in place of its previous healing section (between two HTML comments),
so the other sections, measured at another time, are kept as they are.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvcluster.bench.healing_load import HealingRun
from kvcluster.bench.healing_views import ms
from kvcluster.bench.output import splice, to_json
from kvcluster.bench.rebalance import Rebalance, RebalanceShape, chart_rebalance, run_rebalance
from kvcluster.bench.recovery import Recovery, RecoveryShape, chart_recovery, run_recovery

if TYPE_CHECKING:
    from rich.progress import Progress

BEGIN = "<!-- healing: written by kvcluster bench report -->"
END = "<!-- end of healing -->"
HEALING_TIMEOUT = 900.0


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

    def json(self) -> dict[str, Any]:
        return {
            "recovery": to_json(self.recoveries),
            "rebalance": to_json(self.rebalances),
            "healing_command": self.command,
        }


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
    return HealingResults(
        recoveries=[
            run_recovery(
                RecoveryShape(s.recovery_nodes, s.recovery_rep, keys, s.duration, s.clients, HEALING_TIMEOUT), progress
            )
            for keys in recovery_keys
        ],
        rebalances=[
            run_rebalance(
                RebalanceShape(
                    s.rebalance_nodes, s.rebalance_rep, s.rebalance_add, keys, s.duration, s.clients, HEALING_TIMEOUT
                ),
                progress,
            )
            for keys in rebalance_keys
        ],
    )


def write_healing_charts(results: HealingResults, directory: Path) -> dict[str, str]:
    """One PNG per run in ``directory``; run key (``recovery-100000``...) -> file name."""
    names: dict[str, str] = {}
    for recovery in results.recoveries:
        name = f"recovery_{recovery.keys}.png"
        chart_recovery(recovery, directory / name)
        names[f"recovery-{recovery.keys}"] = name
    for rebalance in results.rebalances:
        name = f"rebalance_{rebalance.keys}.png"
        chart_rebalance(rebalance, directory / name)
        names[f"rebalance-{rebalance.keys}"] = name
    return names


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


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def _recovery_lines(runs: Sequence[Recovery], charts: dict[str, str]) -> list[str]:
    lines = [
        "### Recovery: kill -9 of a node under load",
        "",
        "The cluster is filled through `kvcluster load`'s loader processes, client processes run a 50/50 get/put",
        "load on the filled keys (256 operations in flight each), and after a while server1 is killed with SIGKILL.",
        "*Time to restore* runs from the kill until the master's status shows every slot at its replica count",
        "with no copy under way; it includes the 0.7 s the master takes to declare the node dead. *During* is",
        "that whole window (the victim's keys are unavailable for its first second); *copying* starts when the",
        "node is declared dead. Throughput counts completed operations per 0.5 s bucket; p99 is over the",
        "operations of the phase. Every filled key is read back at the end.",
        "",
        "| keys | nodes, rep | time to restore | declared dead | slots / keys copied | ops/s before | ops/s during"
        " (ratio) | ops/s copying (ratio) | p99 ms before / during / after | keys lost |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        before, during, copying, after = (r.phase(n) for n in ("before", "during", "copying", "after"))
        copy_ratio = copying.ops_per_s / before.ops_per_s if before.ops_per_s else None
        lines.append(
            f"| {r.keys:,} | {r.nodes}, {r.rep} | **{r.restore_s:.1f} s** | {r.declared_dead_s:.2f} s "
            f"| {r.slots_copied:,} / {r.keys_copied:,} | {before.ops_per_s:,.0f} "
            f"| {during.ops_per_s:,.0f} ({_ratio(r.throughput_ratio)}) "
            f"| {copying.ops_per_s:,.0f} ({_ratio(copy_ratio)}) "
            f"| {ms(before.p99_ms, 0)} / {ms(during.p99_ms, 0)} / {ms(after.p99_ms, 0)} "
            f"| **{r.keys_lost + r.keys_unreadable}** |"
        )
    lines.append("")
    for r in runs:
        lines += [
            f"![recovery at {r.keys:,} keys]({charts[f'recovery-{r.keys}']})",
            "",
            f"`{r.command}`: {_load_note(r)}.",
            "",
        ]
    return lines


def _rebalance_lines(runs: Sequence[Rebalance], charts: dict[str, str]) -> list[str]:
    lines = [
        "### Rebalance: add-node under load",
        "",
        "The same fill and load on a smaller cluster, then nodes are added the way `kvcluster add-node --count N`",
        "adds them. The master copies replicas onto the new nodes and then moves primaries. *Totals within one*:",
        "the first moment every node holds within one slot of the others in total with no move under way.",
        "*Every rank within one*: the same at every rank (primary, first backup...), which the master does not aim",
        "for (it evens out totals and primaries; primaries end within two, see `healing.md`), so it may never",
        "come. *Moves over*: the last change of the table before it stayed still for 5 s; the shaded window in",
        "the charts ends there.",
        "",
        "| keys | nodes | joined | totals within one | every rank within one | moves over | ops/s before | ops/s"
        " during (ratio) | p99 ms before / during / after | spread per rank at the end | keys lost |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in runs:
        before, during, after = (r.phase(n) for n in ("before", "during", "after"))
        lines.append(
            f"| {r.keys:,} | {r.nodes} + {len(r.added)}, rep {r.rep} | {r.joined_s:.1f} s "
            f"| {_seconds(r.totals_within_one_s)} | {_seconds(r.ranks_within_one_s)} | **{r.settled_s:.1f} s** "
            f"| {before.ops_per_s:,.0f} | {during.ops_per_s:,.0f} ({_ratio(r.throughput_ratio)}) "
            f"| {ms(before.p99_ms, 0)} / {ms(during.p99_ms, 0)} / {ms(after.p99_ms, 0)} "
            f"| {r.rank_spread} | **{r.keys_lost + r.keys_unreadable}** |"
        )
    lines.append("")
    for r in runs:
        lines += [
            f"![rebalance at {r.keys:,} keys]({charts[f'rebalance-{r.keys}']})",
            "",
            f"`{r.command}`: {_load_note(r)}.",
            "",
        ]
    return lines


def healing_markdown(results: HealingResults, charts: dict[str, str]) -> list[str]:
    """The section, between the markers ``splice_section`` looks for."""
    lines = [BEGIN, "## Healing under load", ""]
    if results.command:
        lines += [
            f"Measured one run after the other by `{results.command}`; the command under each chart runs",
            "that run on its own.",
            "",
        ]
    if results.recoveries:
        lines += _recovery_lines(results.recoveries, charts)
    if results.rebalances:
        lines += _rebalance_lines(results.rebalances, charts)
    lines += [
        "Every run's per-bucket timeline and its phases (ops/s, p50, p99, failed operations) are in the JSON",
        "file beside this report.",
        "",
        END,
        "",
    ]
    return lines


def splice_section(report: str, section: str) -> str:
    """``report`` with this section replaced by ``section`` (or put before ``## Reproduce``, or appended)."""
    return splice(report, section, BEGIN, END)


def write_healing(out: Path, results: HealingResults) -> None:
    """Charts beside ``out``, the runs into its JSON copy, and the section into ``out`` (kept or created)."""
    import json  # noqa: PLC0415

    out.parent.mkdir(parents=True, exist_ok=True)
    charts = write_healing_charts(results, out.parent)
    data_path = out.with_suffix(".json")
    data: dict[str, Any] = json.loads(data_path.read_text()) if data_path.exists() else {}
    data.update(results.json())
    data_path.write_text(json.dumps(data, indent=2) + "\n")
    existing = out.read_text() if out.exists() else "# kvcluster performance report\n"
    out.write_text(splice_section(existing, "\n".join(healing_markdown(results, charts))))
