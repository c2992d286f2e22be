"""``kvcluster bench failover``: SIGKILL a node, measure its keys' unavailability, lost writes and nodes lost.

One client process per key group (keys the victim is the primary of, keys it
backs up, other keys) runs rounds of one operation per key; the victim is
killed after a while; every key is read back at the end, and the master is
asked which nodes it declared dead. With ``--keys N`` the cluster is first
filled with N keys (``bulk``) and the kill comes right after that load ends;
the key-group clients are started before the load, so they are running the
moment it ends. With ``--idle`` only the victim's primary and backup groups
run, as light probes (a pause between rounds), so the kill lands on an
otherwise idle cluster. ``--runs R`` repeats the whole run on fresh clusters,
killing a different node each time. The figures are computed in
``failover_analysis``; ``failover_sweep`` runs this over several data sizes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kvcluster.bench.bulk import BulkCheck, bulk_load, bulk_verify, release_timeout
from kvcluster.bench.common import (
    CLIENT_DEADLINE,
    PRELOAD_BATCH,
    BenchmarkError,
    JsonOut,
    Nodes,
    Plot,
    check_shape,
    cluster,
    dead_nodes,
)
from kvcluster.bench.failover_analysis import (
    Failover,
    OpRecord,
    lost_writes,
    median_max,
    summarise,
    timeline,
    unavailability,
    write_unavailability,
)
from kvcluster.bench.failover_views import plot_failover, runs_table
from kvcluster.bench.output import run_benchmark, to_json
from kvcluster.client_pool import ClientPool, Worker
from kvcluster.errors import NodeNotRunning, UsageError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

FAILOVER_KILL_AFTER = 2.0  # seconds of steady load before the kill
KILL_AFTER_LOAD = 0.2  # with a bulk load: seconds from its end to the kill (a kill soon after a load is the hard case)
FAILOVER_KEYS_PER_GROUP = 40
FAILOVER_DEADLINE = 10.0
PROBE_KEYS_PER_GROUP = 10  # an idle run probes this many keys the victim is the primary of, and as many it backs up
PROBE_PAUSE = 0.05  # seconds between the rounds of an idle run's probes: a few hundred ops/s in all


@dataclass(frozen=True)
class FailoverShape:
    """What a failover run is asked for."""

    nodes: int
    rep: int
    duration: float
    keys: int = 0
    """Keys bulk-loaded (100-byte values) before the measured phase."""
    idle: bool = False
    kill_after: float | None = None
    """Seconds from the start of the measured phase to the kill; None for the default."""

    @property
    def kill_delay(self) -> float:
        if self.kill_after is not None:
            return self.kill_after
        return KILL_AFTER_LOAD if self.keys else min(FAILOVER_KILL_AFTER, self.duration / 3)


@dataclass(frozen=True)
class FailoverJob:
    """One failover client: it owns ``keys`` and cycles over them until ``duration`` has passed."""

    master: str
    index: int
    group: str
    keys: list[str]
    duration: float
    seed: int
    pause: float = 0.0
    """Seconds between rounds: 0 under load, ``PROBE_PAUSE`` for an idle run's probes."""


def failover_worker(job: FailoverJob, worker: Worker) -> list[OpRecord]:
    """Entry point of a failover client process.

    Each round issues one operation per owned key, all in flight at once, and
    the next round starts when this one has finished (and ``pause`` has
    passed): a key is therefore written by this process alone, one put at a
    time, so the last acknowledged value of every key is well defined.
    """
    import random  # noqa: PLC0415

    from kvcluster.client import Completion, Connection  # noqa: PLC0415
    from kvcluster.core.protocol import OpKind  # noqa: PLC0415

    rng = random.Random(job.seed)
    records: list[OpRecord] = []
    seq = 0
    with Connection(job.master, deadline=FAILOVER_DEADLINE) as client:
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
            if job.pause:
                time.sleep(job.pause)
    return records


def _failover_keys(nodes: int, rep: int, victim: int, per_group: int = FAILOVER_KEYS_PER_GROUP) -> dict[str, list[str]]:
    """Keys grouped by the victim's role in their slot: its primary, one of its backups, or neither."""
    from kvcluster.core.placement import replicas_for, slot_of  # noqa: PLC0415

    groups: dict[str, list[str]] = {"primary": [], "backup": [], "unrelated": []}
    index = 0
    # Bounded: a group the shape cannot fill (no unrelated slot when rep == nodes) stays empty.
    while index < per_group * nodes * 20 and min(len(g) for g in groups.values()) < per_group:
        key = f"fo{index}"
        index += 1
        replicas = replicas_for(slot_of(key), nodes, rep)
        group = "primary" if replicas[0] == victim else "backup" if victim in replicas else "unrelated"
        if len(groups[group]) < per_group:
            groups[group].append(key)
    return {name: keys for name, keys in groups.items() if keys}


def run_failovers(shape: FailoverShape, runs: int, progress: Progress) -> list[Failover]:
    """``runs`` failover runs, each on a fresh cluster, killing server1, server2... in turn."""
    return [run_failover(shape, progress, victim=run % shape.nodes + 1) for run in range(runs)]


def run_failover(shape: FailoverShape, progress: Progress, victim: int = 1) -> Failover:
    """Load, then steady load (or probes) from one client per key group; SIGKILL the victim; check every write."""
    from kvcluster.core.placement import node_name  # noqa: PLC0415
    from kvcluster.supervisor import kill_node  # noqa: PLC0415

    name = node_name(victim)
    if shape.idle:
        groups = _failover_keys(shape.nodes, shape.rep, victim, PROBE_KEYS_PER_GROUP)
        groups.pop("unrelated", None)
    else:
        groups = _failover_keys(shape.nodes, shape.rep, victim)
    kill_after, duration = shape.kill_delay, shape.duration
    what = "probes" if shape.idle else "load"
    task = progress.add_task(f"failover {name}: starting {shape.nodes} nodes", total=duration)
    with cluster(shape.nodes, shape.rep) as (supervisor, state):
        master = state.master_endpoint
        all_keys = [k for keys in groups.values() for k in keys]
        initial = {key: f"init-{key}" for key in all_keys}
        put_all(master, initial)
        pause = PROBE_PAUSE if shape.idle else 0.0
        jobs = [
            FailoverJob(master, i, group, keys, duration, seed=i, pause=pause)
            for i, (group, keys) in enumerate(groups.items())
        ]
        # Started before the load, so they are running the moment it ends.
        with ClientPool(failover_worker, jobs, release_timeout=release_timeout(shape.keys)) as pool:
            try:
                load_s = _load(master, shape.keys, progress) if shape.keys else 0.0
            except BenchmarkError as exc:
                # Healthy nodes lost during the load: a finding, not a reason to drop the other runs.
                return _failed_load(name, shape, f"the load failed: {exc}", dead_nodes(master))
            released = pool.release()
            progress.update(task, description=f"failover {name}: {what}, killing it at {kill_after:g} s")
            _sleep_with_progress(progress, task, released, released + kill_after)
            kill_t = time.monotonic()
            error = None
            try:
                kill_node(state, name)
            except NodeNotRunning:
                error = f"{name} had already exited when it was to be killed"
            _sleep_with_progress(progress, task, released, released + duration)
            progress.update(task, description=f"failover {name}: finishing the last round")
            records = pool.collect()
        supervisor.reap()
        progress.update(task, description=f"failover {name}: reading every key back", completed=duration)
        final = get_all(master, all_keys)
        check = _verify(master, shape.keys, progress) if shape.keys else BulkCheck(0, 0, 0)
        dead = dead_nodes(master)
    by_group = {job.group: job_records for job, job_records in zip(jobs, records, strict=True)}
    result = _failover_result(name, victim, shape, released, kill_t, by_group, initial, final)
    result.load_s = round(load_s, 2)
    result.false_dead = [n for n in dead if n != name]
    result.loaded_keys_lost, result.loaded_keys_unreadable = check.lost, check.unreadable
    result.lost_acked_writes += check.lost
    result.unverified_keys += check.unreadable
    result.acked_writes += shape.keys
    result.error = error
    return result


def _failed_load(name: str, shape: FailoverShape, error: str, dead: list[str]) -> Failover:
    """A run that ended before the kill: no figure but the nodes the master declared dead, all of them healthy."""
    return Failover(
        killed=name,
        nodes=shape.nodes,
        rep=shape.rep,
        duration_s=shape.duration,
        kill_t=0.0,
        keys={},
        unavailable_ms={"median": None, "max": None},
        unrecovered_keys=0,
        backup_write_unavailable_ms={"median": None, "max": None},
        acked_writes=0,
        lost_acked_writes=0,
        unverified_keys=0,
        failed_ops=0,
        timeline=[],
        keys_loaded=shape.keys,
        idle=shape.idle,
        false_dead=dead,
        error=error,
    )


def _load(master: str, keys: int, progress: Progress) -> float:
    task = progress.add_task(f"bulk load: {keys:,} keys", total=keys)
    return bulk_load(master, keys, lambda done: progress.advance(task, done))


def _verify(master: str, keys: int, progress: Progress) -> BulkCheck:
    task = progress.add_task(f"reading {keys:,} loaded keys back", total=keys)
    return bulk_verify(master, keys, lambda done: progress.advance(task, done))


def _sleep_with_progress(progress: Progress, task: TaskID, start: float, until: float) -> None:
    while (now := time.monotonic()) < until:
        progress.update(task, completed=now - start)
        time.sleep(min(0.1, until - now))
    progress.update(task, completed=until - start)


def put_all(master: str, values: dict[str, str]) -> None:
    from kvcluster.client import Completion, Connection  # noqa: PLC0415
    from kvcluster.core.protocol import OpKind  # noqa: PLC0415

    ops: list[tuple[OpKind, str, str | None]] = [(OpKind.PUT, k, v) for k, v in values.items()]
    with Connection(master, deadline=CLIENT_DEADLINE) as client:
        results = client.execute(ops, batch=PRELOAD_BATCH)
    if any(r.completion != Completion.OK for r in results):
        raise BenchmarkError("the failover key set could not be written before the kill")


def get_all(master: str, keys: list[str]) -> dict[str, str | None]:
    """The value of every key after the load (None if gone), or no entry where the final read timed out."""
    from kvcluster.client import Completion, Connection  # noqa: PLC0415
    from kvcluster.core.protocol import OpKind  # noqa: PLC0415

    ops: list[tuple[OpKind, str, str | None]] = [(OpKind.GET, k, None) for k in keys]
    with Connection(master, deadline=FAILOVER_DEADLINE) as client:
        results = client.execute(ops, window=len(ops))
    final: dict[str, str | None] = {}
    for key, result in zip(keys, results, strict=True):
        if result.completion == Completion.OK:
            final[key] = result.value
        elif result.completion in (Completion.NOT_FOUND, Completion.NO_REPLICA):
            final[key] = None  # not there, or no live replica holds it: either way its writes are gone
    return final


def _failover_result(
    killed: str,
    victim: int,
    shape: FailoverShape,
    released: float,
    kill_t: float,
    by_group: dict[str, list[OpRecord]],
    initial: dict[str, str],
    final: dict[str, str | None],
) -> Failover:
    every = [r for records in by_group.values() for r in records]
    lost, unverified, acked = lost_writes(every, initial, final)
    windows, unrecovered = unavailability(by_group.get("primary", []), victim, kill_t)
    stalls, unwritten = write_unavailability(by_group.get("backup", []), kill_t)
    return Failover(
        killed=killed,
        nodes=shape.nodes,
        rep=shape.rep,
        duration_s=shape.duration,
        kill_t=round(kill_t - released, 3),
        keys={group: len({r[0] for r in records}) for group, records in by_group.items()},
        unavailable_ms=median_max(windows, unrecovered),
        unrecovered_keys=unrecovered,
        backup_write_unavailable_ms=median_max(stalls, unwritten),
        acked_writes=acked,
        lost_acked_writes=lost,
        unverified_keys=unverified,
        failed_ops=sum(r[4] not in ("ok", "not_found") for r in every),
        timeline=timeline(by_group, released, shape.duration),
        keys_loaded=shape.keys,
        idle=shape.idle,
    )


def failover_json(runs: Sequence[Failover]) -> Any:
    """One run as it always was; several as their figures over all kills, with every run's under ``runs``."""
    return to_json(runs[0]) if len(runs) == 1 else to_json(summarise(runs))


def check_kill_after(kill_after: float | None, duration: float) -> None:
    if kill_after is not None and kill_after >= duration:
        raise UsageError(f"--kill-after ({kill_after:g} s) must be shorter than --duration ({duration:g} s)")


def failover_command(
    nodes: Nodes = 7,
    rep: Annotated[
        int, typer.Option("--rep", min=2, help="Replicas per key (at least 2, or the killed node's keys are gone).")
    ] = 3,
    duration: Annotated[
        float,
        typer.Option(
            "--duration",
            min=1.5,
            help="Seconds of the measured phase; the kill comes after a third of it (at most 2 s), "
            f"or {KILL_AFTER_LOAD:g} s after the end of the load with --keys.",
        ),
    ] = 6.0,
    keys: Annotated[
        int,
        typer.Option(
            "--keys",
            min=0,
            help="Keys with 100-byte values to load first (batched, from several client processes); "
            "the kill comes right after the load.",
        ),
    ] = 0,
    idle: Annotated[
        bool, typer.Option("--idle", help="No client load at the kill: only light probes of the victim's keys.")
    ] = False,
    runs: Annotated[
        int,
        typer.Option(
            "--runs",
            min=1,
            help="Kills, each on a fresh cluster (load included), of server1, server2... in turn; "
            "figures over all of them.",
        ),
    ] = 1,
    kill_after: Annotated[
        float | None,
        typer.Option("--kill-after", min=0.0, help="Seconds from the start of the measured phase to the kill."),
    ] = None,
    plot: Plot = False,
    json_out: JsonOut = None,
) -> None:
    """SIGKILL a node: how long its keys are unavailable, whether any acknowledged write or healthy node is lost."""
    if nodes < 2:
        raise UsageError("failover needs at least 2 nodes")
    check_shape(nodes, [rep])
    check_kill_after(kill_after, duration)
    shape = FailoverShape(nodes, rep, duration, keys, idle, kill_after)
    results = run_benchmark(
        lambda progress: run_failovers(shape, runs, progress),
        runs_table,
        plot_failover,
        failover_json,
        plot=plot,
        json_out=json_out,
    )
    check_outcome(results)


def check_outcome(results: Sequence[Failover]) -> None:
    """Fail the command (after its output) when an acknowledged write was lost or a run could not be completed."""
    problems = [f"{r.killed}: {r.error}" for r in results if r.error]
    lost = sum(r.lost_acked_writes for r in results)
    if lost:
        problems.insert(0, f"{lost} acknowledged writes were lost")
    if problems:
        raise BenchmarkError("; ".join(problems))
