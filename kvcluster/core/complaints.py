"""Two live nodes that cannot reach each other: which one the master condemns, with no I/O.

A node reports in its heartbeats the peers whose acknowledgements are overdue
(``core/acks.py``). When the peer is silent too, ordinary failure detection
settles it. When both still heartbeat the master, only the link between them
is cut, and writes to the slots they share stall until one of them is gone.

The rule. Each complaint is an edge between the complainer and the accused.
The master condemns the node with the most distinct partners across the fresh
edges between live, heard nodes: a primary cut off from all its backups
complains about each of them, a node cut off from every peer is complained
about by every primary it backs up, and in both cases that node is the
common end. Between equals the accused goes first (a lost backup moves no
primary), then the lower id. A node whose loss would leave a slot without a
live replica is never condemned. One node at a time: the next verdict waits
until the condemned node is declared dead, and until complaints are heard
again, so a cut never costs more nodes than it must.

Why it is safe. A condemned node is not declared dead at once: the master
stops counting (and acknowledging) its heartbeats, so its lease stops being
renewed, and failure detection declares it dead ``dead_after`` after its last
counted heartbeat, as if it had fallen silent. With ``lease < dead_after`` it
has stopped serving before any other node is promoted in its place, and it
never acknowledged a write its peers lack (a write needs every live replica).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kvcluster.core.wire import TableData

log = logging.getLogger(__name__)


@dataclass
class Complaints:
    """The fresh complaints, by (complainer, accused), and the node condemned for them, if any."""

    heard: dict[tuple[int, int], float] = field(default_factory=dict)  # -> when last reported
    condemned: int | None = None

    def hear(self, now: float, complainer: int, accused: Iterable[int]) -> None:
        for node_id in accused:
            if node_id != complainer:
                self.heard[complainer, node_id] = now

    def forget(self, node_id: int) -> None:
        """``node_id`` was declared dead: its complaints, and those against it, are settled."""
        self.heard = {pair: t for pair, t in self.heard.items() if node_id not in pair}
        if self.condemned == node_id:
            self.condemned = None

    def judge(self, now: float, fresh_for: float, heard_lately: Callable[[int], bool], table: TableData) -> int | None:
        """Condemn a node if fresh complaints between heard nodes call for it; the node newly condemned, or None."""
        self.heard = {pair: t for pair, t in self.heard.items() if now - t <= fresh_for}
        if self.condemned is not None:
            return None
        dead = set(table.dead)
        edges = [
            (complainer, accused)
            for complainer, accused in self.heard
            if not dead & {complainer, accused} and heard_lately(complainer) and heard_lately(accused)
        ]
        for node_id in most_implicated(edges):
            if not _last_replica_of_a_slot(node_id, table):
                self.condemned = node_id
                return node_id
        return None


def most_implicated(edges: Iterable[tuple[int, int]]) -> list[int]:
    """Every node of ``edges`` (complainer, accused), the one to condemn first: most partners, accused, lowest id."""
    partners: dict[int, set[int]] = defaultdict(set)
    accusations: Counter[int] = Counter()
    for complainer, accused in edges:
        partners[complainer].add(accused)
        partners[accused].add(complainer)
        accusations[accused] += 1
    return sorted(partners, key=lambda n: (-len(partners[n]), -accusations[n], n))


def _last_replica_of_a_slot(node_id: int, table: TableData) -> bool:
    dead = set(table.dead)
    return any(node_id in nodes and all(n == node_id or n in dead for n in nodes) for nodes in table.replicas)
