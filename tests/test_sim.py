"""The simulator: the same seed gives the same run, hundreds of schedules pass, and a broken rule is caught.

The simulator drives the real cores (``kvcluster.core``) on a simulated
network, so these tests check the cores' guarantees under faults without
starting a process; the last tests prove the checks can fail by breaking a
rule in the node core and watching the simulator report it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kvcluster import commands
from kvcluster.core import node as node_core
from kvcluster.core.actions import Answer, ToMaster, ToPeer
from kvcluster.core.healing import Repairs
from kvcluster.core.node import NodeCore
from kvcluster.core.placement import initial_table, slot_of, with_dead, with_replicas
from kvcluster.core.protocol import (
    CopyDone,
    CopySlot,
    HeartbeatAck,
    Reconcile,
    Replicate,
    ReplicateAck,
    Reply,
    Request,
    SlotCopy,
    Table,
    Timing,
)
from kvcluster.core.replica import DEDUP_SPAN, AppliedOps
from kvcluster.core.wire import Op, OpKind, Status, TableData
from kvcluster.errors import SimulationFailed
from kvcluster.sim import SimConfig, report, run_schedule, run_schedules
from kvcluster.sim.trace import Trace

SEEDS = range(1, 301)  # the default run: a few hundred schedules, about 10 s of CPU
LONG_SEEDS = range(1_000_000, 1_100_000)
DIGEST_SEED = 11
MEMBERSHIP_SEED = 766  # 4 nodes, rep 2: a kill, a restart of that node, a cut, an add


def digest_of(seed: int) -> tuple[str, int]:
    trace = Trace(digest=True)
    outcome = run_schedule(seed, SimConfig(), trace=trace)
    return trace.digest(), len(outcome.result.history)


@pytest.mark.parametrize("seed", [DIGEST_SEED, MEMBERSHIP_SEED])
def test_the_same_seed_gives_the_same_run(seed: int) -> None:
    first, ops = digest_of(seed)
    again, _ = digest_of(seed)
    assert ops > 50
    assert first == again
    assert digest_of(seed + 1)[0] != first


@pytest.mark.parametrize("seed", [DIGEST_SEED, MEMBERSHIP_SEED])
def test_the_same_seed_gives_the_same_run_in_another_process(seed: int) -> None:
    """String hashes are salted per process: a run must not depend on them."""
    code = f"from test_sim import digest_of; print(digest_of({seed})[0])"
    digests = set()
    for salt in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": salt, "PYTHONPATH": str(Path(__file__).parent)}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        digests.add(proc.stdout.strip())
    assert digests == {digest_of(seed)[0]}


def test_hundreds_of_schedules_keep_every_guarantee() -> None:
    lines: list[str] = []
    summary = run_schedules(SEEDS.start, len(SEEDS), SimConfig(), lines.append, jobs=min(2, os.cpu_count() or 1))
    if summary.failed:
        pytest.fail(report(run_schedule(summary.failed[0], SimConfig()), SimConfig()) + "\n" + "\n".join(lines))
    assert summary.schedules == len(SEEDS)
    assert summary.faults > len(SEEDS)  # the runs were not fault-free by accident
    assert summary.ops > 100 * len(SEEDS)


@pytest.fixture
def lease_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Break a rule: a node serves as primary whether or not its lease from the master is fresh."""
    serve = NodeCore._on_request

    def on_request(self: NodeCore, route: object, request: Request) -> None:
        self.lease_until = float("inf")
        serve(self, route, request)

    monkeypatch.setattr(node_core.NodeCore, "_on_request", on_request)


@pytest.mark.usefixtures("lease_ignored")
def test_a_primary_that_ignores_its_lease_is_caught() -> None:
    """An isolated primary keeps serving stale reads after its successor took writes."""
    for seed in SEEDS:
        outcome = run_schedule(seed, SimConfig())
        if not outcome.ok:
            assert any("linearizability violation" in p for p in outcome.problems), outcome.problems
            text = report(outcome, SimConfig())
            assert f"replay: kvcluster sim --seed {seed} --schedules 1 -v" in text
            assert "faults:" in text
            assert "isolate" in text or "mute" in text or "pause" in text
            return
    pytest.fail("no schedule caught a primary serving without a lease")


@pytest.mark.usefixtures("lease_ignored")
def test_the_command_reports_a_failing_seed(capsys: pytest.CaptureFixture[str]) -> None:
    failing = next(seed for seed in SEEDS if not run_schedule(seed, SimConfig()).ok)
    with pytest.raises(SimulationFailed, match=f"replay one with: kvcluster sim --seed {failing} --schedules 1 -v"):
        commands.run(["sim", "--seed", str(failing), "--schedules", "2"])
    out = capsys.readouterr().out
    assert re.search(rf"^seed {failing} \(.*\): FAILED: linearizability violation", out, re.MULTILINE), out
    assert f"the first failure in full (seed {failing}):" in out
    assert "faults:\n  t=" in out
    assert "no linearization exists" in out
    assert re.search(r"2 schedules, [12] failed, \d+ ops checked.*\n\Z", out), out


def test_the_command_runs_schedules_and_sums_them_up() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kvcluster", "sim", "--seed", "5", "--schedules", "4", "--jobs", "2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(
        r"4 schedules, 0 failed, \d+ ops checked, \d+ faults injected, [\d.]+ s wall, [\d.]+ s CPU, "
        r"\d+ schedules per CPU minute\n",
        proc.stdout,
    ), proc.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--nodes", "3", "--rep", "4"], "--rep 4 needs at least 4 nodes"),
        (["--schedules", "0"], "--schedules"),
        (["--duration", "0.1"], "--duration"),
    ],
)
def test_the_command_refuses_bad_options(args: list[str], fragment: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kvcluster", "sim", *args], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert fragment in lines[0]


# --- bugs the simulator found, kept found ---

HEALING_SEEDS = [210, 243]  # a primary killed (healing waited 10 s); two nodes killed 0.4 s apart (the same)


@pytest.mark.parametrize("seed", HEALING_SEEDS)
def test_healing_restores_every_slot_soon_after_deaths(seed: int) -> None:
    outcome = run_schedule(seed, SimConfig())
    assert outcome.result.declared_dead
    assert outcome.result.healed, report(outcome, SimConfig())


HOT_KEYS = SimConfig(nodes=3, rep=2, duration=6, clients=6, keys=3)


def test_a_put_resent_after_a_later_put_of_its_client_was_applied_is_not_applied_again() -> None:
    """No fault at all: a lost reply, and the resend was applied again over a newer put (seed 701050)."""
    outcome = run_schedule(701050, HOT_KEYS, faults=[])
    assert outcome.ok, report(outcome, HOT_KEYS)


def test_dedup_remembers_an_op_applied_after_a_later_op_of_the_same_client() -> None:
    """A client's requests run concurrently, so a node may apply its op 6 after its op 8.

    The first op id seen set the start of the client's window, and anything below it was dropped
    as "long over": op 6 was never remembered, and a resend of it was applied again.
    """
    applied = AppliedOps()
    applied.add(1, 8)
    applied.add(1, 6)
    applied.add(1, 100)
    applied.add(1, 0)
    assert [(1, op) in applied for op in (0, 6, 8, 100)] == [True] * 4
    assert [(1, op) in applied for op in (1, 7, 9, 99)] == [False] * 4
    far = AppliedOps()
    far.add(2, DEDUP_SPAN + 100)
    far.add(2, 50)  # older than the span remembered: forgotten by design
    assert (2, 50) not in far
    assert (2, DEDUP_SPAN + 100) in far


def rep3_cluster() -> tuple[TableData, int, int, int, int]:
    """A 5-node, rep-3 table and a slot of it: (table, slot, its primary, first backup, second backup)."""
    table = initial_table({i: f"sim://server{i}" for i in range(1, 6)}, 3, 16)
    slot = 7
    primary, first, second = table.replicas[slot]
    return table, slot, primary, first, second


def test_a_copy_asked_for_while_reconciling_starts_once_reconciled() -> None:
    """The master asks for copies in the tick that publishes a death, so the promoted primary is still reconciling.

    It used to drop the request, and the master asked again only after ``COPY_TIMEOUT`` (10 s).
    """
    table, slot, dead, promoted, backup = rep3_cluster()
    target = next(n for n in table.endpoints if n not in table.replicas[slot])
    core = NodeCore(promoted, table.endpoints[promoted], 1, Timing())
    core.on_master(0.0, Table(table))
    core.on_master(0.0, HeartbeatAck(0.0, 1, 1))
    after = with_dead(table, [dead])
    core.on_master(1.0, Table(after))
    core.on_master(1.0, CopySlot(slot, after.epochs[slot], target))
    core.flush(1.0)
    sent = [a for a in core.take() if isinstance(a, ToPeer)]
    assert not [a for a in sent if isinstance(a.message, SlotCopy)]
    reconcile = next(a for a in sent if isinstance(a.message, Reconcile) and a.node_id == backup)
    assert isinstance(reconcile.message, Reconcile)
    core.on_peer(1.001, ReplicateAck(reconcile.message.repl_id, backup, []))
    core.flush(1.001)
    copies = [a for a in core.take() if isinstance(a, ToPeer) and isinstance(a.message, SlotCopy)]
    assert [(c.node_id, c.message.slot) for c in copies if isinstance(c.message, SlotCopy)] == [(target, slot)]


def test_a_move_whose_slot_lost_another_replica_is_planned_again() -> None:
    """A source refuses a copy asked for at an older epoch; the master used to wait ``COPY_TIMEOUT`` to ask again."""
    table, slot, dead, _, other = rep3_cluster()
    repairs = Repairs()
    short = with_dead(table, [dead])
    moves = [m for m in repairs.plan(1.0, short) if m.slot == slot]
    assert moves
    assert repairs.cancel_broken(short, 1.1) == []
    assert slot in [m.slot for m in repairs.cancel_broken(with_dead(short, [other]), 1.2)]


def deliver(source: NodeCore, target: NodeCore, now: float) -> None:
    """Hand ``target`` what ``source`` sent it, and ``source`` the acknowledgements."""
    for action in source.take():
        if isinstance(action, ToPeer) and action.node_id == target.node_id:
            target.on_router(now, "peer", action.message)
    for action in target.take():
        if isinstance(action, Answer) and action.route == "peer":
            source.on_peer(now, action.message)


def test_a_resend_to_a_replica_made_by_a_copy_is_not_applied_twice() -> None:
    """The copy carries the op ids its source holds as committed (kvcluster sim --seed 700892 --nodes 3 --rep 2
    --duration 6 --clients 6 --keys 3)."""
    endpoints = {i: f"sim://server{i}" for i in range(1, 4)}
    first = initial_table(endpoints, 2, 16)
    slot = 0
    key = next(k for k in (f"k{i}" for i in range(1000)) if slot_of(k, 16) == slot)
    p, b = first.replicas[slot]
    t = next(n for n in endpoints if n not in (p, b))
    primary, copy = NodeCore(p, endpoints[p], 1, Timing()), NodeCore(t, endpoints[t], 2, Timing())
    for core in (primary, copy):
        core.on_master(0.0, Table(first))
        core.on_master(0.0, HeartbeatAck(0.0, 1, 1))
        core.take()
    # Client 1 puts X (op 7); the backup dies before acknowledging; the next table commits X; the OK gets lost.
    primary.on_router(0.1, "client1", Request(1, 1, [Op(OpKind.PUT, key, "X", slot, 0, 7)]))
    primary.flush(0.1)
    primary.take()
    second = with_dead(first, [b])
    for core in (primary, copy):
        core.on_master(1.0, Table(second))
        core.on_master(1.0, HeartbeatAck(0.9, 2, 1))
    primary.flush(1.0)
    copy.take()
    assert [a.message for a in primary.take() if isinstance(a, Answer) and a.route == "client1"]
    # Healing copies the slot to t, and the master adds t to its replicas.
    primary.on_master(1.1, CopySlot(slot, second.epochs[slot], t))
    deliver(primary, copy, 1.1)
    primary.flush(1.1)
    assert any(isinstance(a, ToMaster) and isinstance(a.message, CopyDone) for a in primary.take())
    third = with_replicas(second, [(slot, t)])
    for core in (primary, copy):
        core.on_master(1.2, Table(third))
        core.on_master(1.2, HeartbeatAck(1.15, 3, 1))
        core.take()
    # Client 2 puts Y, acknowledged by both replicas.
    primary.on_router(1.3, "client2", Request(2, 1, [Op(OpKind.PUT, key, "Y", slot, third.epochs[slot], 1)]))
    primary.flush(1.3)
    deliver(primary, copy, 1.3)
    primary.flush(1.3)
    assert [a.message for a in primary.take() if isinstance(a, Answer) and a.route == "client2"]
    # The primary dies; t is promoted; client 1, still without an answer, resends X with the same op id.
    fourth = with_dead(third, [p])
    copy.on_master(2.0, Table(fourth))
    copy.on_master(2.0, HeartbeatAck(1.9, 4, 1))
    copy.flush(2.0)
    copy.take()
    copy.on_router(2.1, "client1", Request(1, 2, [Op(OpKind.PUT, key, "X", slot, fourth.epochs[slot], 7)]))
    copy.flush(2.1)
    copy.on_router(2.2, "client3", Request(3, 1, [Op(OpKind.GET, key, None, slot, fourth.epochs[slot], 1)]))
    copy.flush(2.2)
    (reply,) = [a.message for a in copy.take() if isinstance(a, Answer) and a.route == "client3"]
    assert isinstance(reply, Reply)
    assert reply.results[0].value == "Y"  # X was applied before Y; applying its resend again brings X back


@pytest.mark.long
@pytest.mark.timeout(4 * 3600)
def test_a_hundred_thousand_schedules_keep_every_guarantee() -> None:
    lines: list[str] = []
    summary = run_schedules(LONG_SEEDS.start, len(LONG_SEEDS), SimConfig(), lines.append, jobs=os.cpu_count() or 1)
    assert not summary.failed, "\n".join(lines)


def test_a_put_overtaken_at_the_primary_is_remembered_there() -> None:
    """An older put to a key that finishes after a newer one is not applied at the primary (the newer value
    stays); its op id was not remembered either, so a resend of it was applied over the newer put."""
    endpoints = {i: f"sim://server{i}" for i in range(1, 4)}
    table = initial_table(endpoints, 2, 16)
    p = table.replicas[0][0]
    first, second = [s for s in range(16) if table.replicas[s][0] == p][:1] + [
        s for s in range(16) if table.replicas[s][0] == p and table.replicas[s][1] != table.replicas[0][1]
    ][:1]
    key, other = (next(k for k in (f"k{i}" for i in range(1000)) if slot_of(k, 16) == s) for s in (first, second))
    core = NodeCore(p, endpoints[p], 1, Timing())
    core.on_master(0.0, Table(table))
    core.on_master(0.0, HeartbeatAck(0.0, 1, 1))
    core.take()
    # Request 1 puts X and waits on both backups; request 2 puts Y to the same key and waits on one only.
    core.on_router(
        0.1, "a", Request(1, 1, [Op(OpKind.PUT, key, "X", first, 0, 1), Op(OpKind.PUT, other, "Z", second, 0, 2)])
    )
    core.on_router(0.1, "b", Request(1, 2, [Op(OpKind.PUT, key, "Y", first, 0, 3)]))
    core.flush(0.1)
    sent = {a.node_id: a.message for a in core.take() if isinstance(a, ToPeer)}
    slow = table.replicas[second][1]
    fast = table.replicas[first][1]
    for node, message in sorted(sent.items(), key=lambda item: item[0] == slow):
        assert isinstance(message, Replicate)
        core.on_peer(0.2, ReplicateAck(message.repl_id, node, []))
        core.flush(0.2)
    assert fast != slow
    # The reply to request 1 was lost: its resend must be answered OK and leave Y in place.
    core.take()
    core.on_router(0.3, "a", Request(1, 3, [Op(OpKind.PUT, key, "X", first, 0, 1)]))
    core.on_router(0.3, "c", Request(2, 1, [Op(OpKind.GET, key, None, first, 0, 1)]))
    core.flush(0.3)
    replies = {a.route: a.message for a in core.take() if isinstance(a, Answer)}
    assert isinstance(replies["a"], Reply)
    assert replies["a"].results[0].status == Status.OK
    assert isinstance(replies["c"], Reply)
    assert replies["c"].results[0].value == "Y"
