"""How healing runs (``recovery``, ``rebalance``) are shown: summary tables, timelines in the terminal and as PNG.

A timeline has two panels over the same time axis, throughput and p99
latency per bucket, with the event (kill or add) marked and the healing
window shaded. Also the check that fails the command when a key was lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvcluster.bench.common import BenchmarkError
from kvcluster.bench.healing_load import HealingRun, Phase
from kvcluster.bench.output import measure_table, png_chart, terminal_chart

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import RenderableType


def ms(value: float | None, digits: int = 1) -> str:
    """Milliseconds for a table cell ("n/a" when no operation completed)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def versus(phase: Phase, before: Phase) -> str:
    """Throughput in ``phase`` against ``before``, with the ratio."""
    ratio = f" ({phase.ops_per_s / before.ops_per_s:.0%})" if before.ops_per_s else ""
    return f"{phase.ops_per_s:,.0f} / {before.ops_per_s:,.0f} ops/s{ratio}"


def healing_table(result: HealingRun, title: str, specific: Sequence[tuple[str, str]]) -> RenderableType:
    """The run's own figures, then throughput and latency per phase, keys lost, and the machine's load."""
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


def check_keys(result: HealingRun) -> None:
    """Fail the command (after its output) when a filled key did not read back."""
    if result.keys_lost or result.keys_unreadable:
        raise BenchmarkError(
            f"{result.keys_lost} keys lost and {result.keys_unreadable} unreadable of {result.keys} after the healing"
        )


def _series(result: HealingRun) -> tuple[list[float], list[float], list[float | None]]:
    ts = [b.t + result.bucket_s / 2 for b in result.timeline]
    return ts, [b.ops_per_s for b in result.timeline], [b.p99_ms for b in result.timeline]


def plot_healing(result: HealingRun, event: str) -> None:
    """Throughput, then p99, per bucket in the terminal; the event and the end of the healing as vertical lines."""
    ts, ops, p99 = _series(result)
    marks = [result.event_t] + ([result.healed_t] if result.healed_t is not None else [])
    with terminal_chart(f"ops/s per {result.bucket_s:g} s ({event} at {result.event_t:.1f} s)", ops) as plt:
        plt.plot(ts, ops)
        for x in marks:
            plt.vline(x)
    known = [(t, v) for t, v in zip(ts, p99, strict=True) if v is not None]
    latencies = [v for _, v in known]
    with terminal_chart("p99 latency, ms", latencies) as plt:
        plt.plot([t for t, _ in known], latencies)
        for x in marks:
            plt.vline(x)


def chart_healing(result: HealingRun, path: Path, *, title: str, event: str, window: str) -> None:
    """Throughput and p99 per bucket, the event as a line and the healing window shaded, as a PNG."""
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
            ax.axvline(result.event_t, color="black", linestyle="--", linewidth=1, label=event)
            if result.healed_t is not None:
                ax.axvspan(result.event_t, result.healed_t, color="tab:orange", alpha=0.2, label=window)
            ax.grid(alpha=0.3)
        top.legend(loc="lower right", fontsize=8)
