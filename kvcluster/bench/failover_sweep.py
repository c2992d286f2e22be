"""``kvcluster bench failover-sweep``: unavailability after a kill -9 against the number of keys loaded.

For every size, ``--runs`` failover runs with the cluster idle at the kill
(only probes running) and as many under load, each on a fresh cluster that is
filled with that many keys right before the kill (``failover.run_failovers``).
The results are shown as a table, a terminal chart (``--plot``) and a PNG
chart (``--png``); ``bench report --failover-keys`` adds the same to the
report, through ``sweep_markdown``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kvcluster.bench.bulk import BULK_CLIENTS
from kvcluster.bench.common import PRELOAD_BATCH, PRELOAD_WINDOW, JsonOut, Nodes, Plot, check_shape, int_list
from kvcluster.bench.failover import KILL_AFTER_LOAD, PROBE_PAUSE, FailoverShape, check_outcome, run_failovers
from kvcluster.bench.failover_analysis import FailoverSeries, summarise
from kvcluster.bench.output import ms_pair, png_chart, run_benchmark, terminal_chart, to_json
from kvcluster.errors import UsageError

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.progress import Progress

SWEEP_KEYS = "10000,100000,1000000,2000000"
MODES = {True: "idle", False: "under load"}


def run_sweep(
    sizes: Sequence[int], *, nodes: int, rep: int, runs: int, duration: float, progress: Progress
) -> list[FailoverSeries]:
    """For every size, ``runs`` kills idle then ``runs`` under load, each right after loading that many keys."""
    return [
        summarise(run_failovers(FailoverShape(nodes, rep, duration, keys, idle), runs, progress))
        for keys in sizes
        for idle in MODES
    ]


def keys_label(keys: int) -> str:
    """10000 -> 10k, 2000000 -> 2M."""
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if keys >= size:
            return f"{keys / size:g}{unit}"
    return str(keys)


def _mode(point: FailoverSeries) -> str:
    return MODES[point.idle]


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
    lines = [
        "## Failover after a bulk load",
        "",
        f"{first.nodes} nodes, {first.rep} replicas. For each size, a fresh cluster is filled with that many keys",
        f"(100-byte values, batches of {PRELOAD_BATCH}, {PRELOAD_WINDOW} messages in flight, {BULK_CLIENTS} client "
        f"processes) and a node is killed with SIGKILL {KILL_AFTER_LOAD:g} s after the load ends; every loaded key",
        "is read back at the end. *Idle*: only probes run at the kill (a few keys of the victim's, a round every",
        f"{PROBE_PAUSE * 1000:.0f} ms); *under load*: the failover benchmark's clients run. {first.kills} "
        f"kill{'s' if first.kills > 1 else ''} per point, of server1, server2... in turn, each on its own cluster.",
        "Unavailability is that of the victim's keys (median of the runs' medians / max of their maxes);",
        "*falsely dead* counts the healthy nodes the master declared dead (each is fenced and exits); a run",
        "*failed* when healthy nodes were lost before the kill (during the load), and has no unavailability.",
        "",
        f"![failover after a bulk load]({chart})",
        "",
        "| keys loaded | at the kill | load s | unavailable, median / max | keys never back | falsely dead "
        "| writes lost | runs failed |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {p.keys_loaded:,} | {_mode(p)} | {p.load_s['median']:.1f} | {ms_pair(p.unavailable_ms)} "
        f"| {p.unrecovered_keys} | {p.false_dead} | **{p.lost_acked_writes}** | {p.failed_runs} |"
        for p in points
    ]
    errors = [f"- {p.keys_loaded:,} keys, {_mode(p)}, {r.killed}: {r.error}" for p in points for r in p.runs if r.error]
    if errors:
        lines += ["", "Runs that did not get to the kill:", "", *errors]
    return [*lines, ""]


def sweep_command_line(sizes: Sequence[int], nodes: int, rep: int, runs: int) -> str:
    return (
        f"kvcluster bench failover-sweep --keys {','.join(map(str, sizes))} --nodes {nodes} --rep {rep} "
        f"--runs {runs} --plot"
    )


def sweep_json(points: Sequence[FailoverSeries]) -> dict[str, Any]:
    return {"points": to_json(list(points))}


def sweep_command(
    keys: Annotated[
        str, typer.Option("--keys", help="Keys to load before the kill, comma-separated: one point each.")
    ] = SWEEP_KEYS,
    nodes: Nodes = 7,
    rep: Annotated[int, typer.Option("--rep", min=2, help="Replicas per key.")] = 3,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Kills per size and mode, each on a fresh cluster.")] = 3,
    duration: Annotated[
        float, typer.Option("--duration", min=1.5, help="Seconds of each measured phase (the kill is at its start).")
    ] = 6.0,
    plot: Plot = False,
    json_out: JsonOut = None,
    png: Annotated[Path | None, typer.Option("--png", help="Also draw the chart as PNG to this file.")] = None,
) -> None:
    """Unavailability after kill -9 against keys loaded right before it, idle and under load."""
    if nodes < 2:
        raise UsageError("failover needs at least 2 nodes")
    check_shape(nodes, [rep])
    sizes = int_list(keys, "--keys")
    points = run_benchmark(
        lambda progress: run_sweep(sizes, nodes=nodes, rep=rep, runs=runs, duration=duration, progress=progress),
        sweep_table,
        plot_sweep,
        sweep_json,
        plot=plot,
        json_out=json_out,
    )
    if png is not None:
        chart_sweep(points, png)
    check_outcome([run for point in points for run in point.runs])
