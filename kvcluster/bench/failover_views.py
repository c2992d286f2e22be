"""How failover results are shown: tables, terminal and PNG charts, and their sections of the report.

One run (``Failover``), several kills of one shape (``FailoverSeries``), and
the sweep over data sizes (a ``FailoverSeries`` per size and mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvcluster.bench.bulk import BULK_BATCH, BULK_CLIENTS, BULK_WINDOW
from kvcluster.bench.failover_analysis import (
    KILL_AFTER_LOAD,
    PROBE_PAUSE,
    TIMELINE_BIN,
    Failover,
    FailoverSeries,
    summarise,
)
from kvcluster.bench.output import markdown_table, ms_pair, png_chart, rich_table, template, terminal_chart

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import RenderableType

MODES = {True: "idle", False: "under load"}


def _red_if(value: int | str, bad: bool) -> str:
    return f"[bold red]{value}[/]" if bad else str(value)


def _measures(result: Failover) -> list[list[str]]:
    """Every figure of one run, as (measure, value) rows."""
    rows = []
    if result.keys_loaded:
        rate = result.keys_loaded / result.load_s if result.load_s else 0.0
        rows.append(
            ["keys loaded (100-byte values)", f"{result.keys_loaded:,} in {result.load_s:.1f} s ({rate:,.0f}/s)"]
        )
    groups = " / ".join(str(result.keys.get(g, 0)) for g in ("primary", "backup", "unrelated"))
    lost = result.lost_acked_writes
    rows += [
        ["keys (victim primary / backup / unrelated)", groups],
        ["unavailable, median / max (victim primary keys)", ms_pair(result.unavailable_ms)],
        ["keys never available again", _red_if(result.unrecovered_keys, result.unrecovered_keys > 0)],
        ["writes unavailable, median / max (victim backup keys)", ms_pair(result.backup_write_unavailable_ms)],
        ["nodes falsely declared dead", _red_if(", ".join(result.false_dead) or "none", bool(result.false_dead))],
        ["acknowledged writes", f"{result.acked_writes:,}"],
        ["acknowledged writes lost", _red_if(lost, lost > 0)],
    ]
    if result.keys_loaded:
        rows.append(["  of which bulk-loaded keys", _red_if(result.loaded_keys_lost, result.loaded_keys_lost > 0)])
    rows += [
        ["keys not readable at the end", str(result.unverified_keys)],
        ["ops that did not complete", str(result.failed_ops)],
    ]
    if result.error:
        rows.append(["[bold red]run not completed[/]", f"[bold red]{result.error}[/]"])
    return rows


def failover_table(result: Failover) -> RenderableType:
    """Every figure of one run."""
    after = " after the load" if result.keys_loaded else ""
    mode = ", idle" if result.idle else ""
    title = (
        f"Failover: SIGKILL {result.killed} at {result.kill_t:.2f} s{after} "
        f"({result.nodes} nodes, rep {result.rep}{mode})"
    )
    return rich_table(title, ["measure", "value"], _measures(result))


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


def keys_label(keys: int) -> str:
    """10000 -> 10k, 2000000 -> 2M."""
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if keys >= size:
            return f"{keys / size:g}{unit}"
    return str(keys)


def sweep_table(points: Sequence[FailoverSeries]) -> RenderableType:
    from rich.table import Table  # noqa: PLC0415

    first = points[0]
    kills = f"{first.kills} kill{'s' if first.kills > 1 else ''}"
    table = Table(title=f"Failover after a bulk load: {first.nodes} nodes, rep {first.rep}, {kills} each")
    columns = ["keys", "mode", "load s", "unavailable\nms, med/max", "never\nback", "falsely\ndead"]
    for column in [*columns, "lost\nwrites", "failed\nruns"]:
        table.add_column(column, justify="left" if column == "mode" else "right")
    for point in points:
        red = point.false_dead or point.lost_acked_writes or point.unrecovered_keys or point.failed_runs
        table.add_row(
            f"{point.keys_loaded:,}",
            "idle" if point.idle else "load",
            f"{point.load_s['median']:.1f}",
            _ms_figures(point.unavailable_ms),
            str(point.unrecovered_keys),
            f"{point.false_dead} ({point.runs_with_false_dead} runs)" if point.false_dead else "0",
            str(point.lost_acked_writes),
            str(point.failed_runs),
            style="bold red" if red else None,
        )
    return table


def _ms_figures(pair: dict[str, float | None]) -> str:
    return "/".join("-" if v is None else f"{v:.0f}" for v in (pair["median"], pair["max"]))


def _series(points: Sequence[FailoverSeries], idle: bool, which: str) -> list[float]:
    """One figure per size for one mode; 0 where it is missing (a key never came back)."""
    return [p.unavailable_ms[which] or 0.0 for p in points if p.idle == idle]


def plot_sweep(points: Sequence[FailoverSeries]) -> None:
    sizes = [keys_label(p.keys_loaded) for p in points if p.idle]
    xs = list(range(1, len(sizes) + 1))
    lines = {(mode, which): _series(points, idle, which) for idle, mode in MODES.items() for which in ("median", "max")}
    ys = [v for line in lines.values() for v in line]
    with terminal_chart("Unavailability after kill -9 (ms) against keys loaded", ys, width=80) as plt:
        for (mode, which), line in lines.items():
            plt.plot(xs, line, label=f"{mode}, {which}", marker="hd")
        plt.xticks(xs, sizes)
        plt.xlabel("keys loaded right before the kill")


def chart_sweep(points: Sequence[FailoverSeries], path: Path) -> None:
    first = points[0]
    kills = f"{first.kills} kill{'s' if first.kills > 1 else ''}"
    with png_chart(path, width=8) as ax:
        for idle, color in ((True, "tab:blue"), (False, "tab:orange")):
            mine = [p for p in points if p.idle == idle]
            xs = [p.keys_loaded for p in mine]
            ax.plot(xs, _series(points, idle, "median"), "o-", color=color, label=f"{MODES[idle]}, median")
            ax.plot(xs, _series(points, idle, "max"), "v--", color=color, alpha=0.6, label=f"{MODES[idle]}, max")
            for p in mine:
                trouble = _trouble(p)
                if trouble:
                    ax.annotate(trouble, (p.keys_loaded, p.unavailable_ms["median"] or 0.0), color="red", fontsize=7)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks([p.keys_loaded for p in points if p.idle], [keys_label(p.keys_loaded) for p in points if p.idle])
        top = max([*_series(points, True, "max"), *_series(points, False, "max"), 1.0])
        ax.set_ylim(0, top * 1.15)
        ax.set_xlabel("keys loaded (100-byte values) right before the kill")
        ax.set_ylabel("unavailability of the victim's keys (ms)")
        ax.set_title(f"Failover after a bulk load: {first.nodes} nodes, rep {first.rep}, {kills} per point")
        ax.legend(fontsize=8, loc="lower right")


def _trouble(point: FailoverSeries) -> str:
    """What went wrong at one point, in a few words (empty when nothing did)."""
    parts = []
    if point.false_dead:
        parts.append(f"{point.false_dead} falsely dead")
    if point.unrecovered_keys:
        parts.append(f"{point.unrecovered_keys} keys never back")
    if point.lost_acked_writes:
        parts.append(f"{point.lost_acked_writes} writes lost")
    if point.failed_runs:
        parts.append(f"{point.failed_runs} runs failed")
    return ", ".join(parts)


def sweep_markdown(points: Sequence[FailoverSeries], chart: str) -> list[str]:
    """The report's section on failover after a bulk load."""

    first = points[0]
    lines = template(
        "sweep",
        nodes=first.nodes,
        rep=first.rep,
        batch=BULK_BATCH,
        window=BULK_WINDOW,
        clients=BULK_CLIENTS,
        kill_after=KILL_AFTER_LOAD,
        pause_ms=PROBE_PAUSE * 1000,
        kills=f"{first.kills} kill{'s' if first.kills > 1 else ''}",
        chart=chart,
    )
    lines += [
        "| keys loaded | at the kill | load s | unavailable, median / max | keys never back | falsely dead "
        "| writes lost | runs failed |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {p.keys_loaded:,} | {MODES[p.idle]} | {p.load_s['median']:.1f} | {ms_pair(p.unavailable_ms)} "
        f"| {p.unrecovered_keys} | {p.false_dead} | **{p.lost_acked_writes}** | {p.failed_runs} |"
        for p in points
    ]
    errors = [
        f"- {p.keys_loaded:,} keys, {MODES[p.idle]}, {r.killed}: {r.error}" for p in points for r in p.runs if r.error
    ]
    if errors:
        lines += ["", "Runs that did not get to the kill:", "", *errors]
    return [*lines, ""]


def failover_markdown(failover: Failover, chart: str) -> list[str]:
    """The report's section on one failover under load."""
    lines = template(
        "failover",
        **{k: getattr(failover, k) for k in ("nodes", "rep", "duration_s", "kill_t", "killed")},
        **{group: failover.keys.get(group, 0) for group in ("primary", "backup", "unrelated")},
        chart=chart,
    )
    lines += markdown_table(["measure", "value"], _measures(failover))
    return lines + template("failover_after")


def sweep_command_line(sizes: Sequence[int], nodes: int, rep: int, runs: int) -> str:
    return (
        f"kvcluster bench failover-sweep --keys {','.join(map(str, sizes))} --nodes {nodes} --rep {rep} "
        f"--runs {runs} --plot"
    )
