"""Telling a dead storage node from a slow one: the master's failure detection, with no I/O.

A node is declared dead when its process is known to have exited
(``NODE_EXITED``, from the process that watches it), or when it has been
silent for ``timing.dead_after``. Silence alone cannot tell a dead node from
a stalled one, so when most live nodes fall silent at once (a machine-wide
stall looks like that; independent failures rarely do) the verdict waits
``MASS_SILENCE_FACTOR`` times longer, and time the master itself could not
run is not counted against the nodes. ``MasterCore`` mixes this in; the state
lives on the master, declared here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvcluster.core.actions import Route
from kvcluster.core.events import EventLog
from kvcluster.core.placement import node_name, with_dead
from kvcluster.core.protocol import DiskReport, EventKind, TableData, Timing

log = logging.getLogger(__name__)

STALL_TOLERANCE = 0.1  # a pass of the loop longer than this means the master itself was not running
MASS_SILENCE_FACTOR = 4  # how many times dead_after to wait when most live nodes are silent at once


@dataclass
class NodeRecord:
    """What the master knows of one registered node; a new leader knows no route until the node's next heartbeat."""

    route: Route | None
    endpoint: str
    pid: int
    last_seen: float
    keys: int = 0
    table_version: int = 0  # the newest table it reported holding: 0 until it installed one
    disk: DiskReport | None = None


class FailureDetection:
    """The liveness half of the master; the master methods it calls are declared at the end."""

    nodes: dict[int, NodeRecord]
    table: TableData | None
    timing: Timing
    stalled: dict[int, None]
    draining: frozenset[int]
    healthy: bool
    events: EventLog
    now: float

    def _forgive_own_stall(self, gap: float) -> None:
        """Don't count time this process itself could not run against the nodes.

        On a crowded machine the master can go unscheduled for a while; their
        heartbeats then wait unread, and judging by the clock alone would
        declare healthy nodes dead the moment it runs again.
        """
        stall = gap - STALL_TOLERANCE
        if stall > 0:
            for record in self.nodes.values():
                record.last_seen += stall

    def _silent_nodes(self, now: float, longer_than: float | None = None) -> list[int]:
        assert self.table is not None
        limit = self.timing.dead_after if longer_than is None else longer_than
        return [
            node_id
            for node_id, record in self.nodes.items()
            if node_id not in self.table.dead and now - record.last_seen > limit
        ]

    def _on_exit(self, node_id: int, pid: int) -> None:
        """The node's process is gone: declare it dead now, not once its heartbeats have been missed.

        A process that exited can never serve again, so there is no lease to
        wait out. Replies it sent before it died may still be on their way;
        each was right when it was sent, before anything the new primary does.
        """
        if self.table is None:
            self._gone_before_table(node_id)
            return
        record = self.nodes.get(node_id)
        if record is None or record.pid != pid or self._is_dead(node_id):
            return  # an older incarnation, one already declared dead, or one the master never took in
        log.warning("%s (pid %d) exited: declared dead at once", node_name(node_id), pid)
        self._declare_dead([node_id])

    def _detect_failures(self, now: float) -> None:
        if self.table is None or not self._silent_nodes(now, self.timing.dead_after / 2):
            return
        self._note_mass_silence(now)
        due = [
            node_id
            for node_id in self._silent_nodes(now)
            if node_id not in self.stalled or now - self.nodes[node_id].last_seen > self._stall_limit()
        ]
        for node_id in due:
            silent_ms = (now - self.nodes[node_id].last_seen) * 1000
            log.warning("%s missed heartbeats for %.0f ms: declared dead", node_name(node_id), silent_ms)
        if due:
            self._declare_dead(due)

    def _declare_dead(self, nodes: list[int]) -> None:
        assert self.table is not None
        for node_id in nodes:
            self.events.record(self.now, EventKind.DEAD, node_id)
            self.stalled.pop(node_id, None)
        self._publish(with_dead(self.table, nodes))
        self.draining = self.draining - set(nodes)
        self.healthy = False

    def _stall_limit(self) -> float:
        return self.timing.dead_after * MASS_SILENCE_FACTOR

    def _note_mass_silence(self, now: float) -> None:
        """Give every node caught in a silence shared by most live nodes the longer deadline.

        A minority of nodes going quiet while the rest answer is what crashes
        look like. When a majority goes quiet together, the likelier cause is
        a stall shared by all of them (an overloaded machine, a swapping
        host), and declaring them dead would turn one slow moment into the
        loss of every replica. Nodes that stall together neither cross the
        line nor recover at the same instant, so the quiet are counted from
        half of ``dead_after``, and a node keeps the longer deadline until it
        is heard again, even once the others have recovered. Safety does not
        depend on any of this: a lease always runs out before ``dead_after``.
        """
        assert self.table is not None
        live = len(self.nodes) - len(self.table.dead)
        quiet = self._silent_nodes(now, self.timing.dead_after / 2)
        if len(quiet) < 2 or 2 * len(quiet) < live:
            return
        caught = [node_id for node_id in quiet if node_id not in self.stalled]
        if caught:
            self.stalled.update(dict.fromkeys(caught))
            log.warning(
                "%d of %d live nodes silent at once (%s): it looks like a stall; waiting up to %.1f s",
                len(quiet),
                live,
                ", ".join(node_name(n) for n in quiet),
                self._stall_limit(),
            )

    if TYPE_CHECKING:

        def _publish(self, table: TableData) -> None: ...

        def _is_dead(self, node_id: int) -> bool: ...

        def _gone_before_table(self, node_id: int) -> None: ...
