"""The node faults of a chaos run: the seeded schedule that picks them, and their injection (kinds: ``check.faults``).

Faults:

* ``pause``: SIGSTOP a node for well over the failure detector's
  ``dead_after``, then SIGCONT. The master has declared it dead meanwhile;
  the resumed node must neither serve a stale read nor acknowledge a write,
  and it exits once the master fences it.
* ``kill``: SIGKILL a node.
* ``double-kill``: SIGKILL two nodes less than 0.3 s apart, so the second dies
  while the first one's failover is under way.
* ``stall``: SIGSTOP a node for about its lease, less than ``dead_after``,
  then SIGCONT: its lease may run out while it is stopped, and it must serve
  again without being declared dead.

With ``--membership``, the cluster's membership changes too, through the
commands people use (``membership``):

* ``restart``: ``kvcluster restart serverN`` of a node that a fault took
  down and the master declared dead; it joins with no slots and gets back by difference those it still holds.
* ``add-node``: ``kvcluster add-node``.
* ``remove-node``: ``kvcluster remove-node serverN``: drain, then stop.

With ``--master-faults``, the leading master is killed or paused too, on a
track of its own (``masters``); with ``--partitions``, links are cut on another (``partitions``).

Every node is the primary of some slots, so every victim is a primary. The
schedule never makes a slot lose all its replicas: a set of dead nodes (a
paused or stalled node counts as dead, since the master may declare it so)
is safe when no slot has every replica in it. The first fault that takes a
node for good is a pause and the second a kill, so every run with room for
two such faults exercises both; when no safe fault remains, the schedule
says so and injection stops.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kvcluster.check.faults import DOUBLE_KILL_GAP, FaultKind
from kvcluster.core.placement import NUM_SLOTS, node_name, replicas_for, slot_of
from kvcluster.core.protocol import Timing

if TYPE_CHECKING:
    from kvcluster.state import ClusterState, ProcessInfo
    from kvcluster.supervisor import Supervisor


FATAL_KINDS = (FaultKind.PAUSE, FaultKind.KILL, FaultKind.DOUBLE_KILL)  # the victim never serves again
MEMBERSHIP_KINDS = (FaultKind.RESTART, FaultKind.ADD_NODE, FaultKind.REMOVE_NODE)
TAKING_KINDS = (*FATAL_KINDS, FaultKind.REMOVE_NODE)  # the master ends up declaring the victims dead
STALL_SHARE = 0.3  # chance that the next fault is a stall (when one is safe)
REAP_INTERVAL = 0.05


@dataclass
class Fault:
    """One injected fault; ``t`` is seconds since the clients were released."""

    t: float
    kind: FaultKind
    nodes: list[str]
    duration_s: float
    """How long a pause or stall kept the node stopped; 0 for kills."""
    dead_before: list[str]
    """Nodes already dead (or declared dead) when the fault began."""
    affected_keys: int = 0
    """Keys whose primary was a victim when the fault began."""
    unavailable_ms: float | None = None
    """From the fault until every affected key had served a successful operation invoked after it."""
    took_s: float = 0.0
    """How long a restart, add or remove command ran (the join or the drain included)."""
    error: str | None = None
    """The error line of a restart, add or remove command that failed."""


def chaos_keys(count: int, nodes: int, rep: int) -> list[str]:
    """``count`` keys whose primaries go round the nodes, so every victim is the primary of some."""
    candidates = (f"k{j}" for j in itertools.count())
    return [
        next(key for key in candidates if replicas_for(slot_of(key), nodes, rep)[0] == index % nodes + 1)
        for index in range(count)
    ]


def primary_of(key: str, nodes: int, rep: int, dead: set[int]) -> int | None:
    return next((n for n in replicas_for(slot_of(key), nodes, rep) if n not in dead), None)


class Placement:
    """Which sets of dead nodes leave every slot a live replica."""

    def __init__(self, nodes: int, rep: int) -> None:
        self.replica_sets = {frozenset(replicas_for(slot, nodes, rep)) for slot in range(NUM_SLOTS)}

    def safe(self, dead: set[int]) -> bool:
        return not any(replicas <= dead for replicas in self.replica_sets)


def node_ids(names: Sequence[str]) -> set[int]:
    """The storage nodes among ``names`` (a fault of a master names a master)."""
    return {int(name.removeprefix("server")) for name in names if name.startswith("server")}


@dataclass(frozen=True)
class PlannedFault:
    """The next fault of a schedule."""

    kind: FaultKind
    victims: tuple[int, ...]
    length: float
    """Seconds a pause or stall keeps the node stopped, or between the kills of a double kill; 0 for a kill."""
    dead_before: frozenset[int]


# Runs a membership fault's command in a home: (home, fault, exited nodes, wait) -> (seconds, error).
MembershipCommand = Callable[
    [Path, PlannedFault, Callable[[], set[int]], Callable[[float], None]], tuple[float, str | None]
]


class FaultSchedule:
    """The seeded sequence of faults: kinds, victims, lengths and the delays between them.

    Every draw is made in the same order whatever happens, so a seed fixes the
    schedule as long as nodes die only where the schedule says.
    """

    def __init__(
        self,
        nodes: int,
        rep: int,
        rng: random.Random,
        timing: Timing,
        interval: tuple[float, float] = (2.0, 4.0),
        stall_share: float = STALL_SHARE,
    ) -> None:
        self.nodes = nodes
        self.rng = rng
        self.timing = timing
        self.interval = interval
        self.stall_share = stall_share
        self.placement = Placement(nodes, rep)
        self.dead: set[int] = set()  # nodes gone for good: by a fatal fault, or declared dead by the master
        self.fatal = 0

    def delay(self) -> float:
        """Seconds until the next fault."""
        return self.rng.uniform(*self.interval)

    def next(self, also_dead: set[int]) -> PlannedFault | None:
        """The next fault, given nodes that died meanwhile; None when no fault is safe any more."""
        self.dead |= also_dead
        alive = [n for n in range(1, self.nodes + 1) if n not in self.dead]
        for kind in self._kinds():
            candidates = self._candidates(kind, alive)
            if candidates:
                victims = self.rng.choice(candidates)
                fault = PlannedFault(kind, victims, self._length(kind), frozenset(self.dead))
                if kind in FATAL_KINDS:
                    self.dead.update(victims)
                    self.fatal += 1
                return fault
        return None

    def _kinds(self) -> list[FaultKind]:
        """Fault kinds to try, in order of preference."""
        # The first two fatal faults are a pause and a kill, so every run with room for two exercises both.
        first = (FaultKind.PAUSE, FaultKind.KILL)[self.fatal] if self.fatal < 2 else self.rng.choice(FATAL_KINDS)
        kinds = [first, *(k for k in FATAL_KINDS if k != first)]
        return [FaultKind.STALL, *kinds] if self.rng.random() < self.stall_share else kinds

    def _candidates(self, kind: FaultKind, alive: list[int]) -> list[tuple[int, ...]]:
        """Victims that leave every slot a live replica even if they never come back."""
        size = 2 if kind == FaultKind.DOUBLE_KILL else 1
        return [v for v in itertools.permutations(alive, size) if self.placement.safe(self.dead.union(v))]

    def _length(self, kind: FaultKind) -> float:
        t = self.timing
        if kind == FaultKind.PAUSE:
            # Well beyond the failure detector: the master declares the node dead while it is stopped.
            return self.rng.uniform(2 * t.dead_after, 3.5 * t.dead_after)
        if kind == FaultKind.STALL:
            # About the lease, but short enough that heartbeats resume before ``dead_after``.
            return self.rng.uniform(t.lease / 2, t.dead_after - 2 * t.heartbeat)
        if kind == FaultKind.DOUBLE_KILL:
            return self.rng.uniform(*DOUBLE_KILL_GAP)
        return 0.0


class FaultInjector:
    """Injects planned faults into a running cluster and records them."""

    def __init__(
        self,
        supervisor: Supervisor,
        state: ClusterState,
        on_event: Callable[[str], None],
        change_membership: MembershipCommand | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.change_membership = change_membership  # runs restart, add-node or remove-node (``membership``)
        self.state = state
        self.on_event = on_event
        self.stopped: ProcessInfo | None = None  # a node under SIGSTOP, resumed whatever happens
        self.faults: list[Fault] = []
        self.released = 0.0

    def exited(self) -> set[int]:
        """Nodes whose process is gone."""
        return {n for n, info in enumerate(self.state.servers, start=1) if not info.alive()}

    def inject(self, fault: PlannedFault) -> None:
        at = time.monotonic()
        match fault.kind:
            case FaultKind.KILL:
                self._signal(fault.victims[0], signal.SIGKILL)
            case FaultKind.DOUBLE_KILL:
                self._signal(fault.victims[0], signal.SIGKILL)
                time.sleep(fault.length)
                self._signal(fault.victims[1], signal.SIGKILL)
            case FaultKind.PAUSE | FaultKind.STALL:
                self._stop_for(fault.victims[0], fault.length)
        recorded = Fault(
            t=at - self.released,
            kind=fault.kind,
            nodes=[node_name(n) for n in fault.victims],
            duration_s=fault.length if fault.kind in (FaultKind.PAUSE, FaultKind.STALL) else 0.0,
            dead_before=[node_name(n) for n in sorted(fault.dead_before)],
        )
        if fault.kind in MEMBERSHIP_KINDS:
            self._change_membership(fault, recorded)
        self.faults.append(recorded)
        stopped = f" for {recorded.duration_s:.2f} s" if recorded.duration_s else ""
        took = f" in {recorded.took_s:.2f} s" if recorded.took_s else ""
        failed = f" FAILED: {recorded.error}" if recorded.error else ""
        self.on_event(f"{recorded.t:7.2f} s  {fault.kind} {', '.join(recorded.nodes)}{stopped}{took}{failed}")

    def _change_membership(self, fault: PlannedFault, recorded: Fault) -> None:
        """Run the restart, add-node or remove-node command, then read back the processes it recorded."""
        from kvcluster.state import ClusterState  # noqa: PLC0415

        assert self.change_membership is not None, "membership faults come with the command that makes them"
        home = Path(self.state.home)
        recorded.took_s, recorded.error = self.change_membership(home, fault, self.exited, self.wait)
        self.state = ClusterState.load(home)

    def _signal(self, node_id: int, signum: signal.Signals) -> None:
        info = self.state.servers[node_id - 1]
        if info.alive():
            os.kill(info.pid, signum)

    def _stop_for(self, node_id: int, length: float) -> None:
        """SIGSTOP the node and SIGCONT it ``length`` seconds later."""
        info = self.state.servers[node_id - 1]
        if not info.alive():
            return
        self.stopped = info
        os.kill(info.pid, signal.SIGSTOP)
        self.wait(time.monotonic() + length)
        self.resume()

    def stop_started(self) -> None:
        """Stop the nodes and masters that restart and add-node started: they are not the supervisor's children."""
        from kvcluster.process_control import stop_process  # noqa: PLC0415

        for info in [*self.state.masters, *self.state.servers]:
            stop_process(info)

    def resume(self) -> None:
        """SIGCONT the stopped node, if any (also on the way out, so it can be stopped cleanly)."""
        if self.stopped is not None and self.stopped.alive():
            os.kill(self.stopped.pid, signal.SIGCONT)
        self.stopped = None

    def wait(self, until: float) -> None:
        """Sleep until ``until``, reaping nodes that exit meanwhile."""
        while (left := until - time.monotonic()) > 0:
            self.supervisor.reap()
            time.sleep(min(REAP_INTERVAL, left))
