"""How failover results are shown: the summary tables, the terminal timeline and the PNG timeline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvcluster.bench.failover_analysis import TIMELINE_BIN, Failover, FailoverSeries, summarise
from kvcluster.bench.output import measure_table, ms_pair, png_chart, terminal_chart

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import RenderableType


def _red_if(value: int | str, bad: bool) -> str:
    return f"[bold red]{value}[/]" if bad else str(value)


def failover_table(result: Failover) -> RenderableType:
    """Every figure of one run."""
    after = " after the load" if result.keys_loaded else ""
    mode = ", idle" if result.idle else ""
    table = measure_table(
        f"Failover: SIGKILL {result.killed} at {result.kill_t:.2f} s{after} "
        f"({result.nodes} nodes, rep {result.rep}{mode})"
    )
    if result.keys_loaded:
        rate = result.keys_loaded / result.load_s if result.load_s else 0.0
        table.add_row(
            "keys loaded (100-byte values)", f"{result.keys_loaded:,} in {result.load_s:.1f} s ({rate:,.0f}/s)"
        )
    table.add_row(
        "keys (victim primary / backup / unrelated)",
        " / ".join(str(result.keys.get(g, 0)) for g in ("primary", "backup", "unrelated")),
    )
    table.add_row("unavailable, median / max (victim primary keys)", ms_pair(result.unavailable_ms))
    table.add_row("keys never available again", _red_if(result.unrecovered_keys, result.unrecovered_keys > 0))
    table.add_row("writes unavailable, median / max (victim backup keys)", ms_pair(result.backup_write_unavailable_ms))
    table.add_row(
        "nodes falsely declared dead", _red_if(", ".join(result.false_dead) or "none", bool(result.false_dead))
    )
    table.add_row("acknowledged writes", f"{result.acked_writes:,}")
    lost = result.lost_acked_writes
    table.add_row("acknowledged writes lost", _red_if(lost, lost > 0))
    if result.keys_loaded:
        table.add_row("  of which bulk-loaded keys", _red_if(result.loaded_keys_lost, result.loaded_keys_lost > 0))
    table.add_row("keys not readable at the end", str(result.unverified_keys))
    table.add_row("ops that did not complete", str(result.failed_ops))
    if result.error:
        table.add_row("[bold red]run not completed[/]", f"[bold red]{result.error}[/]")
    return table


def series_table(series: FailoverSeries) -> RenderableType:
    """One row per run, then the figures over all of them."""
    from rich.console import Group  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=_series_title(series))
    for column in ("run", "killed", "load s", "unavailable median / max", "never back", "falsely dead", "lost writes"):
        table.add_column(column, justify="left" if column in ("killed", "falsely dead") else "right")
    for index, run in enumerate(series.runs, start=1):
        table.add_row(
            str(index),
            run.killed,
            f"{run.load_s:.1f}" if run.keys_loaded else "-",
            ms_pair(run.unavailable_ms),
            _red_if(run.unrecovered_keys, run.unrecovered_keys > 0),
            _red_if(", ".join(run.false_dead) or "none", bool(run.false_dead)),
            _red_if(run.lost_acked_writes, run.lost_acked_writes > 0),
        )
    summary = (
        f"over {series.kills} kills: unavailable {ms_pair(series.unavailable_ms)} (median of medians / max), "
        f"{series.false_dead} nodes falsely declared dead in {series.runs_with_false_dead} runs, "
        f"{series.lost_acked_writes} acknowledged writes lost, {series.unverified_keys} keys unreadable"
    )
    errors = [f"[bold red]run {i}: {run.error}[/]" for i, run in enumerate(series.runs, start=1) if run.error]
    return Group(table, summary, *errors)


def _series_title(series: FailoverSeries) -> str:
    loaded = f", kill right after loading {series.keys_loaded:,} keys" if series.keys_loaded else ""
    mode = "idle" if series.idle else "under load"
    return f"Failover {mode}: {series.nodes} nodes, rep {series.rep}{loaded}"


def runs_table(runs: Sequence[Failover]) -> RenderableType:
    """The table for one run, or for a series of them."""
    return failover_table(runs[0]) if len(runs) == 1 else series_table(summarise(runs))


def worst(runs: Sequence[Failover]) -> Failover | None:
    """The run whose victim's keys stayed unavailable longest (never back counts as longest), if any got to it."""
    measured = [r for r in runs if r.timeline]
    return max(measured, key=lambda r: (r.unrecovered_keys, r.unavailable_ms["max"] or 0.0), default=None)


def plot_failover(runs: Sequence[Failover]) -> None:
    """The ops/s timeline of the run (of the worst run, when there are several) in the terminal."""
    result = worst(runs)
    if result is None:
        return
    per_second = 1 / TIMELINE_BIN
    which = f"worst of {len(runs)} runs; " if len(runs) > 1 else ""
    title = f"{which}ops/s per {TIMELINE_BIN * 1000:.0f} ms; {result.killed} killed at {result.kill_t:.2f} s (red line)"
    ops = [p["ops"] * per_second for p in result.timeline]
    with terminal_chart(title, ops, width=80) as plt:
        plt.plot([p["t"] for p in result.timeline], ops)
        plt.vline(result.kill_t, "red")
        plt.xlabel("seconds")


def chart_failover(result: Failover, path: Path) -> None:
    per_second = 1 / TIMELINE_BIN
    ts = [p["t"] for p in result.timeline]
    bottom = [0.0] * len(ts)
    names = {
        "primary": f"keys {result.killed} was primary for",
        "backup": f"keys {result.killed} was a backup for",
        "unrelated": "other keys",
    }
    with png_chart(path, width=8) as ax:
        for group, label in names.items():
            if not result.timeline or group not in result.timeline[0]:
                continue
            values = [p[group] * per_second for p in result.timeline]
            ax.bar(ts, values, TIMELINE_BIN, bottom=bottom, align="edge", label=label)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.axvline(result.kill_t, color="red", linestyle="--", label=f"SIGKILL {result.killed}")
        ax.set_xlabel("seconds since the load started")
        ax.set_ylabel(f"successful ops/s (per {TIMELINE_BIN * 1000:.0f} ms)")
        ax.set_title(f"Failover under load: {result.nodes} nodes, rep {result.rep}")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, frameon=False)
