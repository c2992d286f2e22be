"""``kvcluster bench chaos``: its options, the rounds it runs, and the tables it prints after each.

The run itself is ``run.run_chaos``; this module only turns options into
runs and runs into output, and exits 1 when a round is not linearizable.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Annotated, Any

import typer

from kvcluster.chaos import run
from kvcluster.chaos.report import ChaosReport, faults_table, rounds_summary, summary_table
from kvcluster.client_pool import interrupt_on_sigterm
from kvcluster.errors import UsageError


def _check_options(nodes: int, rep: int, clients: int, keys: int, duration: float) -> None:
    if nodes < 1:
        raise UsageError(f"--nodes must be at least 1, got {nodes}")
    if not 1 <= rep <= nodes:
        raise UsageError(f"--rep must be in 1..{nodes} for {nodes} nodes, got {rep}")
    if clients < 1 or keys < 1:
        raise UsageError("--clients and --keys must be at least 1")
    if duration <= 0:
        raise UsageError(f"--duration must be positive, got {duration:g}")


def _check_can_partition(nodes: int) -> None:
    """Refuse ``--partitions`` in one line where network namespaces cannot be made, or with nothing to cut."""
    from kvcluster.netns import check_can_build  # noqa: PLC0415

    if nodes < 2:
        raise UsageError(f"--partitions needs at least 2 nodes to cut apart, got {nodes}")
    if os.geteuid() != 0:
        raise UsageError("--partitions needs root: it runs every process on a host of its own (run it with sudo)")
    check_can_build()


def chaos_command(
    nodes: Annotated[int, typer.Option("--nodes", help="Storage nodes in the cluster.")] = 5,
    rep: Annotated[int, typer.Option("--rep", help="Replicas per key.")] = 3,
    clients: Annotated[int, typer.Option("--clients", help="Client processes.")] = 4,
    keys: Annotated[int, typer.Option("--keys", help="Keys the clients share (few keys, more contention).")] = 8,
    duration: Annotated[float, typer.Option("--duration", help="Seconds of load and faults.")] = 30.0,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed of the fault schedule and the load; replays a run.")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON to this file.")] = None,
    save_history: Annotated[
        Path | None, typer.Option("--save-history", help="Write the recorded history as JSON lines to this file.")
    ] = None,
    rounds: Annotated[
        int,
        typer.Option(
            "--rounds",
            help="Runs in a row, each on a fresh cluster with the next seed: a cluster only ever loses nodes, "
            "so a long run needs new ones.",
        ),
    ] = 1,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            help="State directory for the run's cluster, kept afterwards (default: a temporary one, kept on failure).",
        ),
    ] = None,
    membership: Annotated[
        bool,
        typer.Option(
            "--membership",
            help="Also restart dead nodes, add nodes and remove nodes (kvcluster restart, add-node, remove-node); "
            "each fault then waits until every slot has its replicas again.",
        ),
    ] = False,
    master_faults: Annotated[
        bool,
        typer.Option(
            "--master-faults",
            help="Also kill -9 (then restart) and pause the leading master, every 4 to 7 s, on a track of its own.",
        ),
    ] = False,
    partitions: Annotated[
        bool,
        typer.Option(
            "--partitions",
            help="Also cut links (isolate, cut-peers, oneway, leader-cut) and make hosts flaky, every 2 to 4 s, on "
            "a track of their own; every process runs on a host of its own, as with up --netns (root only).",
        ),
    ] = False,
    preload: Annotated[
        int,
        typer.Option(
            "--preload",
            min=0,
            help="Keys with 100-byte values to load before the faults start, so they land on a large data set; "
            "each is read back at the end, and any missing or wrong is a lost write (exit 1).",
        ),
    ] = 0,
) -> None:
    """Kill and pause nodes (and with --membership restart, add and remove them; with --partitions cut links) under
    concurrent load, then check the history for linearizability; exit 1 if it is not."""
    from rich.console import Console  # noqa: PLC0415

    _check_options(nodes, rep, clients, keys, duration)
    if partitions:
        _check_can_partition(nodes)
    if rounds < 1:
        raise UsageError(f"--rounds must be at least 1, got {rounds}")
    if seed is None:
        seed = secrets.randbelow(2**31)
    console = Console()
    tracks = (("--membership", membership), ("--master-faults", master_faults), ("--partitions", partitions))
    flags = "".join(f" {flag}" for flag, on in tracks if on)
    console.print(f"chaos seed {seed} (replay with: kvcluster bench chaos --seed {seed}{flags})")
    reports = []
    for round_seed in range(seed, seed + rounds):
        if rounds > 1:
            console.rule(f"round {round_seed - seed + 1} of {rounds}: seed {round_seed}")
        report = _chaos_round(
            console,
            nodes,
            rep,
            clients,
            keys,
            duration,
            round_seed,
            home,
            preload,
            (membership, master_faults, partitions),
        )
        reports.append(report)
        if save_history is not None:
            per_round = save_history.with_name(f"{save_history.stem}-{round_seed}{save_history.suffix}")
            run.save_history(report.history, per_round if rounds > 1 else save_history)
    if json_out is not None:
        doc = reports[0].to_json() if rounds == 1 else {"rounds": [r.to_json() for r in reports]}
        json_out.write_text(json.dumps(doc, indent=2) + "\n")
    if rounds > 1:
        console.print(rounds_summary(reports))
    if not all(report.ok for report in reports):
        raise typer.Exit(1)


def _chaos_round(
    console: Any,
    nodes: int,
    rep: int,
    clients: int,
    keys: int,
    duration: float,
    seed: int,
    home: Path | None,
    preload: int,
    changes: tuple[bool, bool, bool],
) -> ChaosReport:
    """One run on a fresh cluster, with its tables printed; ``changes``: membership changes, leader faults, cuts."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with interrupt_on_sigterm(), Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("load and faults", total=duration)
        report = run.run_chaos(
            nodes=nodes,
            rep=rep,
            clients=clients,
            keys=keys,
            duration=duration,
            seed=seed,
            home=home.expanduser().resolve() if home is not None else None,
            on_event=progress.console.print,
            on_tick=lambda elapsed: progress.update(task, completed=elapsed),
            preload=preload,
            membership=changes[0],
            master_faults=changes[1],
            partitions=changes[2],
        )
    console.print(faults_table(report))
    console.print(summary_table(report))
    if report.violation is not None:
        console.print(report.violation, style="bold red", markup=False, highlight=False)
    if report.logs is not None:
        console.print(f"cluster logs kept in {report.logs}")
    if report.history_file is not None:
        console.print(f"history saved in {report.history_file}")
    return report


def register(app: typer.Typer) -> None:
    """Add the ``chaos`` command to ``app``."""
    app.command("chaos")(chaos_command)
