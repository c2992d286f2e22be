"""``kvcluster bench restart`` and how its results are shown: tables, charts, their part of the report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kvcluster.bench.common import JsonOut, Nodes, Plot, check_shape, fsync_list
from kvcluster.bench.output import measure_table, png_chart, run_benchmark, template, terminal_chart, to_json
from kvcluster.bench.restart import RestartResult, RestartShape, run_restart
from kvcluster.errors import UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import RenderableType


def _lost(lost: int, unreadable: int) -> str:
    text = f"{lost} lost, {unreadable} unreadable"
    return text if not lost and not unreadable else f"[bold red]{text}[/]"


def _fraction(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _mib(value: float) -> str:
    return f"{value / (1 << 20):,.1f} MiB"


def restart_table(result: RestartResult) -> RenderableType:
    from rich.console import Group  # noqa: PLC0415

    w, n = result.whole, result.node
    sizes = measure_table(
        f"Restart: {result.keys:,} keys, {result.nodes} nodes, rep {result.rep}, fsync {result.fsync}"
    )
    disk = f"{_mib(result.disk_bytes)} / {result.disk_bytes_per_key_replica:,.0f} B"
    rss = f"{_mib(result.rss_bytes)} / {result.rss_bytes_per_key_replica:,.0f} B"
    added = f"{_mib(result.rss_bytes_empty)} / {result.rss_added_per_key_replica:,.0f} B"
    for measure, value in [
        ("first start, with no data", f"{result.empty_start_s:.2f} s"),
        ("bulk load", f"{result.load_s:.1f} s"),
        ("disk (du of the data root) / per key replica", disk),
        ("node RSS after the load / per key replica", rss),
        ("node RSS before the load / added per key replica", added),
        ("node RSS after the whole restart", _mib(result.rss_bytes_after_restart)),
    ]:
        sizes.add_row(measure, value)
    whole = measure_table("Whole cluster stopped and started again from its data (seconds from the start)")
    for measure, value in [
        ("stopping every process", f"{w.stop_s:.2f} s"),
        ("table published", f"{w.table_s:.2f} s"),
        ("serving (a get of a loaded key answered)", f"{w.serving_s:.2f} s"),
        (f"every slot at {result.rep} replicas, no copy under way", f"{w.replicas_s:.2f} s"),
        ("slots / keys copied", f"{w.slots_copied:,} / {w.keys_copied:,}"),
        ("'recovered' event", "yes" if w.recovered_event else "[bold red]no[/]"),
        ("keys read back", _lost(w.keys_lost, w.keys_unreadable)),
    ]:
        whole.add_row(measure, value)
    held = f"{n.keys_before:,} / {n.keys_at_join:,} / {n.keys_after:,}"
    node = measure_table(f"kill -9 {n.node}, restarted after {n.absence_s:g} s (seconds from the restart)")
    for measure, value in [
        ("declared dead after the kill", f"{n.declared_dead_s:.2f} s"),
        ("slots whole on the others before the restart", "yes" if n.healed_before_restart else "no"),
        ("new process listed alive", f"{n.joined_s:.2f} s"),
        ("serving (primary of a slot again)", f"{n.serving_s:.2f} s"),
        (f"every slot at {result.rep} replicas, {n.node} back to its share", f"{n.replicas_s:.2f} s"),
        ("slots / keys copied since the restart", f"{n.slots_copied:,} / {n.keys_copied:,}"),
        ("healing counter restarts / copies cancelled", f"{n.counter_resets} / {n.moves_cancelled}"),
        ("nodes declared dead after the restart", ", ".join(n.declared_dead) or "none"),
        (f"keys {n.node} held: before the kill / at its join / at the end", held),
        ("keys copied / keys held before", _fraction(n.copied_fraction)),
        ("keys read back", _lost(n.keys_lost, n.keys_unreadable)),
    ]:
        node.add_row(measure, value)
    return Group(sizes, whole, node)


def _phases(result: RestartResult) -> tuple[list[str], list[float]]:
    w, n = result.whole, result.node
    labels = [
        "whole: table",
        "whole: serving",
        f"whole: {result.rep} replicas",
        f"{n.node}: alive",
        f"{n.node}: serving",
        f"{n.node}: share",
    ]
    return labels, [w.table_s, w.serving_s, w.replicas_s, n.joined_s, n.serving_s, n.replicas_s]


def plot_restart(result: RestartResult) -> None:
    labels, values = _phases(result)
    with terminal_chart("Seconds from the (re)start", values) as plt:
        plt.bar(labels, values)


def chart_restart(results: Sequence[RestartResult], path: Path) -> None:
    """Horizontal bars: for each run, the seconds from the (re)start to each milestone."""
    with png_chart(path, rows=len(results)) as axes:
        for ax, result in zip(axes if len(results) > 1 else [axes], results, strict=True):
            labels, values = _phases(result)
            bars = ax.barh(labels[::-1], values[::-1])
            ax.bar_label(bars, labels=[f"{v:.1f} s" for v in values[::-1]], fontsize=8)
            ax.set_title(
                f"{result.keys:,} keys, {result.nodes} nodes, rep {result.rep}, fsync {result.fsync}", fontsize=9
            )
        (axes[-1] if len(results) > 1 else axes).set_xlabel("seconds from the start (whole) or the restart (node)")


def restart_lines(restarts: Sequence[RestartResult], chart: str) -> list[str]:
    """The durability section's part on restarts: a table, and a paragraph per run."""
    lines = template("restart", chart=chart)
    lines += [
        "| keys | nodes, rep | fsync | whole: table / serving / every slot whole | whole: keys copied | whole: keys"
        " lost | node: alive / serving / share back | node: keys copied / held before | node: keys lost | disk per"
        " key replica | RSS per key replica | RSS added per key replica |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in restarts:
        w, n = r.whole, r.node
        fraction = "n/a" if n.copied_fraction is None else f"{n.copied_fraction:.0%}"
        lines.append(
            f"| {r.keys:,} | {r.nodes}, {r.rep} | {r.fsync} "
            f"| {w.table_s:.1f} / **{w.serving_s:.1f}** / {w.replicas_s:.1f} s | {w.keys_copied:,} "
            f"| **{w.keys_lost + w.keys_unreadable}** "
            f"| {n.joined_s:.1f} / {n.serving_s:.1f} / **{n.replicas_s:.1f}** s "
            f"| {n.keys_copied:,} / {n.keys_before:,} ({fraction}) | **{n.keys_lost + n.keys_unreadable}** "
            f"| {r.disk_bytes_per_key_replica:,.0f} B ({_mib(r.disk_bytes)}) "
            f"| {r.rss_bytes_per_key_replica:,.0f} B ({_mib(r.rss_bytes)}) | {r.rss_added_per_key_replica:,.0f} B |"
        )
    lines.append("")
    for r in restarts:
        lines += template(
            "restart_run",
            command=r.command,
            empty_start_s=r.empty_start_s,
            stop_s=r.whole.stop_s,
            node=r.node.node,
            declared_dead_s=r.node.declared_dead_s,
            healed="were" if r.node.healed_before_restart else "were not yet",
            rep=r.rep,
            absence_s=r.node.absence_s,
            start=r.load_average["start"][0],
            end=r.load_average["end"][0],
        )
    return lines


def restart_json(result: RestartResult) -> dict[str, Any]:
    data: dict[str, Any] = to_json(result)
    return data


def restart_command(
    keys: Annotated[int, typer.Option("--keys", min=1, help="Keys with 100-byte values to load first.")] = 100_000,
    nodes: Nodes = 7,
    rep: Annotated[int, typer.Option("--rep", min=2, help="Replicas per key (at least 2).")] = 3,
    absence: Annotated[
        float, typer.Option("--absence", min=0.0, help="Seconds the killed node stays down before its restart.")
    ] = 10.0,
    fsync: Annotated[str, typer.Option("--fsync", help="When the nodes sync their logs: always, everysec or no.")] = (
        "everysec"
    ),
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, help="Give up when a wait (serving, replicas) takes longer.")
    ] = 600.0,
    plot: Plot = False,
    json_out: JsonOut = None,
) -> None:
    """Whole-cluster restart from the nodes' data, and one node killed and restarted: times, copies, disk and memory."""
    check_shape(nodes, [rep])
    policies = fsync_list(fsync)
    if len(policies) != 1:
        raise UsageError(f"--fsync takes one policy here, got {fsync!r}")
    shape = RestartShape(nodes, rep, keys, absence, policies[0], timeout)

    run_benchmark(
        lambda progress: run_restart(shape, progress),
        restart_table,
        plot_restart,
        restart_json,
        plot=plot,
        json_out=json_out,
    )
