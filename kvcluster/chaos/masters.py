"""Faults of the master group in a chaos run: the leading master killed (then restarted) or paused.

With ``--master-faults`` these come on a track of their own, seeded apart
from the node faults (so a seed's node faults stay the same), every
``MASTER_INTERVAL`` seconds, alternating:

* ``leader-crash``: SIGKILL of whichever master leads; once another leads,
  ``kvcluster restart`` brings the killed one back into the group.
* ``leader-pause``: SIGSTOP of the leader for ``MASTER_PAUSE`` seconds (past
  an election), then SIGCONT: it must step down, grant no lease from its old
  term, and follow.

Both leave the group a majority, so failures of storage nodes are still
detected and healed under the new leader while the load runs.
"""

from __future__ import annotations

import os
import random
import signal
import time

from kvcluster.chaos.injection import Fault, FaultInjector
from kvcluster.check.faults import FaultKind
from kvcluster.leader_link import await_leader

MASTER_INTERVAL = (4.0, 7.0)  # seconds between two faults of the leader
MASTER_PAUSE = (1.2, 2.5)  # seconds a paused leader stays stopped
ELECTION_DEADLINE = 15.0
LEADER_WAIT = 3.0  # seconds to find the leading master; its status answers may be slow under the load


class MasterFaults:
    """The seeded track of leader faults of one chaos run."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(f"{seed}/masters")
        self.count = 0

    def delay(self) -> float:
        return self.rng.uniform(*MASTER_INTERVAL)

    def inject(self, injector: FaultInjector) -> None:
        """Kill or pause the current leader (in turn), and record it; skipped if no master leads right now."""
        kind = FaultKind.LEADER_CRASH if self.count % 2 == 0 else FaultKind.LEADER_PAUSE
        length = self.rng.uniform(*MASTER_PAUSE)
        self.count += 1
        state = injector.state
        endpoints = state.master_endpoints()
        found = await_leader(endpoints, 0, time.monotonic() + LEADER_WAIT, poll=0.1)
        if found is None:
            injector.on_event(f"{time.monotonic() - injector.released:7.2f} s  no master leads: {kind} skipped")
            return
        index, term = found
        info = state.masters[index]
        at = time.monotonic()
        if kind == FaultKind.LEADER_CRASH:
            os.kill(info.pid, signal.SIGKILL)
            elected = await_leader(endpoints, term, at + ELECTION_DEADLINE)
            error = None if elected else "no new leader"
            took = time.monotonic() - at
            self._restart(injector, info.name)
        else:
            os.kill(info.pid, signal.SIGSTOP)
            injector.wait(at + length)
            os.kill(info.pid, signal.SIGCONT)
            error, took = None, 0.0
        recorded = Fault(
            t=at - injector.released,
            kind=kind,
            nodes=[info.name],
            duration_s=length if kind == FaultKind.LEADER_PAUSE else 0.0,
            dead_before=[],
            took_s=took,
            error=error,
        )
        injector.faults.append(recorded)
        what = f"for {length:.2f} s" if kind == FaultKind.LEADER_PAUSE else f"new leader in {took:.2f} s, restarted"
        injector.on_event(f"{recorded.t:7.2f} s  {kind} {info.name} (term {term}) {what}")

    @staticmethod
    def _restart(injector: FaultInjector, name: str) -> None:
        from kvcluster.process_control import start_master  # noqa: PLC0415

        start_master(injector.state, name)
