"""Linearizability under faults: chaos runs against real clusters, and the fault schedule they follow.

A chaos run kills and pauses storage nodes while client processes put and get
on a few shared keys, then checks the recorded history for linearizability.
The schedule tests need no cluster; the runs never assert a speed, only the
verdict and that the history was worth checking.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import typer
from typer.testing import CliRunner

from kvcluster.bench.bulk import BulkCheck
from kvcluster.chaos import command as chaos_command
from kvcluster.chaos import injection as chaos_faults
from kvcluster.chaos import report as chaos_report
from kvcluster.chaos import run as chaos
from kvcluster.chaos.injection import (
    FATAL_KINDS,
    MEMBERSHIP_KINDS,
    TAKING_KINDS,
    FaultSchedule,
    Placement,
    chaos_keys,
)
from kvcluster.chaos.membership import KIND_ORDER, MAX_ADDED, MembershipSchedule, settled
from kvcluster.chaos.partitions import NetworkFaults
from kvcluster.chaos.run import run_chaos
from kvcluster.check.faults import NETWORK_FAULTS, NODE_FAULTS, FaultKind
from kvcluster.check.history import HistoryRecorder, Operation, OpKind, Outcome
from kvcluster.core.placement import replicas_for, slot_of
from kvcluster.core.protocol import StatusReport, Timing
from kvcluster.core.wire import TableData
from kvcluster.errors import KvclusterError
from kvcluster.netns import NetHosts

# Its schedule starts with a pause, then a kill (test_default_seed_pauses_then_kills checks it).
DEFAULT_SEED = 3
LONG_ROUNDS = 5
# Four nodes, two replicas: a kill, a restart, an add and a remove are its first four faults, the slowest
# (the remove's drain) last.
MEMBERSHIP_SEED = 55
LONG_SEEDS = range(101, 111)


def planned_faults(
    seed: int, nodes: int, rep: int, limit: int = 50, membership: bool = False
) -> list[chaos_faults.PlannedFault]:
    """The faults a schedule plans when nodes die only where it says, drawing delays as a run does."""
    rng = random.Random(seed)
    schedule = MembershipSchedule(nodes, rep, rng, Timing()) if membership else FaultSchedule(nodes, rep, rng, Timing())
    faults: list[chaos_faults.PlannedFault] = []
    while len(faults) < limit:
        schedule.delay()
        fault = schedule.next(set())
        if fault is None:
            return faults
        faults.append(fault)
    return faults


def assert_no_child_processes() -> None:
    """Every process a run starts (nodes, master, clients) must be gone when it returns.

    Only multiprocessing's resource tracker stays: it serves this process until it exits.
    """
    leftovers = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):  # one that ends while we look is not left over
            if child.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(child.cmdline()):
                leftovers.append(child.cmdline())
    assert not leftovers, f"processes left running: {leftovers}"


def assert_no_node_of(home: Path) -> None:
    """No storage node of the cluster in ``home`` runs: restart and add-node start them outside the run's tree."""
    endpoint = re.search(r"replicas on (tcp://\S+)", (home / "logs" / "master1.log").read_text())
    assert endpoint is not None, "the master never said where it listens"
    leftovers = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        ours = any(endpoint.group(1) in arg for arg in cmdline)
        if "_node" in cmdline and ours and proc.info["status"] != psutil.STATUS_ZOMBIE:
            leftovers.append(cmdline)
    assert not leftovers, f"nodes left running: {leftovers}"


# --- the schedule ---


def test_placement_tells_which_dead_sets_leave_a_replica() -> None:
    placement = Placement(5, 3)
    assert placement.safe(set())
    assert all(placement.safe({a, b}) for a in range(1, 6) for b in range(1, 6))
    assert not placement.safe(set(replicas_for(0, 5, 3)))


def test_keys_have_every_node_as_primary() -> None:
    keys = chaos_keys(8, 5, 3)
    assert len(set(keys)) == 8
    assert [replicas_for(slot_of(k), 5, 3)[0] for k in keys] == [1, 2, 3, 4, 5, 1, 2, 3]


@pytest.mark.parametrize(("nodes", "rep"), [(5, 3), (7, 4), (6, 2), (3, 1)])
def test_schedule_always_leaves_every_slot_a_replica(nodes: int, rep: int) -> None:
    placement = Placement(nodes, rep)
    timing = Timing()
    for seed in range(40):
        faults = planned_faults(seed, nodes, rep)
        dead: set[int] = set()
        for fault in faults:
            assert fault.dead_before == dead
            # A stalled node may be declared dead too: it must be as safe to lose as a killed one.
            assert placement.safe(dead | set(fault.victims))
            if fault.kind == FaultKind.PAUSE:
                assert fault.length > timing.dead_after
            if fault.kind == FaultKind.STALL:
                assert fault.length < timing.dead_after - timing.heartbeat
            if fault.kind == FaultKind.DOUBLE_KILL:
                assert len(set(fault.victims)) == 2
                assert 0 < fault.length < 0.3
            if fault.kind in FATAL_KINDS:
                dead |= set(fault.victims)
        fatal = [f.kind for f in faults if f.kind in FATAL_KINDS]
        assert len(fatal) >= min(2, rep - 1)
        assert fatal[:2] == [FaultKind.PAUSE, FaultKind.KILL][: len(fatal)]


def test_schedule_is_fixed_by_its_seed() -> None:
    assert planned_faults(7, 7, 4) == planned_faults(7, 7, 4)
    assert planned_faults(7, 7, 4) != planned_faults(8, 7, 4)


def test_default_seed_pauses_then_kills() -> None:
    kinds = [f.kind for f in planned_faults(DEFAULT_SEED, 5, 3)]
    assert kinds == [FaultKind.PAUSE, FaultKind.KILL]


@pytest.mark.parametrize(("nodes", "rep"), [(4, 2), (5, 3), (7, 4), (3, 2), (3, 1)])
def test_membership_schedule_never_takes_rep_nodes_nor_leaves_fewer_than_rep(nodes: int, rep: int) -> None:
    for seed in range(40):
        ids, alive, taken, removed = nodes, set(range(1, nodes + 1)), set[int](), set[int]()
        for fault in planned_faults(seed, nodes, rep, membership=True):
            assert fault.dead_before == taken | removed
            victims = set(fault.victims)
            if fault.kind in (*TAKING_KINDS, FaultKind.STALL):
                # A stalled node may be declared dead: it counts like a killed one.
                assert victims <= alive
                assert len(victims) < rep
                assert len(alive - victims) >= rep
            if fault.kind in TAKING_KINDS:
                alive -= victims
                (removed if fault.kind == FaultKind.REMOVE_NODE else taken).update(victims)
            elif fault.kind == FaultKind.RESTART:
                assert victims <= taken, "only a node a fault took is restarted"
                taken -= victims
                alive |= victims
            elif fault.kind == FaultKind.ADD_NODE:
                ids += 1
                assert fault.victims == (ids,)
                alive.add(ids)
        assert ids <= nodes + MAX_ADDED


def test_membership_schedule_tries_every_kind_before_repeating_one() -> None:
    for seed in range(20):
        schedule = MembershipSchedule(5, 3, random.Random(seed), Timing())
        used: set[FaultKind] = set()
        for _ in range(10):
            unused_possible = {k for k in KIND_ORDER if k not in used and schedule._options(k)}
            fault = schedule.next(set())
            assert fault is not None
            assert fault.kind in unused_possible or not unused_possible, (seed, fault.kind, unused_possible)
            used.add(fault.kind)


def test_membership_seed_kills_restarts_adds_and_removes() -> None:
    kinds = [f.kind for f in planned_faults(MEMBERSHIP_SEED, 4, 2, limit=4, membership=True)]
    assert kinds == [FaultKind.KILL, FaultKind.RESTART, FaultKind.ADD_NODE, FaultKind.REMOVE_NODE]


def test_a_cluster_is_settled_when_every_slot_has_rep_replicas_outside_the_gone() -> None:
    table = TableData(2, 2, 3, {1: "a", 2: "b", 3: "c"}, [3], [[1, 2], [2, 3, 1], [3, 1]], [0, 1, 1])
    report = StatusReport(1, 1, 1, table, [], [], 0, 0, 0.0, [], [])
    assert not settled(report, set()), "slot 2 has one live replica"
    healed = TableData(3, 2, 3, {1: "a", 2: "b", 3: "c"}, [3], [[1, 2], [2, 3, 1], [3, 1, 2]], [0, 1, 2])
    assert settled(StatusReport(1, 1, 1, healed, [], [], 0, 0, 0.0, [], []), set())
    assert not settled(StatusReport(1, 1, 1, healed, [], [], 0, 0, 0.0, [], []), {2}), (
        "server2 is gone, not yet declared"
    )
    assert not settled(StatusReport(1, 1, 1, None, [], [], 0, 0, 0.0, [], []), set())


# --- the analysis of a run ---

RELEASED = 100.0  # monotonic time at which the clients of these synthetic runs start


def op(client: int, kind: str, key: str, value: str | None, invoke: float, complete: float) -> Operation:
    outcome = Outcome.OK if value is not None else Outcome.NOT_FOUND
    return Operation(client, OpKind(kind), key, value, RELEASED + invoke, RELEASED + complete, outcome)


def analyse(history: list[Operation], faults: list[chaos_faults.Fault]) -> chaos_report.ChaosReport:
    shape = chaos_report.Shape(5, 3, 3, chaos_keys(5, 5, 3), 10.0, 0.5, 1)
    return chaos_report.analyse(shape, chaos_report.RunRecord(history, faults, RELEASED, set(), set()))


def app_with_chaos() -> typer.Typer:
    """A Typer app with just the chaos command, as ``bench`` registers it."""
    app = typer.Typer()
    app.callback()(lambda: None)
    chaos_command.register(app)
    return app


def kill_server1_at_1s() -> chaos_faults.Fault:
    return chaos_faults.Fault(t=1.0, kind=FaultKind.KILL, nodes=["server1"], duration_s=0.0, dead_before=[])


def lost_write() -> list[Operation]:
    """A get after the kill reads the value the last acknowledged put overwrote."""
    key = chaos_keys(1, 5, 3)[0]
    return [
        op(1, "put", key, "v1", 0.0, 0.1),
        op(1, "put", key, "v2", 0.2, 0.3),
        op(2, "get", key, "v1", 2.0, 2.1),
    ]


def test_analysis_measures_unavailability_and_reads_across_the_fault() -> None:
    on_victim, elsewhere = chaos_keys(2, 5, 3)  # primaries server1 and server2
    history = [
        op(1, "put", on_victim, "v1", 0.0, 0.1),
        op(1, "get", on_victim, "v1", 0.5, 0.6),
        op(2, "get", on_victim, "v1", 0.9, 2.0),  # invoked before the kill, answered by the new primary
        op(3, "get", on_victim, "v1", 1.2, 1.95),  # the first success invoked after the kill
        op(1, "put", elsewhere, "w1", 1.1, 1.2),
        op(1, "get", elsewhere, "w1", 1.3, 1.4),
    ]
    report = analyse(history, [kill_server1_at_1s()])
    assert report.verdict == "linearizable"
    assert report.checked == 6
    assert report.by_outcome == {"get ok": 4, "put ok": 2}
    [fault] = report.faults
    assert fault.affected_keys == 1
    assert fault.unavailable_ms == pytest.approx(950)
    assert report.unavailability_ms == {FaultKind.KILL: {"median": pytest.approx(950), "max": pytest.approx(950)}}
    assert report.reads_across_faults == 1
    assert report.reads_across_failovers == 2


def test_analysis_reports_a_lost_write_as_a_violation() -> None:
    report = analyse(lost_write(), [kill_server1_at_1s()])
    assert report.verdict == "violation"
    assert not report.ok
    assert report.violation is not None
    assert "'v1'" in report.violation


def test_a_final_read_missing_an_acknowledged_write_fails_the_run() -> None:
    *writes, _ = lost_write()
    key = writes[0].key
    shape = chaos_report.Shape(5, 3, 3, [key], 10.0, 0.5, 1)
    final = [op(9, "get", key, "v2", 5.0, 5.1)]
    kept = chaos_report.analyse(shape, chaos_report.RunRecord(writes, [], RELEASED, set(), set(), final=final))
    assert kept.ok
    assert (kept.final_reads, kept.lost_writes) == (1, [])
    # Absent although both puts were acknowledged: not linearizable, and a lost write.
    final = [op(9, "get", key, None, 5.0, 5.1)]
    lost = chaos_report.analyse(shape, chaos_report.RunRecord(writes, [], RELEASED, set(), set(), final=final))
    assert not lost.ok
    assert lost.verdict == "violation"
    assert lost.lost_writes == [f"lost write: {key!r} reads absent, but 2 puts were acknowledged"]


def test_a_lost_preloaded_key_fails_a_linearizable_run() -> None:
    history = [op(1, "put", "k0", "v1", 0.0, 0.1), op(1, "get", "k0", "v1", 0.2, 0.3)]
    shape = chaos_report.Shape(5, 3, 3, chaos_keys(5, 5, 3), 10.0, 0.5, 1, preload=1000)
    check = BulkCheck(keys=1000, lost=2, unreadable=1)
    report = chaos_report.analyse(shape, chaos_report.RunRecord(history, [], RELEASED, set(), set(), 1.5, check))
    assert report.verdict == "linearizable"
    assert (report.preloaded, report.preloaded_lost, report.preloaded_unreadable) == (1000, 2, 1)
    assert not report.ok
    assert report.to_json()["preloaded_lost"] == 2


def test_command_exits_1_and_shows_the_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    report = analyse(lost_write(), [kill_server1_at_1s()])
    monkeypatch.setattr(chaos, "run_chaos", lambda **_options: report)
    result = CliRunner().invoke(app_with_chaos(), ["chaos", "--seed", "1", "--duration", "1"])
    assert result.exit_code == 1
    assert result.stdout.startswith("chaos seed 1 ")
    assert "NOT LINEARIZABLE" in result.stdout
    assert "no linearization exists" in result.stdout


# --- chaos runs ---


def assert_linearizable_and_nontrivial(report: chaos_report.ChaosReport) -> None:
    assert report.verdict == "linearizable", f"seed {report.seed}, logs in {report.logs}:\n{report.violation}"
    assert report.checked >= 200
    assert report.faults_by_kind.get(FaultKind.PAUSE, 0) >= 1
    assert report.faults_by_kind.get(FaultKind.KILL, 0) >= 1
    assert report.reads_across_faults >= 1
    assert report.dead_but_running == []
    assert_no_child_processes()


@pytest.mark.cluster
@pytest.mark.long  # 35 s; the default suite kills and pauses the leader in test_master_failover.py, and the
# simulator's schedules draw leader-crash and leader-pause
def test_chaos_run_with_leader_faults_is_linearizable(tmp_path: Path) -> None:
    report = run_chaos(
        nodes=5, rep=3, clients=4, keys=8, duration=30.0, seed=DEFAULT_SEED, home=tmp_path / "home", master_faults=True
    )
    assert_linearizable_and_nontrivial(report)
    for kind in (FaultKind.LEADER_CRASH, FaultKind.LEADER_PAUSE):
        assert report.faults_by_kind.get(kind, 0) >= 1, report.faults_by_kind
    assert [f.error for f in report.faults if f.error] == []


@pytest.mark.long  # the simulator and tests/test_healing.py cover restart, add and remove in the default suite
@pytest.mark.cluster
def test_chaos_run_with_restart_add_and_remove_is_linearizable(tmp_path: Path) -> None:
    report = run_chaos(
        nodes=4,
        rep=2,
        clients=3,
        keys=6,
        duration=25.0,
        seed=MEMBERSHIP_SEED,
        home=tmp_path / "home",
        fault_interval=(1.0, 2.0),
        membership=True,
    )
    assert report.verdict == "linearizable", f"seed {report.seed}, logs in {report.logs}:\n{report.violation}"
    assert report.checked >= 200
    for kind in MEMBERSHIP_KINDS:
        assert report.faults_by_kind.get(kind, 0) >= 1, report.faults_by_kind
    assert [f.error for f in report.faults if f.error] == []
    assert report.ok
    assert report.dead_but_running == []
    assert report.to_json()["faults_by_kind"]["restart"] >= 1
    assert_no_child_processes()
    assert_no_node_of(tmp_path / "home")


@pytest.mark.long
@pytest.mark.cluster
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("seed", LONG_SEEDS)
def test_long_chaos_run_is_linearizable(tmp_path: Path, seed: int) -> None:
    # A cluster only ever loses nodes, so minutes of faults need several clusters: rounds of 30 s, each on a
    # fresh one, alternating five nodes with three replicas and seven with four.
    for round_seed in range(seed * 100, seed * 100 + LONG_ROUNDS):
        nodes, rep = (5, 3) if round_seed % 2 else (7, 4)
        report = run_chaos(
            nodes=nodes,
            rep=rep,
            clients=4,
            keys=8,
            duration=30.0,
            seed=round_seed,
            home=tmp_path / f"home{round_seed}",
            master_faults=True,
        )
        assert_linearizable_and_nontrivial(report)


# --- the command ---


def chaos_command_is_registered() -> bool:
    proc = subprocess.run(
        [sys.executable, "-m", "kvcluster", "bench", "chaos", "--help"], capture_output=True, timeout=60, check=False
    )
    return proc.returncode == 0


def run_chaos_command(cwd: Path, *args: str) -> tuple[int, str, str]:
    """``kvcluster bench chaos ARGS`` as (exit code, stdout, stderr).

    Until ``bench`` registers the command, it runs in a Typer app of its own,
    with ``KvclusterError`` reported the way ``kvcluster`` reports it.
    """
    if chaos_command_is_registered():
        argv = [sys.executable, "-m", "kvcluster", "bench", "chaos", *args]
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=240, check=False)
        return proc.returncode, proc.stdout, proc.stderr
    result = CliRunner().invoke(app_with_chaos(), ["chaos", *args])
    if isinstance(result.exception, KvclusterError):
        return result.exception.exit_code, result.stdout, f"error: {result.exception}\n"
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, ""


def test_command_refuses_a_replica_count_above_the_nodes(tmp_path: Path) -> None:
    code, _, stderr = run_chaos_command(tmp_path, "--nodes", "3", "--rep", "4")
    assert code == 2
    assert stderr.startswith("error: ")
    assert "--rep" in stderr


@pytest.mark.cluster
def test_command_prints_the_seed_and_saves_report_and_history(tmp_path: Path) -> None:
    report_path, history_path = tmp_path / "chaos.json", tmp_path / "history.jsonl"
    code, stdout, stderr = run_chaos_command(
        tmp_path,
        "--nodes", "3", "--rep", "2", "--clients", "2", "--keys", "4", "--duration", "8", "--seed", "5",
        "--json", str(report_path), "--save-history", str(history_path), "--home", str(tmp_path / "home"),
        "--preload", "3000",
    )  # fmt: skip
    assert code == 0, f"stdout:\n{stdout}\nstderr:\n{stderr}"
    assert stdout.splitlines()[0].startswith("chaos seed 5 ")
    report = json.loads(report_path.read_text())
    assert report["verdict"] == "linearizable"
    assert report["seed"] == 5
    assert report["faults_by_kind"] == {"pause": 1}
    # The preloaded keys are not in the history, but every one was read back after the faults.
    assert (report["preloaded"], report["preloaded_lost"], report["preloaded_unreadable"]) == (3000, 0, 0)
    assert report["preload_s"] > 0
    history = HistoryRecorder.load(history_path)
    assert len(history) == report["operations"] + report["final_reads"] >= report["checked"] > 0
    assert report["final_reads"] == 4
    assert "linearizable" in stdout
    assert_no_child_processes()


# --- partitions ---


def test_partitions_are_refused_in_one_line_without_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(app_with_chaos(), ["chaos", "--partitions", "--home", str(tmp_path)])
    assert isinstance(result.exception, KvclusterError)
    assert result.exception.exit_code == 2
    assert str(result.exception).startswith("--partitions needs root")
    assert not list(tmp_path.iterdir())  # refused before anything started


def namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


# Cuts on real processes are tested in tests/test_partitions.py, the harness in the tests above, and its
# network track in the tests below; a whole chaos run with cuts runs with the long suite.
@pytest.mark.long
@pytest.mark.cluster
@pytest.mark.skipif(os.geteuid() != 0, reason="partitions need root (network namespaces and nftables)")
def test_chaos_run_with_partitions_is_linearizable_and_leaves_no_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[NetHosts] = []

    class RecordedHosts(NetHosts):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    monkeypatch.setattr(chaos, "NetHosts", RecordedHosts)
    report = run_chaos(nodes=3, rep=2, clients=2, keys=4, duration=12.0, seed=2, home=tmp_path, partitions=True)
    assert report.verdict == "linearizable", f"logs in {report.logs}:\n{report.violation}"
    assert report.checked >= 200
    assert set(report.faults_by_kind) & set(NETWORK_FAULTS), report.faults_by_kind
    assert report.dead_but_running == []
    [hosts] = made
    # Other clusters may come and go on this machine meanwhile: only this run's hosts must be gone.
    assert not {ns for ns in namespaces() if ns == hosts.switch or ns.startswith(f"kv{hosts.run}-")}
    assert_no_child_processes()


def network_track(monkeypatch: pytest.MonkeyPatch, settled_now: bool) -> NetworkFaults:
    monkeypatch.setattr(NetworkFaults, "_settled", staticmethod(lambda _endpoint, _exited: settled_now))
    return NetworkFaults(3, NetHosts("t", "10.1.1", {}), FaultSchedule(5, 3, random.Random(3), Timing()))


def test_network_track_takes_every_kind_once_and_waits_to_silence_a_node(monkeypatch: pytest.MonkeyPatch) -> None:
    unsettled = network_track(monkeypatch, settled_now=False)
    first = unsettled._choose("master1", "", set())
    assert first is not None
    assert first.kind == FaultKind.LEADER_CUT  # a fault on a node waits for every slot to have its replicas
    track = network_track(monkeypatch, settled_now=True)
    kinds = []
    for _ in range(len(NETWORK_FAULTS)):
        planned = track._choose("master1", "", set())
        assert planned is not None
        track.done.add(planned.kind)
        kinds.append(planned.kind)
    assert kinds == [FaultKind.ISOLATE, FaultKind.CUT_PEERS, FaultKind.ONEWAY, FaultKind.FLAKY, FaultKind.LEADER_CUT]
    assert set(kinds) == set(NETWORK_FAULTS)


def test_network_faults_take_only_live_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    track = network_track(monkeypatch, settled_now=True)
    for _ in range(50):
        planned = track._plan(FaultKind.ONEWAY, "master2", {1, 2, 3, 4})
        assert planned is not None
        assert (planned.sends, planned.hears) == ("server5", "master2")
    assert track._plan(FaultKind.ISOLATE, "master2", {1, 2, 3, 4, 5}) is None


def test_with_partitions_node_faults_only_and_a_node_that_came_back_may_be_taken_again() -> None:
    schedule = MembershipSchedule(5, 3, random.Random(4), Timing(), kinds=NODE_FAULTS, revive=True)
    drawn = [schedule.next(set()) for _ in range(3)]
    assert all(f is not None and f.kind in NODE_FAULTS for f in drawn)
    # Two nodes dead now leave no victim (3 replicas need 3 nodes); once they are back, faults come again.
    assert schedule.next({1, 2}) is None
    again = schedule.next(set())
    assert again is not None
    assert again.kind in NODE_FAULTS
