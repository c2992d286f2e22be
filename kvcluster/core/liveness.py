"""Telling a dead storage node from a slow one: the master's failure detection, with no I/O.

A node is declared dead when its process is known to have exited
(``NODE_EXITED``, from the process that watches it), or when it has been
silent for ``timing.dead_after``. Silence alone cannot tell a dead node from
a stalled one, so when most live nodes fall silent at once (a machine-wide
stall looks like that; independent failures rarely do) the verdict waits
``MASS_SILENCE_FACTOR`` times longer, and time the master itself could not
run is not counted against the nodes. ``MasterCore`` mixes this in; the state
lives on the master, declared here.

Two more verdicts. A node that others cannot reach although it heartbeats is
condemned (``core/complaints.py``): its heartbeats stop counting, so it is
declared dead like a silent node, once its lease has run out. And a member of
a master group that hears no live node at all declares none dead: the likelier
cause is its own link to the nodes, which the other members may still have, so
it hands the lead over instead (``out_of_touch``; its driver does the handing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvcluster.core.actions import Route
from kvcluster.core.complaints import Complaints
from kvcluster.core.events import EventLog
from kvcluster.core.placement import node_name, with_dead
from kvcluster.core.protocol import Timing
from kvcluster.core.wire import DiskReport, EventKind, TableData

log = logging.getLogger(__name__)

STALL_TOLERANCE = 0.1  # a pass of the loop longer than this means the master itself was not running
MASS_SILENCE_FACTOR = 4  # how many times dead_after to wait when most live nodes are silent at once
# Seconds after a death before copies start: the promoted primaries reconcile and serve first, rather than
# share their loops and the machine with dozens of slot copies starting at once.
COPIES_AFTER_DEATH = 0.5
OUT_OF_TOUCH_FACTOR = 2  # how many times dead_after a group leader that hears no node waits before handing over


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
    copies_from: float
    events: EventLog
    now: float
    complaints: Complaints
    acting: bool
    replicated: bool

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

    def out_of_touch(self, now: float) -> bool:
        """Whether this acting group member has heard no live node for ``OUT_OF_TOUCH_FACTOR * dead_after``.

        It should hand the lead over. Longer than ``dead_after``: every node's loop can block for most of a
        second at once (a shared disk's flush), and a leader that hands over then costs an election for nothing.
        """
        limit = OUT_OF_TOUCH_FACTOR * self.timing.dead_after
        return self.acting and self.replicated and self._hears_no_node(now, limit)

    def _hears_no_node(self, now: float, longer_than: float) -> bool:
        if self.table is None:
            return False  # before the first table nodes are still saying hello: nobody is judged yet
        live = [n for n in self.nodes if n not in self.table.dead]
        return bool(live) and len(self._silent_nodes(now, longer_than)) == len(live)

    def _detect_failures(self, now: float) -> None:
        if self.table is None or not self._silent_nodes(now, self.timing.dead_after / 2):
            return
        if self.replicated and self._hears_no_node(now, self.timing.dead_after / 2):
            return  # this member's own link to the nodes is the likelier cut: it hands over (``out_of_touch``)
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
            self.complaints.forget(node_id)
        self._publish(with_dead(self.table, nodes))
        self.draining = self.draining - set(nodes)
        self.healthy = False
        self.copies_from = self.now + COPIES_AFTER_DEATH

    def _judge_complaints(self, now: float) -> None:
        """Condemn one of two live nodes that cannot reach each other (``core/complaints.py``)."""
        if self.table is None:
            return
        fresh = 2 * self.timing.heartbeat  # a node that missed a beat may be going silent: that verdict comes first

        def heard_lately(node_id: int) -> bool:
            record = self.nodes.get(node_id)
            return record is not None and now - record.last_seen <= fresh

        condemned = self.complaints.judge(now, self.timing.dead_after, heard_lately, self.table)
        if condemned is not None:
            pairs = sorted(self.complaints.heard)
            log.warning("%s condemned: live nodes cannot reach each other (%s); its heartbeats no longer count", *(
                node_name(condemned), ", ".join(f"{node_name(a)}->{node_name(b)}" for a, b in pairs)))  # fmt: skip

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
