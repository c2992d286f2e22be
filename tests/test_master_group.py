"""The master group's rules in the sans-I/O cores: who acts, what waits for the log, and how a leader takes over."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kvcluster.check.faults import FaultKind
from kvcluster.core.actions import Action, Answer, Propose
from kvcluster.core.group_state import MasterState, decode_state, encode_state, takeover_grace
from kvcluster.core.master import TICK, MasterCore
from kvcluster.core.node import NodeCore
from kvcluster.core.placement import with_dead
from kvcluster.core.protocol import (
    Fenced,
    Heartbeat,
    HeartbeatAck,
    Hello,
    NotLeader,
    StatusReport,
    StatusRequest,
    Table,
    TableRequest,
    Timing,
)
from kvcluster.sim import SimConfig, run_schedule
from kvcluster.sim.faults import Fault
from kvcluster.sim.trace import Trace

TIMING = Timing()
SLOTS = 8
PIDS = {1: 101, 2: 102, 3: 103}


def member(master_id: int = 1) -> MasterCore:
    return MasterCore(3, 2, TIMING, 900 + master_id, SLOTS, master_id=master_id, replicated=True)


def answers(actions: list[Action]) -> list[tuple[object, object]]:
    return [(a.route, a.message) for a in actions if isinstance(a, Answer)]


def proposals(actions: list[Action]) -> list[MasterState]:
    return [a.state for a in actions if isinstance(a, Propose)]


def registered(core: MasterCore, now: float = 0.0) -> MasterState:
    """Every node says hello to a leading member; return the state it proposes (nothing is announced yet)."""
    for node_id, pid in PIDS.items():
        core.on_message(now, f"r{node_id}", Hello(node_id, f"tcp://n{node_id}", pid))
    actions = core.take()
    assert not [m for _, m in answers(actions) if isinstance(m, Table)], "a table left before it was committed"
    (state,) = proposals(actions)
    return state


def beat(core: MasterCore, now: float, node_id: int, version: int = 1) -> list[tuple[object, object]]:
    core.on_message(now, f"r{node_id}", Heartbeat(node_id, PIDS[node_id], now, version, 0))
    return answers(core.take())


def test_a_member_that_does_not_lead_redirects_and_grants_nothing() -> None:
    core = member(2)
    core.follow(term=4, leader=3)
    core.on_message(0.0, "client", TableRequest())
    core.on_message(0.0, "client", StatusRequest())
    core.on_message(0.0, "r1", Heartbeat(1, 101, 0.0, 1, 0))
    assert answers(core.take()) == [("client", NotLeader(4, 3)), ("client", NotLeader(4, 3))]


def test_tables_reach_nodes_and_clients_only_once_committed() -> None:
    core = member()
    core.lead(0.0, term=1, state=None, grace=0.0)
    state = registered(core)
    core.on_message(0.0, "client", TableRequest())
    (reply,) = answers(core.take())
    assert not isinstance(reply[1], Table)
    core.on_committed(state)
    tables = [route for route, m in answers(core.take()) if isinstance(m, Table)]
    assert sorted(tables) == ["r1", "r2", "r3"]


def test_lease_grants_and_fencing_carry_the_term() -> None:
    core = member()
    core.lead(0.0, term=7, state=None, grace=0.0)
    core.on_committed(registered(core))
    core.take()
    assert beat(core, 0.1, 1) == [("r1", HeartbeatAck(0.1, 1, 7))]
    core.on_message(0.2, "stranger", Heartbeat(1, 999, 0.2, 1, 0))
    assert answers(core.take()) == [("stranger", Fenced(1, 7))]


def committed_state(dead: list[int] | None = None) -> MasterState:
    core = member()
    core.lead(0.0, term=1, state=None, grace=0.0)
    state = registered(core)
    if dead:
        assert state.table is not None
        state = MasterState(with_dead(state.table, dead), [], state.pids, [])
    return decode_state(encode_state(state))


def test_a_new_leader_declares_no_one_dead_before_the_old_leases_have_run_out() -> None:
    grace = takeover_grace(TIMING, fallback=0.4)
    assert grace + TIMING.dead_after >= 0.4 + TIMING.lease, "a lease the old leader granted could still be running"
    core = member(2)
    core.lead(10.0, term=2, state=committed_state(), grace=grace)
    now = 10.0
    while now < 10.0 + grace + TIMING.dead_after - TICK:
        beat(core, now, 2)
        beat(core, now, 3)  # server1 is the only one the new leader never hears
        core.tick(now)
        assert not proposals(core.take()), f"server1 was declared dead {now - 10.0:.2f} s after the takeover"
        now += TICK
    core.tick(10.0 + grace + TIMING.dead_after + TICK)
    (state,) = proposals(core.take())
    assert state.table is not None
    assert state.table.dead == [1]


def test_a_new_leader_adopts_the_incarnations_the_log_names_and_fences_others() -> None:
    core = member(3)
    core.lead(5.0, term=3, state=committed_state(), grace=0.2)
    assert beat(core, 5.1, 2) == [("r2", HeartbeatAck(5.1, 1, 3))]
    core.on_message(5.1, "old-r1", Heartbeat(1, 55, 5.1, 1, 0))
    assert answers(core.take()) == [("old-r1", Fenced(1, 3))]


def test_a_new_leader_brings_a_node_with_an_old_table_up_to_date() -> None:
    state = committed_state(dead=[3])
    core = member(2)
    core.lead(0.0, term=2, state=state, grace=0.0)
    replies = beat(core, 0.1, 1, version=1)
    assert replies[0] == ("r1", HeartbeatAck(0.1, 2, 2))
    assert replies[1] == ("r1", Table(state.table))  # type: ignore[arg-type]


def test_status_names_the_member_and_its_term() -> None:
    core = member(2)
    core.lead(0.0, term=5, state=committed_state(), grace=0.0)
    core.on_message(0.0, "client", StatusRequest())
    ((_, report),) = answers(core.take())
    assert isinstance(report, StatusReport)
    assert (report.master_id, report.term) == (2, 5)


@pytest.mark.parametrize("late_term", [0, 1, 2])
def test_a_node_ignores_grants_and_fencing_from_an_older_term(late_term: int) -> None:
    node = NodeCore(1, "tcp://n1", 101, TIMING)
    node.on_master(1.0, HeartbeatAck(1.0, 0, 3))
    assert node.lease_until == pytest.approx(1.0 + TIMING.lease)
    node.on_master(1.2, HeartbeatAck(1.2, 0, late_term))
    node.on_master(1.2, Fenced(1, late_term))
    assert node.lease_until == pytest.approx(1.0 + TIMING.lease)
    assert not node.stopped
    node.on_master(1.3, Fenced(1, 3))
    assert node.stopped


# --- whole simulated clusters: the group modelled by its contract ---

LEADER_FAULTS = [
    [Fault(FaultKind.LEADER_CRASH, 1.0, 0, 0.7), Fault(FaultKind.KILL, 1.1, 1)],
    [Fault(FaultKind.LEADER_CUT, 1.0, 0, 0.55), Fault(FaultKind.KILL, 1.05, 2)],
    [
        Fault(FaultKind.KILL, 1.0, 3),
        Fault(FaultKind.LEADER_CRASH, 1.6, 0, 0.9),
        Fault(FaultKind.LEADER_CUT, 3.0, 0, 0.6),
    ],
]


@pytest.mark.parametrize("faults", LEADER_FAULTS, ids=["crash-then-kill", "cut-then-kill", "kill-crash-cut"])
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_leader_changes_around_a_node_death_keep_histories_linearizable(seed: int, faults: list[Fault]) -> None:
    lines: list[str] = []
    outcome = run_schedule(seed, SimConfig(nodes=4, rep=2, duration=5.0), faults=faults, trace=Trace(echo=lines.append))
    assert outcome.ok, outcome.problems
    assert len(outcome.result.history) > 50
    assert outcome.result.declared_dead == [f.node for f in faults if f.kind == FaultKind.KILL]
    leads = [line for line in lines if " leads term " in line]
    assert len(leads) == sum(f.kind in (FaultKind.LEADER_CRASH, FaultKind.LEADER_CUT) for f in faults)


def test_an_entry_from_an_older_term_never_replaces_a_newer_state(tmp_path: Path) -> None:
    """pysyncobj forwards a deposed leader's queued proposal to the new leader; it must not win when it commits."""
    from kvcluster.master_group import free_loopback_port  # noqa: PLC0415
    from kvcluster.runtime.raft_log import MasterGroup  # noqa: PLC0415

    group = MasterGroup(1, [f"127.0.0.1:{free_loopback_port()}"], "secret", tmp_path / "m1.journal")
    try:
        applied: list[bool] = []
        deadline = time.monotonic() + 30
        while not group.role().leading and time.monotonic() < deadline:
            group.tick()
            time.sleep(0.005)
        for blob, term in ((b"newer", 5), (b"older", 3)):
            group.append(blob, term, applied.append)
            while len(applied) < (2 if term == 3 else 1) and time.monotonic() < deadline:
                group.tick()
                time.sleep(0.005)
        assert applied == [True, True]
        assert group.state() == b"newer"
    finally:
        group.close()
