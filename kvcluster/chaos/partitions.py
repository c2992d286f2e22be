"""Network faults of a chaos run (``--partitions``): cuts, one-way cuts and flaky hosts, on a track of their own.

The cluster runs on hosts of its own (``up --netns``), and the faults are
the rules of ``kvcluster net`` (``netcuts.py``), held for a while and then
healed. The kinds are the simulator's (``check/faults.py``):

* ``isolate``: a node cut off from every master, both ways;
* ``cut-peers``: a node cut off from every other node, both ways;
* ``oneway``: what one process sends to another is dropped (nodes and the
  leading master, in any direction);
* ``flaky``: a node loses a share of its packets, both ways, at random;
* ``leader-cut``: the leading master cut off from the other masters.

The track is seeded apart from the node faults (``{seed}/net``), so a seed's
node faults stay as they were. A node the master fences during a cut is
started again by the supervisor after the heal, so the static placement
cannot say which nodes are safe to take; the rule is the membership
schedule's instead: a fault on a node (all but the leader cut) may cost it
its life, silenced towards the masters or condemned for acknowledgements
overdue past a cut between nodes, so it starts only on a settled cluster,
where every slot has ``rep`` live replicas, and takes one node: every slot
keeps a live replica whatever the master concludes.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvcluster.chaos.injection import Fault, FaultInjector, FaultSchedule
from kvcluster.chaos.masters import LEADER_WAIT
from kvcluster.chaos.membership import settled
from kvcluster.check.faults import FLAKY_LOSS, NETWORK_FAULTS, FaultKind
from kvcluster.core.placement import node_name
from kvcluster.leader_link import await_leader

if TYPE_CHECKING:
    from kvcluster.netns import NetHosts

NET_INTERVAL = (2.0, 4.0)  # seconds between two network faults
CUT_LENGTH = (1.0, 3.0)  # seconds a cut or a flaky spell holds before the heal


@dataclass(frozen=True)
class NetFault:
    """One planned network fault: the hosts it acts on (``sends``, ``hears`` for a one-way cut)."""

    kind: FaultKind
    sends: str
    hears: str
    length: float
    loss: float


class NetworkFaults:
    """The seeded track of network faults of one chaos run."""

    def __init__(self, seed: int, hosts: NetHosts, nodes: FaultSchedule) -> None:
        self.rng = random.Random(f"{seed}/net")
        self.hosts = hosts
        self.nodes = nodes  # the node faults' schedule, which knows how many nodes the cluster has by now
        self.done: set[FaultKind] = set()

    def delay(self) -> float:
        return self.rng.uniform(*NET_INTERVAL)

    def inject(self, injector: FaultInjector) -> None:
        """Cut, hold, heal, and record the fault; skipped when no master leads or no node may be taken."""
        from kvcluster.netcuts import heal  # noqa: PLC0415

        state = injector.state
        found = await_leader(state.master_endpoints(), 0, time.monotonic() + LEADER_WAIT, poll=0.1)
        elapsed = time.monotonic() - injector.released
        if found is None:
            injector.on_event(f"{elapsed:7.2f} s  network fault skipped: no master leads")
            return
        planned = self._choose(state.masters[found[0]].name, state.master_endpoint, injector.exited())
        if planned is None:
            injector.on_event(f"{elapsed:7.2f} s  network fault skipped: slots are short of replicas")
            return
        kind = planned.kind
        self.done.add(kind)
        at = time.monotonic()
        self._cut(planned)
        injector.wait(at + planned.length)
        heal(self.hosts)
        names = [planned.sends] if planned.hears == planned.sends else [planned.sends, planned.hears]
        recorded = Fault(
            t=at - injector.released,
            kind=kind,
            nodes=names,
            duration_s=planned.length,
            dead_before=[node_name(n) for n in sorted(injector.exited())],
        )
        injector.faults.append(recorded)
        what = f"{planned.sends} -> {planned.hears}" if kind == FaultKind.ONEWAY else ", ".join(names)
        loss = f", {planned.loss:.0%} of packets lost" if kind == FaultKind.FLAKY else ""
        injector.on_event(f"{recorded.t:7.2f} s  {kind} {what} for {planned.length:.2f} s{loss}, healed")

    def _choose(self, leader: str, endpoint: str, exited: set[int]) -> NetFault | None:
        """The next fault: every kind once, in order, before any repeats, so a short run covers them.

        A fault that may silence a node waits for a settled cluster; a kind that cannot come now gives way to the
        next one and comes later.
        """
        pending = [kind for kind in NETWORK_FAULTS if kind not in self.done] or [self.rng.choice(NETWORK_FAULTS)]
        is_settled: bool | None = None
        for kind in pending:
            planned = self._plan(kind, leader, exited)
            if planned is None:
                continue
            if self._silences(planned):
                is_settled = self._settled(endpoint, exited) if is_settled is None else is_settled
                if not is_settled:
                    continue
            return planned
        return None

    def _plan(self, kind: FaultKind, leader: str, exited: set[int]) -> NetFault | None:
        """The hosts ``kind`` acts on now; every draw is made whatever the outcome, so the seed fixes the rest."""
        length, loss = self.rng.uniform(*CUT_LENGTH), self.rng.uniform(*FLAKY_LOSS)
        first, second = self.rng.random(), self.rng.random()
        towards_leader = self.rng.random() < 0.5
        alive = [n for n in range(1, self.nodes.nodes + 1) if n not in exited]
        if not alive:
            return None
        node = alive[int(first * len(alive))]
        others = [n for n in alive if n != node]
        server = node_name(node)
        if kind == FaultKind.LEADER_CUT:
            return NetFault(kind, leader, leader, length, 0.0)
        if kind != FaultKind.ONEWAY:
            return NetFault(kind, server, server, length, loss)
        if towards_leader or not others:
            return NetFault(kind, server, leader, length, 0.0)
        return NetFault(kind, node_name(others[int(second * len(others))]), server, length, 0.0)

    @staticmethod
    def _silences(fault: NetFault) -> bool:
        """Whether the master may declare a node dead because of ``fault``: a node silent towards the masters, or one
        condemned for acknowledgements overdue past a cut between nodes; only a leader cut takes no node."""
        return fault.kind != FaultKind.LEADER_CUT

    @staticmethod
    def _settled(endpoint: str, exited: set[int]) -> bool:
        from kvcluster.client import Connection  # noqa: PLC0415
        from kvcluster.errors import KvclusterError  # noqa: PLC0415

        try:
            with Connection(endpoint, deadline=1.0) as client:
                return settled(client.status(), exited)
        except KvclusterError:
            return False

    def _cut(self, fault: NetFault) -> None:
        from kvcluster.netcuts import cut, flaky, oneway  # noqa: PLC0415

        hosts = self.hosts.names()
        masters = [h for h in hosts if h.startswith("master")]
        servers = [h for h in hosts if h.startswith("server")]
        match fault.kind:
            case FaultKind.ISOLATE:
                for master in masters:
                    cut(self.hosts, fault.sends, master)
            case FaultKind.CUT_PEERS:
                for server in servers:
                    if server != fault.sends:
                        cut(self.hosts, fault.sends, server)
            case FaultKind.LEADER_CUT:
                for master in masters:
                    if master != fault.sends:
                        cut(self.hosts, fault.sends, master)
            case FaultKind.ONEWAY:
                oneway(self.hosts, fault.sends, fault.hears)
            case FaultKind.FLAKY:
                flaky(self.hosts, fault.sends, fault.loss)
