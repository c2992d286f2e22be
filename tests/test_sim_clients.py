"""Simulated clients run the real client core: they follow the master group's leader as real ones do."""

from __future__ import annotations

import re

from kvcluster.check.history import Outcome
from kvcluster.sim import SimConfig, run_schedule
from kvcluster.sim.faults import Fault, FaultKind
from kvcluster.sim.trace import Trace

CRASH_AT = 1.0
ELECTION = 0.5


def test_clients_pass_over_a_crashed_leader_and_follow_the_redirect_to_the_new_one() -> None:
    lines: list[str] = []
    crash = Fault(FaultKind.LEADER_CRASH, CRASH_AT, 0, duration=ELECTION)
    outcome = run_schedule(3, SimConfig(nodes=3, rep=2), faults=[crash], trace=Trace(echo=lines.append))
    assert outcome.ok, outcome.problems

    def at(line: str) -> float:
        return float(line.split(maxsplit=1)[0])

    tables = [line for line in lines if re.search(r"client\d+>master\d<\s+Table", line)]
    assert any(at(line) < CRASH_AT and "master1<" in line for line in tables)
    # master2 leads the next term (members take over in turn): clients found it, by silence and redirects.
    assert any(at(line) > CRASH_AT + ELECTION and "master2<" in line for line in tables)
    after = [op for op in outcome.result.history if op.invoke > CRASH_AT + ELECTION and op.outcome == Outcome.OK]
    assert after, "no operation completed after the election"
