"""Faults: what can go wrong in a run, drawn from its seed, within what the design promises to survive.

A plan is a list of ``Fault``s with their times, made before the run starts
so that a process can honour a pause or a kill in the middle of a pass.
The kinds are the ones chaos runs use (``check/faults.py``). A fault *may
kill* if the master may declare its node dead: a kill, a flaky spell of any
length (TCP's retransmission backoff outlasts it), or a pause or a cut of
the node's messages to the master longer than ``SAFE_SILENCE``; a stall is a
pause shorter than that. The planner
keeps every plan survivable: at any moment the nodes that may be dying
(from a fault's start until ``HEAL_TIME`` after it ends, time enough to be
declared dead and for the master to restore every slot's replicas) are
fewer than ``rep`` and than the nodes still alive, and at most a minority
of them once more than one; across the run, nodes may keep dying one wave
after another as long as one survives. A node whose fault may kill gets no
later fault. Faults on one node are spaced so that their silences never add
up, and every fault but a kill is over before the workload ends, so the
final reads run on a healed cluster.

Membership changes are faults too, made the way the CLI makes them: a
*restart* starts a new incarnation of a killed node once the master has
declared it dead; an *add* starts a node under the next id; a *remove*
drains a node (``DRAIN``) and stops it once it holds nothing. A remove
counts as a death for survival (from its start until ``DRAIN_TIME`` plus
``HEAL_TIME`` later) and must leave at least ``rep`` nodes; nodes that a
restart or an add bring in are not counted as live, so the rules only err
on the side of caution.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kvcluster.check.faults import DOUBLE_KILL_GAP, FLAKY_LOSS, LEADER_FAULTS, MEMBERSHIP, FaultKind
from kvcluster.core.group_state import ELECTION_TIMEOUT

SAFE_SILENCE = 0.35  # seconds: a node silent this long is never declared dead (dead_after is 0.7 s)
HEAL_TIME = 1.5  # seconds after a silence ends until the cluster is whole again: detection, copies, a table
SPACING = 0.5  # seconds between two faults on the same node
FIRST_AT = 0.2  # no fault before the cluster has settled
DRAIN_TIME = 2.0  # seconds a drain may take before its node is stopped (copies and a table or two)
RESTART_AFTER = (0.9, 2.0)  # seconds after its kill that a node is started again


GONE_FOR_GOOD = (FaultKind.KILL, FaultKind.DOUBLE_KILL, FaultKind.REMOVE_NODE)
ONE_LINK = (FaultKind.ONEWAY, FaultKind.LATE)  # ``node`` sends, ``other`` receives
SILENCING = (FaultKind.PAUSE, FaultKind.ISOLATE)
MASTER = 0  # ``node`` or ``other`` 0: the master group
CLIENTS = -1  # ``node`` -1 of a late fault: every client's requests to ``other``
LATE_HOLD = (0.8, 2.5)  # seconds a late link holds its messages: past a node's death or a new term
# A power cut's ``duration`` is the outage: every process starts again from its disk once it is over.
WEIGHTS = {
    FaultKind.KILL: 3,
    FaultKind.PAUSE: 3,
    FaultKind.SLOW: 1,
    FaultKind.DOUBLE_KILL: 1,
    FaultKind.STALL: 2,
    FaultKind.ISOLATE: 2,
    FaultKind.ONEWAY: 2,
    FaultKind.CUT_PEERS: 2,
    FaultKind.FLAKY: 2,
    FaultKind.LATE: 2,
    FaultKind.PAUSE_MASTER: 1,
    FaultKind.LEADER_CRASH: 1,
    FaultKind.LEADER_PAUSE: 1,
    FaultKind.LEADER_CUT: 1,
    FaultKind.RESTART: 4,
    FaultKind.ADD_NODE: 1,
    FaultKind.REMOVE_NODE: 1,
    FaultKind.POWER_CUT: 2,
}


@dataclass(frozen=True)
class Fault:
    """One fault: ``node`` 0 is the master; ``other`` the second node of a double kill, or the receiving end
    of a one-way cut or a late link (``node`` sends); ``extra`` the added CPU time per message of a slow node,
    or the share of a flaky node's packets lost.

    An add's ``node`` is the id it is planned to get; the run gives it the next free id when it starts.
    """

    kind: FaultKind
    at: float
    node: int
    duration: float = 0.0
    extra: float = 0.0
    other: int = MASTER

    @property
    def until(self) -> float:
        return float("inf") if self.kind in GONE_FOR_GOOD else self.at + self.duration

    def ends(self) -> set[int]:
        """The processes the fault acts on (0 the master), the clients left out: faults on one are spaced."""
        two = self.kind in (FaultKind.DOUBLE_KILL, *ONE_LINK)
        return {n for n in (self.node, *((self.other,) if two else ())) if n != CLIENTS}

    def victims(self) -> set[int]:
        """The storage nodes the master may declare dead because of this fault (none if ``may_kill`` is false)."""
        if not self.may_kill():
            return set()
        if self.kind in ONE_LINK:
            return {self.node}  # a node whose messages to the master are held: no heartbeats
        return self.ends() - {MASTER}

    def may_kill(self) -> bool:
        """Whether the master may declare a node dead because of this fault."""
        if self.kind in GONE_FOR_GOOD or self.kind == FaultKind.FLAKY:
            return True  # TCP's backoff outlasts a flaky spell: a short one may hold a heartbeat past ``dead_after``
        if self.duration <= SAFE_SILENCE:
            return False
        return self.kind in SILENCING or (self.kind in ONE_LINK and self.other == MASTER and self.node > 0)

    def describe(self) -> str:
        text = f"t={self.at:.4f} {self.kind} {_name(self.node)}"
        if self.kind == FaultKind.DOUBLE_KILL:
            text += f" and {_name(self.other)} {self.duration:.3f} s later"
        elif self.kind in ONE_LINK:
            text += f" -> {_name(self.other)} for {self.duration:.3f} s"
        elif self.kind in LEADER_FAULTS:
            text += f", a new leader after {self.duration:.3f} s"
        elif self.kind not in GONE_FOR_GOOD and self.kind not in MEMBERSHIP:
            text += f" for {self.duration:.3f} s"
        if self.kind == FaultKind.SLOW:
            text += f" (+{self.extra * 1000:.1f} ms per message)"
        if self.kind == FaultKind.FLAKY:
            text += f" ({self.extra:.0%} of packets lost)"
        return text


def _name(process: int) -> str:
    return {MASTER: "master", CLIENTS: "clients"}.get(process, f"server{process}")


def plan_faults(rng: random.Random, nodes: int, rep: int, duration: float, most: int) -> list[Fault]:
    """Up to ``most`` faults within ``[FIRST_AT, duration)``, each fitting the survival and spacing rules."""
    faults: list[Fault] = []
    kinds = list(WEIGHTS)
    weights = list(WEIGHTS.values())
    for _ in range(rng.randint(0, most)):
        for _attempt in range(5):
            fault = _draw(rng, rng.choices(kinds, weights)[0], nodes, duration, faults)
            if fault is not None and _spaced(fault, faults) and survivable([*faults, fault], nodes, rep):
                faults.append(fault)
                break
    return sorted(faults, key=lambda f: (f.at, f.node))


def _draw(rng: random.Random, kind: FaultKind, nodes: int, duration: float, faults: list[Fault]) -> Fault | None:
    last = duration - 0.1
    at = rng.uniform(FIRST_AT, max(FIRST_AT, last - 0.05))
    if kind in (FaultKind.KILL, FaultKind.REMOVE_NODE):
        return Fault(kind, at, rng.randint(1, nodes))
    if kind == FaultKind.DOUBLE_KILL:
        if nodes < 2:
            return None
        first, second = rng.sample(range(1, nodes + 1), 2)
        return Fault(kind, at, first, rng.uniform(*DOUBLE_KILL_GAP), other=second)
    if kind in LEADER_FAULTS:
        election = rng.uniform(*ELECTION_TIMEOUT) + rng.uniform(0.005, 0.05)  # the timeout, then a vote and a barrier
        return Fault(kind, at, 0, election)
    if kind == FaultKind.ADD_NODE:
        return Fault(kind, at, nodes + 1 + sum(f.kind == FaultKind.ADD_NODE for f in faults))
    if kind == FaultKind.RESTART:
        return _draw_restart(rng, faults, last)
    if kind == FaultKind.POWER_CUT:
        outage = rng.uniform(*RESTART_AFTER)
        return Fault(kind, at, 0, outage) if at + outage < last else None
    if kind == FaultKind.PAUSE_MASTER:
        length = rng.choice((rng.uniform(0.02, 0.3), rng.uniform(0.3, 1.5)))
        return Fault(kind, at, 0, min(length, last - at)) if last - at > 0.01 else None
    return _draw_window(rng, kind, nodes, at, last)


def _draw_restart(rng: random.Random, faults: list[Fault], last: float) -> Fault | None:
    """A node that a kill or a double kill took starts again, a little after."""
    killed = [f for f in faults if f.kind in (FaultKind.KILL, FaultKind.DOUBLE_KILL)]
    if not killed:
        return None
    kill = rng.choice(killed)
    at = kill.at + kill.duration + rng.uniform(*RESTART_AFTER)
    return Fault(FaultKind.RESTART, at, rng.choice(sorted(kill.ends()))) if at < last else None


def _draw_window(rng: random.Random, kind: FaultKind, nodes: int, at: float, last: float) -> Fault | None:
    """A fault that lasts a while on one node, or on one link between two processes, and then heals."""
    if kind in (FaultKind.PAUSE, FaultKind.STALL, FaultKind.FLAKY, *SILENCING, FaultKind.ONEWAY):
        short = kind == FaultKind.STALL or (kind != FaultKind.PAUSE and rng.random() < 0.5)
        length = rng.uniform(0.01, SAFE_SILENCE) if short else rng.uniform(0.55, 2.0)
    elif kind == FaultKind.LATE:
        length = rng.uniform(*LATE_HOLD)
    else:
        length = rng.uniform(0.01, 1.0)
    length = min(length, last - at)
    if length <= 0.005:
        return None
    node, other = rng.randint(1, nodes), MASTER
    if kind in ONE_LINK:
        # Any direction between the master and the nodes; a late link may also hold the clients' requests.
        ends = [MASTER, *range(1, nodes + 1)]
        node = rng.choice([CLIENTS, *ends] if kind == FaultKind.LATE else ends)
        other = rng.choice([n for n in ends if n != node])
    extra = 0.0
    if kind == FaultKind.SLOW:
        extra = rng.choice((0.0005, 0.002, 0.01))
    elif kind == FaultKind.FLAKY:
        extra = rng.uniform(*FLAKY_LOSS)
    return Fault(kind, at, node, length, extra, other)


def _spaced(fault: Fault, faults: list[Fault]) -> bool:
    """No overlap with another fault of the same process, and nothing after one that may have killed it.

    A restart is the one exception: it follows its node's kill, and nothing follows it.
    """
    if fault.kind == FaultKind.RESTART:
        return [f.kind for f in faults if fault.node in f.ends()] in ([FaultKind.KILL], [FaultKind.DOUBLE_KILL])
    if FaultKind.POWER_CUT in (fault.kind, *(f.kind for f in faults)):
        return all(_apart(fault, other) for other in faults)
    for other in faults:
        if not other.ends() & fault.ends() or other.kind == FaultKind.RESTART:
            continue
        other_end = float("inf") if other.may_kill() else other.until
        fault_end = float("inf") if fault.may_kill() else fault.until
        if fault.at < other_end + SPACING and other.at < fault_end + SPACING:
            return False
    return True


def _apart(one: Fault, other: Fault) -> bool:
    """Neither overlaps the other, nor the time the cluster takes to be whole again after it (a power cut stops
    every process: nothing else may be under way, or begin before it is over)."""
    one_end = float("inf") if one.may_kill() else _healed_by(one)
    other_end = float("inf") if other.may_kill() else _healed_by(other)
    return one.at > other_end + SPACING or other.at > one_end + SPACING


def survivable(faults: list[Fault], nodes: int, rep: int) -> bool:
    """Whether every slot keeps a live replica whatever the master concludes from these faults,
    and a drain always leaves ``rep`` nodes."""
    deadly = sorted((f for f in faults if f.may_kill()), key=lambda f: f.at)
    for fault in deadly:
        gone = {n for f in deadly if _healed_by(f) <= fault.at for n in f.victims()}
        dying = {n for f in deadly if f.at <= fault.at < _healed_by(f) for n in f.victims()} - gone
        live = nodes - len(gone)
        if len(dying) > min(rep, live) - 1 or (len(dying) > 1 and 2 * len(dying) >= live):
            return False
        if fault.kind == FaultKind.REMOVE_NODE and live - len(dying) < rep:
            return False
    return True


def _healed_by(fault: Fault) -> float:
    """When the cluster is whole again after ``fault``'s node died (if it did)."""
    match fault.kind:
        case FaultKind.KILL | FaultKind.DOUBLE_KILL:
            return fault.at + fault.duration + HEAL_TIME
        case FaultKind.REMOVE_NODE:
            return fault.at + DRAIN_TIME + HEAL_TIME
    return fault.until + HEAL_TIME
