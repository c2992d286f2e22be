"""Chaos with membership changes: the schedule that mixes restarts, additions and removals into the faults.

With membership changes the placement of slots is not the static one any
more (a restarted or added node receives slots, a removed one gives its
away), so ``Placement`` cannot tell which victims are safe. The rule here
needs no placement: every fault starts on a *settled* cluster, where every
slot has ``rep`` replicas on live nodes (``settled``), and takes fewer than
``rep`` nodes, so every slot keeps a live replica whatever the victims held.
The schedule also keeps at least ``rep`` live nodes after every fault, so the
cluster can always settle again before the next one.

Each fault kind is tried once before any repeats (in a seeded order, among
the kinds possible at that point), so a run with a handful of faults covers
restart, add and remove. Like ``FaultSchedule``, the draws depend only on the
seed and on which nodes died outside the schedule.

The changes go through the CLI (``kvcluster restart``, ``add-node``,
``remove-node``), as a person would run them.

A run with ``--partitions`` follows the same rule for its node faults alone
(``kinds``): there the supervisor starts a fenced node again, so the dead are
the nodes dead now, not every node ever taken (``revive``).
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kvcluster.chaos.injection import (
    FATAL_KINDS,
    FaultSchedule,
    PlannedFault,
)
from kvcluster.check.faults import FaultKind
from kvcluster.core.placement import node_name
from kvcluster.core.protocol import Timing

if TYPE_CHECKING:
    from kvcluster.core.protocol import StatusReport

MAX_ADDED = 3  # nodes a run may add beyond those it started with
COMMAND_TIMEOUT = 90.0  # seconds a restart, add-node or remove-node may take, join or drain included
DRAIN_TIMEOUT = 60.0  # what remove-node is told to wait for the drain
EXIT_WAIT = 10.0  # seconds to wait for a fenced node to exit before restarting it
KIND_ORDER = (
    FaultKind.PAUSE,
    FaultKind.KILL,
    FaultKind.DOUBLE_KILL,
    FaultKind.STALL,
    FaultKind.RESTART,
    FaultKind.ADD_NODE,
    FaultKind.REMOVE_NODE,
)


class MembershipSchedule(FaultSchedule):
    """The seeded sequence of faults and membership changes, each safe on a settled cluster."""

    def __init__(
        self,
        nodes: int,
        rep: int,
        rng: random.Random,
        timing: Timing,
        interval: tuple[float, float] = (2.0, 4.0),
        kinds: tuple[FaultKind, ...] = KIND_ORDER,
        revive: bool = False,
    ) -> None:
        super().__init__(nodes, rep, rng, timing, interval)
        self.kinds = kinds
        # On hosts of their own, a fenced node is started again by the supervisor: the dead are those dead now.
        self.revive = revive
        self.rep = rep
        self.max_nodes = nodes + MAX_ADDED
        self.removed: set[int] = set()
        self.used: set[FaultKind] = set()

    def gone(self) -> set[int]:
        """Nodes the schedule counts as not serving: taken by a fault, declared dead, or removed."""
        return self.dead | self.removed

    def next(self, also_dead: set[int]) -> PlannedFault | None:
        self.dead = (also_dead if self.revive else self.dead | also_dead) - self.removed
        options = {kind: self._options(kind) for kind in self.kinds}
        possible = [kind for kind in self.kinds if options[kind]]
        if not possible:
            return None
        kind = self.rng.choice([k for k in possible if k not in self.used] or possible)
        victims = self.rng.choice(options[kind])
        fault = PlannedFault(kind, victims, self._length(kind), frozenset(self.gone()))
        self.used.add(kind)
        if kind in FATAL_KINDS:
            self.dead.update(victims)
        elif kind == FaultKind.RESTART:
            self.dead.difference_update(victims)
        elif kind == FaultKind.ADD_NODE:
            self.nodes += 1
        elif kind == FaultKind.REMOVE_NODE:
            self.removed.update(victims)
        return fault

    def _options(self, kind: FaultKind) -> list[tuple[int, ...]]:
        """The victims ``kind`` may take now: never ``rep`` nodes at once, never fewer than ``rep`` left."""
        alive = [n for n in range(1, self.nodes + 1) if n not in self.gone()]
        if kind == FaultKind.RESTART:
            return [(n,) for n in sorted(self.dead - self.removed)]
        if kind == FaultKind.ADD_NODE:
            return [(self.nodes + 1,)] if self.nodes < self.max_nodes else []
        size = 2 if kind == FaultKind.DOUBLE_KILL else 1
        if size >= self.rep or len(alive) - size < self.rep:
            return []
        return list(itertools.permutations(alive, size))


def settled(report: StatusReport, gone: set[int]) -> bool:
    """Whether every slot has ``rep`` replicas on nodes that are neither declared dead nor ``gone``."""
    table = report.table
    if table is None:
        return False
    out = gone | set(table.dead)
    return all(sum(n not in out for n in nodes) >= table.rep for nodes in table.replicas)


def change_membership(
    home: Path, fault: PlannedFault, exited: Callable[[], set[int]], wait: Callable[[float], None]
) -> tuple[float, str | None]:
    """Run the fault's command against the cluster in ``home``; return how long it took and its error, if any."""
    node = node_name(fault.victims[0])
    if fault.kind == FaultKind.RESTART:
        # A paused node exits only once it is fenced after SIGCONT; restart refuses a running one.
        deadline = time.monotonic() + EXIT_WAIT
        while fault.victims[0] not in exited() and time.monotonic() < deadline:
            wait(time.monotonic() + 0.1)
        args = ["restart", node]
    elif fault.kind == FaultKind.ADD_NODE:
        args = ["add-node"]
    else:
        args = ["remove-node", node, "--timeout", f"{DRAIN_TIMEOUT:g}"]
    env = {k: v for k, v in os.environ.items() if k != "KVCLUSTER_HOME"}
    started = time.monotonic()
    try:
        proc = subprocess.run(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "kvcluster", *args, "--home", str(home)],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return time.monotonic() - started, f"kvcluster {' '.join(args)} did not finish in {COMMAND_TIMEOUT:g} s"
    took = time.monotonic() - started
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return took, lines[-1] if lines else f"kvcluster {' '.join(args)} exited {proc.returncode}"
    return took, None
