"""``kvcluster bench failover``: SIGKILL a primary under load, measure its keys' unavailability and lost writes.

One client process per key group (keys the victim is the primary of, keys it
backs up, other keys) runs rounds of one operation per key; the victim is
killed after a while; every key is read back at the end. The figures are
computed in ``failover_analysis``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

from kvcluster.bench.common import (
    CLIENT_DEADLINE,
    PRELOAD_BATCH,
    BenchmarkError,
    JsonOut,
    Nodes,
    Plot,
    check_shape,
    cluster,
)
from kvcluster.bench.failover_analysis import (
    TIMELINE_BIN,
    OpRecord,
    lost_writes,
    median_max,
    timeline,
    unavailability,
    write_unavailability,
)
from kvcluster.bench.output import measure_table, ms_pair, png_chart, run_benchmark, terminal_chart, to_json
from kvcluster.errors import UsageError
from kvcluster.workers import ClientPool, Worker

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import RenderableType
    from rich.progress import Progress, TaskID

FAILOVER_KILL_AFTER = 2.0  # seconds of steady load before the kill
FAILOVER_KEYS_PER_GROUP = 40
FAILOVER_DEADLINE = 10.0


@dataclass
class Failover:
    """What a SIGKILLed primary cost: unavailability, throughput over time, lost writes."""

    killed: str
    nodes: int
    rep: int
    duration_s: float
    kill_t: float
    keys: dict[str, int]
    unavailable_ms: dict[str, float | None]
    unrecovered_keys: int
    backup_write_unavailable_ms: dict[str, float | None]
    acked_writes: int
    lost_acked_writes: int
    unverified_keys: int
    failed_ops: int
    timeline: list[dict[str, float]]


@dataclass(frozen=True)
class FailoverJob:
    """One failover client: it owns ``keys`` and cycles over them until ``duration`` has passed."""

    master: str
    index: int
    group: str
    keys: list[str]
    duration: float
    seed: int


def _failover_worker(job: FailoverJob, worker: Worker) -> list[OpRecord]:
    """Entry point of a failover client process.

    Each round issues one operation per owned key, all in flight at once, and
    the next round starts when this one has finished: a key is therefore
    written by this process alone, one put at a time, so the last acknowledged
    value of every key is well defined.
    """
    import random  # noqa: PLC0415

    from kvcluster.client import Client, Completion  # noqa: PLC0415
    from kvcluster.protocol import OpKind  # noqa: PLC0415

    rng = random.Random(job.seed)
    records: list[OpRecord] = []
    seq = 0
    with Client(job.master, deadline=FAILOVER_DEADLINE) as client:
        client.refresh_table()
        worker.wait_for_release()
        stop_at = time.monotonic() + job.duration
        while time.monotonic() < stop_at:
            ops: list[tuple[OpKind, str, str | None]] = []
            for key in job.keys:
                seq += 1
                put = rng.random() < 0.5
                ops.append((OpKind.PUT, key, f"c{job.index}-{seq}") if put else (OpKind.GET, key, None))
            round_start = time.monotonic()
            results = client.execute(ops, window=len(ops))
            round_end = time.monotonic()
            for (kind, key, value), result in zip(ops, results, strict=True):
                done = result.completion in (Completion.OK, Completion.NOT_FOUND)
                # Every op of a round is sent at once, so its own latency dates its answer.
                end = round_start + result.latency if done else round_end
                put = kind == OpKind.PUT
                records.append(
                    (
                        key,
                        put,
                        round_start,
                        end,
                        result.completion.value,
                        value if put else result.value,
                        result.node_id,
                    )
                )
    return records


def _failover_keys(nodes: int, rep: int, victim: int) -> dict[str, list[str]]:
    """Keys grouped by the victim's role in their slot: its primary, one of its backups, or neither."""
    from kvcluster.placement import replicas_for, slot_of  # noqa: PLC0415

    groups: dict[str, list[str]] = {"primary": [], "backup": [], "unrelated": []}
    index = 0
    # Bounded: a group the shape cannot fill (no unrelated slot when rep == nodes) stays empty.
    while (
        index < FAILOVER_KEYS_PER_GROUP * nodes * 20 and min(len(g) for g in groups.values()) < FAILOVER_KEYS_PER_GROUP
    ):
        key = f"fo{index}"
        index += 1
        replicas = replicas_for(slot_of(key), nodes, rep)
        group = "primary" if replicas[0] == victim else "backup" if victim in replicas else "unrelated"
        if len(groups[group]) < FAILOVER_KEYS_PER_GROUP:
            groups[group].append(key)
    return {name: keys for name, keys in groups.items() if keys}


def run_failover(*, nodes: int, rep: int, duration: float, progress: Progress) -> Failover:
    """Steady load from one client per key group; SIGKILL the victim after a while; check every acked write."""
    from kvcluster.placement import node_name  # noqa: PLC0415
    from kvcluster.supervisor import kill_node  # noqa: PLC0415

    victim = 1
    groups = _failover_keys(nodes, rep, victim)
    kill_after = min(FAILOVER_KILL_AFTER, duration / 3)
    task = progress.add_task(f"failover: starting {nodes} nodes", total=duration)
    with cluster(nodes, rep) as (supervisor, state):
        all_keys = [k for keys in groups.values() for k in keys]
        preload = {key: f"init-{key}" for key in all_keys}
        _put_all(state.master_endpoint, preload)
        jobs = [
            FailoverJob(state.master_endpoint, i, name, keys, duration, seed=i)
            for i, (name, keys) in enumerate(groups.items())
        ]
        with ClientPool(_failover_worker, jobs) as pool:
            released = pool.release()
            progress.update(task, description=f"failover: load, killing {node_name(victim)} at {kill_after:g} s")
            _sleep_with_progress(progress, task, released, released + kill_after)
            kill_t = time.monotonic()
            kill_node(state, node_name(victim))
            _sleep_with_progress(progress, task, released, released + duration)
            progress.update(task, description="failover: finishing the last round")
            records = pool.collect()
        supervisor.reap()
        progress.update(task, description="failover: reading every key back", completed=duration)
        final = _get_all(state.master_endpoint, all_keys)
    by_group = {job.group: job_records for job, job_records in zip(jobs, records, strict=True)}
    return _failover_result(node_name(victim), victim, nodes, rep, duration, released, kill_t, by_group, preload, final)


def _sleep_with_progress(progress: Progress, task: TaskID, start: float, until: float) -> None:
    while (now := time.monotonic()) < until:
        progress.update(task, completed=now - start)
        time.sleep(min(0.1, until - now))
    progress.update(task, completed=until - start)


def _put_all(master: str, values: dict[str, str]) -> None:
    from kvcluster.client import Client, Completion  # noqa: PLC0415
    from kvcluster.protocol import OpKind  # noqa: PLC0415

    ops: list[tuple[OpKind, str, str | None]] = [(OpKind.PUT, k, v) for k, v in values.items()]
    with Client(master, deadline=CLIENT_DEADLINE) as client:
        results = client.execute(ops, batch=PRELOAD_BATCH)
    if any(r.completion != Completion.OK for r in results):
        raise BenchmarkError("the failover key set could not be written before the kill")


def _get_all(master: str, keys: list[str]) -> dict[str, str | None]:
    """The value of every key after the load, or no entry where the final read itself failed."""
    from kvcluster.client import Client, Completion  # noqa: PLC0415
    from kvcluster.protocol import OpKind  # noqa: PLC0415

    ops: list[tuple[OpKind, str, str | None]] = [(OpKind.GET, k, None) for k in keys]
    with Client(master, deadline=FAILOVER_DEADLINE) as client:
        results = client.execute(ops, window=len(ops))
    final: dict[str, str | None] = {}
    for key, result in zip(keys, results, strict=True):
        if result.completion == Completion.OK:
            final[key] = result.value
        elif result.completion == Completion.NOT_FOUND:
            final[key] = None
    return final


def _failover_result(
    killed: str,
    victim: int,
    nodes: int,
    rep: int,
    duration: float,
    released: float,
    kill_t: float,
    by_group: dict[str, list[OpRecord]],
    preload: dict[str, str],
    final: dict[str, str | None],
) -> Failover:
    every = [r for records in by_group.values() for r in records]
    lost, unverified, acked = lost_writes(every, preload, final)
    windows, unrecovered = unavailability(by_group.get("primary", []), victim, kill_t)
    stalls, unwritten = write_unavailability(by_group.get("backup", []), kill_t)
    return Failover(
        killed=killed,
        nodes=nodes,
        rep=rep,
        duration_s=duration,
        kill_t=round(kill_t - released, 3),
        keys={group: len({r[0] for r in records}) for group, records in by_group.items()},
        unavailable_ms=median_max(windows, unrecovered),
        unrecovered_keys=unrecovered,
        backup_write_unavailable_ms=median_max(stalls, unwritten),
        acked_writes=acked,
        lost_acked_writes=lost,
        unverified_keys=unverified,
        failed_ops=sum(r[4] not in ("ok", "not_found") for r in every),
        timeline=timeline(by_group, released, duration),
    )


def failover_table(result: Failover) -> RenderableType:
    table = measure_table(
        f"Failover: SIGKILL {result.killed} at {result.kill_t:.2f} s ({result.nodes} nodes, rep {result.rep})"
    )
    table.add_row(
        "keys (victim primary / backup / unrelated)",
        " / ".join(str(result.keys.get(g, 0)) for g in ("primary", "backup", "unrelated")),
    )
    table.add_row("unavailable, median / max (victim primary keys)", ms_pair(result.unavailable_ms))
    table.add_row("keys never available again", str(result.unrecovered_keys))
    table.add_row("writes unavailable, median / max (victim backup keys)", ms_pair(result.backup_write_unavailable_ms))
    table.add_row("acknowledged writes", f"{result.acked_writes:,}")
    lost = result.lost_acked_writes
    table.add_row("acknowledged writes lost", str(lost) if not lost else f"[bold red]{lost}[/]")
    table.add_row("keys not readable at the end", str(result.unverified_keys))
    table.add_row("ops that did not complete", str(result.failed_ops))
    return table


def _plot_failover(result: Failover) -> None:
    per_second = 1 / TIMELINE_BIN
    title = f"ops/s per {TIMELINE_BIN * 1000:.0f} ms; {result.killed} killed at {result.kill_t:.2f} s (red line)"
    with terminal_chart(title, width=80) as plt:
        plt.plot([p["t"] for p in result.timeline], [p["ops"] * per_second for p in result.timeline])
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
            if group not in result.timeline[0]:
                continue
            values = [p[group] * per_second for p in result.timeline]
            ax.bar(ts, values, TIMELINE_BIN, bottom=bottom, align="edge", label=label)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.axvline(result.kill_t, color="red", linestyle="--", label=f"SIGKILL {result.killed}")
        ax.set_xlabel("seconds since the load started")
        ax.set_ylabel(f"successful ops/s (per {TIMELINE_BIN * 1000:.0f} ms)")
        ax.set_title(f"Failover under load: {result.nodes} nodes, rep {result.rep}")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, frameon=False)


def failover_command(
    nodes: Nodes = 7,
    rep: Annotated[
        int, typer.Option("--rep", min=2, help="Replicas per key (at least 2, or the killed node's keys are gone).")
    ] = 3,
    duration: Annotated[
        float,
        typer.Option("--duration", min=1.5, help="Seconds of load; the kill comes after a third of it, at most 2 s."),
    ] = 6.0,
    plot: Plot = False,
    json_out: JsonOut = None,
) -> None:
    """SIGKILL a primary under load: how long its keys are unavailable, and whether any acknowledged write is lost."""
    if nodes < 2:
        raise UsageError("failover needs at least 2 nodes")
    check_shape(nodes, [rep])
    result = run_benchmark(
        lambda progress: run_failover(nodes=nodes, rep=rep, duration=duration, progress=progress),
        failover_table,
        _plot_failover,
        to_json,
        plot=plot,
        json_out=json_out,
    )
    if result.lost_acked_writes:
        raise BenchmarkError(f"{result.lost_acked_writes} acknowledged writes were lost")
