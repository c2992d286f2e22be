"""``kvcluster bench master-failover``: kill -9 or pause the leading master again and again under load.

One cluster with a master group runs client load (one client process per
key group, each key written by one client, one put at a time, as in
``bench failover``) for the whole run. Fault after fault hits whichever
master leads at that moment: SIGKILL (then ``restart``) or SIGSTOP (then
SIGCONT once another has taken over), alternating. For each fault it
measures the election (fault to the first answer of a new leader, polled
every ``POLL`` seconds) and the data's unavailability (the longest stretch
around the fault in which no client operation succeeded). At the end every
key is read back: an acknowledged write must never be lost.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kvcluster.bench.common import BenchmarkError, JsonOut, Nodes, Plot, check_shape, cluster
from kvcluster.bench.failover import get_all, owned_clients, put_all
from kvcluster.bench.failover_analysis import lost_writes, median_max
from kvcluster.bench.output import run_benchmark, template, terminal_chart, to_json
from kvcluster.bench.workload import OpRecord, history_worker
from kvcluster.client_pool import ClientPool
from kvcluster.errors import UsageError
from kvcluster.leader_link import await_leader, roles

if TYPE_CHECKING:
    from rich.progress import Progress
    from rich.table import Table

    from kvcluster.state import ClusterState

POLL = 0.02  # seconds between questions to the masters while waiting for a new leader
ELECTION_DEADLINE = 15.0  # seconds without a new leader before a fault counts as failed
PAUSE_PAST_ELECTION = 1.0  # a paused leader stays stopped this long after another took over
SETTLE = 1.5  # seconds of steady load between a member's return and the next fault
ROUND_BUDGET = 8.0  # seconds of load planned per fault; the clients stop at the end of the plan
CLIENTS = 2
KEYS_PER_CLIENT = 40
WINDOW = (
    -0.5,
    6.0,
)  # seconds around a fault (up to the next one) in which the longest stretch without a success is sought


@dataclass
class MasterFault:
    """One fault of the leading master and what followed it."""

    kind: str  # "kill" or "pause"
    master: str
    term: int
    at_s: float  # since the clients started
    election_ms: float | None
    new_leader: str | None
    new_term: int | None
    unavailable_ms: float = 0.0


@dataclass
class MasterFailoverRun:
    """Every fault of one run, the writes it checked and the summary figures."""

    masters: int
    nodes: int
    rep: int
    faults: list[MasterFault] = field(default_factory=list)
    ops: int = 0
    acked_writes: int = 0
    lost_acked_writes: int = 0
    unverified_keys: int = 0
    election_ms: dict[str, float | None] = field(default_factory=dict)
    unavailable_ms: dict[str, float | None] = field(default_factory=dict)

    @property
    def command(self) -> str:
        return (
            f"kvcluster bench master-failover --nodes {self.nodes} --rep {self.rep} --masters {self.masters} "
            f"--faults {len(self.faults)}"
        )


def _await_follower(state: ClusterState, index: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if roles(state.master_endpoints(), POLL * 5)[index][0] == "follower":
            return
        time.sleep(POLL * 5)
    raise BenchmarkError(f"{state.masters[index].name} did not rejoin the group as a follower")


def _fault(state: ClusterState, kind: str, released: float) -> MasterFault:
    """Hit the current leader with ``kind``, time the election, and bring the member back as a follower."""
    from kvcluster.process_control import start_master  # noqa: PLC0415

    found = await_leader(state.master_endpoints(), 0, time.monotonic() + ELECTION_DEADLINE, POLL)
    if found is None:
        raise BenchmarkError("no master leads before the fault")
    index, term = found
    info = state.masters[index]
    at = time.monotonic()
    os.kill(info.pid, signal.SIGKILL if kind == "kill" else signal.SIGSTOP)
    elected = await_leader(state.master_endpoints(), term, at + ELECTION_DEADLINE, POLL)
    took = time.monotonic() - at
    if kind == "kill":
        start_master(state, info.name)
    else:
        time.sleep(PAUSE_PAST_ELECTION)
        os.kill(info.pid, signal.SIGCONT)
    _await_follower(state, index, time.monotonic() + ELECTION_DEADLINE * 2)
    return MasterFault(
        kind,
        info.name,
        term,
        round(at - released, 3),
        round(took * 1000, 1) if elected else None,
        state.masters[elected[0]].name if elected else None,
        elected[1] if elected else None,
    )


def _longest_gap_ms(successes: list[float], start: float, end: float) -> float:
    """The longest stretch within [start, end] without a successful completion, in ms."""
    points = [start, *(t for t in successes if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(points)) * 1000


def run_master_failover(nodes: int, rep: int, masters: int, faults: int, progress: Progress) -> MasterFailoverRun:
    """Start the cluster and the load, hit the leader ``faults`` times (kill and pause in turn), check every write."""
    from kvcluster.process_control import stop_process  # noqa: PLC0415

    run = MasterFailoverRun(masters, nodes, rep)
    duration = faults * ROUND_BUDGET + 2 * SETTLE
    task = progress.add_task(f"master failover: starting {masters} masters, {nodes} nodes", total=faults)
    with cluster(nodes, rep, masters) as (_supervisor, state):
        try:
            endpoint = state.master_endpoint
            groups = {f"c{i}": [f"mf{i}-{k}" for k in range(KEYS_PER_CLIENT)] for i in range(CLIENTS)}
            initial = {key: f"init-{key}" for keys in groups.values() for key in keys}
            put_all(endpoint, initial)
            with ClientPool(history_worker, owned_clients(endpoint, list(groups.values()), duration)) as pool:
                released = pool.release()
                time.sleep(SETTLE)
                for n in range(faults):
                    kind = "kill" if n % 2 == 0 else "pause"
                    progress.update(task, description=f"master failover: {kind} of the leader, {n + 1}/{faults}")
                    run.faults.append(_fault(state, kind, released))
                    progress.advance(task)
                    time.sleep(SETTLE)
                    if time.monotonic() - released > duration - ROUND_BUDGET:
                        break
                progress.update(task, description="master failover: the clients finish their plan")
                records: list[OpRecord] = [r for history in pool.collect() for r in history.records]
            final = get_all(endpoint, list(initial))
        finally:
            for info in state.masters:  # restarted members are not the supervisor's children
                stop_process(info)
    _summarise(run, records, released, initial, final)
    return run


def _summarise(
    run: MasterFailoverRun,
    records: list[OpRecord],
    released: float,
    initial: dict[str, str],
    final: dict[str, str | None],
) -> None:
    successes = sorted(end for _k, _p, _s, end, completion, _v, _n in records if completion in ("ok", "not_found"))
    starts = [released + f.at_s for f in run.faults]
    for fault, at, following in zip(run.faults, starts, [*starts[1:], math.inf], strict=True):
        # Up to the next fault at most: its own gap must not be counted twice.
        fault.unavailable_ms = round(_longest_gap_ms(successes, at + WINDOW[0], min(at + WINDOW[1], following)), 1)
    run.ops = len(successes)
    run.lost_acked_writes, run.unverified_keys, run.acked_writes = lost_writes(records, initial, final)
    run.election_ms = median_max([f.election_ms for f in run.faults])
    run.unavailable_ms = median_max([f.unavailable_ms for f in run.faults])


def master_failover_table(run: MasterFailoverRun) -> Table:
    from rich.table import Table  # noqa: PLC0415

    table = Table(
        title=f"master failover: {run.masters} masters, {run.nodes} nodes, rep {run.rep}",
        caption=(
            f"election median {run.election_ms['median']} ms, max {run.election_ms['max']} ms; "
            f"unavailability median {run.unavailable_ms['median']} ms, max {run.unavailable_ms['max']} ms; "
            f"{run.lost_acked_writes} of {run.acked_writes} acknowledged writes lost"
        ),
    )
    for column in ("fault", "master", "at s", "term", "election ms", "new leader", "unavailable ms"):
        table.add_column(column, justify="left" if column in ("fault", "master", "new leader") else "right")
    for f in run.faults:
        election = "-" if f.election_ms is None else f"{f.election_ms:.0f}"
        table.add_row(
            f.kind, f.master, f"{f.at_s:.1f}", str(f.term), election, f.new_leader or "-", f"{f.unavailable_ms:.0f}"
        )
    return table


def _plot(run: MasterFailoverRun) -> None:
    labels = [f"{i + 1}{f.kind[0]}" for i, f in enumerate(run.faults)]
    series = [[f.election_ms or 0 for f in run.faults], [f.unavailable_ms for f in run.faults]]
    with terminal_chart("leader faults: k = kill -9, p = SIGSTOP", [v for s in series for v in s]) as plt:
        plt.multiple_bar(labels, series, labels=["election ms", "unavailable ms"])


def master_failover_command(
    nodes: Nodes = 5,
    rep: Annotated[int, typer.Option("--rep", min=1, help="Replicas per key.")] = 3,
    masters: Annotated[int, typer.Option("--masters", help="Masters in the group: 3 or 5.")] = 3,
    faults: Annotated[
        int, typer.Option("--faults", min=1, help="Faults of the leader, kill -9 and SIGSTOP in turn.")
    ] = 20,
    plot: Plot = False,
    json_out: JsonOut = None,
) -> None:
    """Kill and pause the leading master under load: election time, data unavailability, lost writes."""
    if masters not in (3, 5):
        raise UsageError(f"--masters must be 3 or 5 for a group that survives its leader, got {masters}")
    check_shape(nodes, [rep])
    result = run_benchmark(
        lambda progress: run_master_failover(nodes, rep, masters, faults, progress),
        master_failover_table,
        _plot,
        master_failover_json,
        plot=plot,
        json_out=json_out,
    )
    problems = [f"{f.kind} of {f.master}: no new leader" for f in result.faults if f.election_ms is None]
    if result.lost_acked_writes:
        problems.insert(0, f"{result.lost_acked_writes} acknowledged writes were lost")
    if problems:
        raise BenchmarkError("; ".join(problems))


def master_failover_json(run: MasterFailoverRun) -> Any:
    return {**to_json(run), "command": run.command}


def _figures(pair: dict[str, float | None]) -> str:
    return "n/a" if pair["median"] is None else f"{pair['median']:,.0f} / {pair['max']:,.0f} ms"


def master_failover_markdown(run: MasterFailoverRun) -> list[str]:
    """The report's section: elections and unavailability per kind of fault, and the writes checked."""
    lines = template(
        "master_failover",
        command=run.command,
        masters=run.masters,
        nodes=run.nodes,
        rep=run.rep,
        faults=len(run.faults),
    )
    lines += [
        "| fault | count | election, median / max | longest stretch without a successful op, median / max |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, kinds in (
        ("kill -9 of the leader", {"kill"}),
        ("SIGSTOP of the leader", {"pause"}),
        ("all", {"kill", "pause"}),
    ):
        faults = [f for f in run.faults if f.kind in kinds]
        if faults:
            elections = median_max([f.election_ms for f in faults])
            gaps = median_max([f.unavailable_ms for f in faults])
            lines.append(f"| {name} | {len(faults)} | {_figures(elections)} | {_figures(gaps)} |")
    return [
        *lines,
        "",
        f"Acknowledged writes lost: **{run.lost_acked_writes}** of {run.acked_writes:,}; keys not readable at the "
        f"end: {run.unverified_keys}.",
        "",
    ]
