"""The master: membership, the routing table, failure detection and failover.

The master waits until all ``n`` storage nodes have said hello, then publishes
table version 1. From then on it watches heartbeats; a node silent for
``timing.dead_after`` is declared dead, which publishes the next table version
with that node appended to the dead list. Silence alone cannot tell a dead
node from a stalled one, so when most live nodes fall silent at once (a
machine-wide stall looks like that; independent failures rarely do) the
master holds its verdict for ``MASS_SILENCE_FACTOR`` times longer. Every node derives the consequences
from the table alone: for each slot the first live replica is the primary, so
the dead node's backups are promoted and the slot's epoch grows.

The master never serves keys. Clients ask it for the table once and go to the
primaries directly; nodes receive every new table as soon as it is made, and
again in answer to any heartbeat that reports an older version.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import dataclass

import zmq

from kvcluster.errors import ProtocolError
from kvcluster.placement import initial_table, node_name, with_dead
from kvcluster.protocol import (
    Fenced,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Message,
    NodeReport,
    NotReady,
    StatusReport,
    StatusRequest,
    Table,
    TableData,
    TableRequest,
    Timing,
    decode,
    encode,
)

log = logging.getLogger("kvcluster.master")

TICK = 0.02  # how often liveness is checked, in seconds
STALL_TOLERANCE = 0.1  # a pass of the loop longer than this means the master itself was not running
MASS_SILENCE_FACTOR = 4  # how many times dead_after to wait when most live nodes are silent at once


@dataclass
class NodeRecord:
    """What the master knows of one registered node."""

    identity: bytes
    endpoint: str
    pid: int
    last_seen: float
    keys: int = 0


class Master:
    """The master process; ``run()`` serves until SIGTERM."""

    def __init__(self, nodes: int, rep: int, bind: str, timing: Timing) -> None:
        self.expected = nodes
        self.rep = rep
        self.timing = timing
        self.ctx = zmq.Context()
        self.ctx.linger = 0
        self.router = self.ctx.socket(zmq.ROUTER)
        host, _, port = bind.rpartition(":")
        if port == "0":
            chosen = self.router.bind_to_random_port(f"tcp://{host}")
        else:
            self.router.bind(f"tcp://{bind}")
            chosen = int(port)
        self.endpoint = f"tcp://{'127.0.0.1' if host in ('0.0.0.0', '*') else host}:{chosen}"  # noqa: S104 - matching, not binding
        self.nodes: dict[int, NodeRecord] = {}
        self.table: TableData | None = None
        self.holding_verdict = False  # a mass silence is being waited out (logged once)
        self.stopping = False

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        log.info("master for %d nodes x %d replicas on %s", self.expected, self.rep, self.endpoint)
        last_pass = time.monotonic()
        try:
            while not self.stopping:
                if self.router.poll(int(TICK * 1000)):
                    self._drain()
                now = time.monotonic()
                self._forgive_own_stall(now - last_pass)
                last_pass = now
                self._detect_failures(now)
        finally:
            self.ctx.destroy(linger=0)
            log.info("master stopped")

    def _stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def _drain(self) -> None:
        while True:
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            envelope = frames[:-1]
            try:
                self._handle(envelope, decode(frames[-1]))
            except ProtocolError as exc:
                log.warning("rejected a malformed message: %s", exc)

    def _send(self, envelope: list[bytes], message: Message) -> None:
        self.router.send_multipart([*envelope, encode(message)])

    def _handle(self, envelope: list[bytes], message: Message) -> None:
        match message:
            case Hello():
                self._on_hello(envelope, message)
            case Heartbeat():
                self._on_heartbeat(envelope, message)
            case TableRequest():
                self._send(envelope, Table(self.table) if self.table else NotReady(len(self.nodes), self.expected))
            case StatusRequest():
                self._send(envelope, self._status())
            case _:
                raise ProtocolError(f"unexpected message: {type(message).__name__}")

    def _is_dead(self, node_id: int) -> bool:
        return self.table is not None and node_id in self.table.dead

    def _on_hello(self, envelope: list[bytes], hello: Hello) -> None:
        if not 1 <= hello.node_id <= self.expected:
            raise ProtocolError(f"hello from unknown node id {hello.node_id}")
        if self.table is not None:
            # Membership is fixed once the table exists: a late or restarted node holds no data we trust.
            log.warning("%s said hello after the table was made; fencing it", node_name(hello.node_id))
            self._send(envelope, Fenced(hello.node_id))
            return
        self.nodes[hello.node_id] = NodeRecord(envelope[0], hello.endpoint, hello.pid, time.monotonic())
        log.info(
            "%s registered at %s (pid %d), %d/%d",
            node_name(hello.node_id),
            hello.endpoint,
            hello.pid,
            len(self.nodes),
            self.expected,
        )
        if len(self.nodes) == self.expected:
            self._publish(initial_table({i: r.endpoint for i, r in self.nodes.items()}, self.rep))

    def _on_heartbeat(self, envelope: list[bytes], beat: Heartbeat) -> None:
        record = self.nodes.get(beat.node_id)
        if record is None or record.identity != envelope[0] or self._is_dead(beat.node_id):
            self._send(envelope, Fenced(beat.node_id))
            return
        record.last_seen = time.monotonic()
        record.keys = beat.keys
        version = self.table.version if self.table else 0
        self._send(envelope, HeartbeatAck(beat.sent_at, version))
        if self.table is not None and beat.table_version < version:
            self._send(envelope, Table(self.table))

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

    def _detect_failures(self, now: float) -> None:
        if self.table is None or not self._silent_nodes(now):
            self.holding_verdict = False
            return
        self._drain()  # a heartbeat that arrived while we were busy still counts
        silent = self._silent_nodes(now)
        if silent and self._looks_like_failure(now, silent):
            for node_id in silent:
                log.warning(
                    "%s missed heartbeats for %.0f ms: declared dead",
                    node_name(node_id),
                    (now - self.nodes[node_id].last_seen) * 1000,
                )
            self._publish(with_dead(self.table, silent))

    def _looks_like_failure(self, now: float, silent: list[int]) -> bool:
        """Whether silence means death: most live nodes still answer, or the silence outlasted any stall.

        A minority of nodes going quiet while the rest answer is what crashes
        look like. When a majority goes quiet together, the likelier cause is
        a stall shared by all of them (an overloaded machine, a swapping
        host), and declaring them dead would turn one slow moment into the
        loss of every replica. So the verdict waits; safety does not depend on
        it, since a lease always runs out before ``dead_after``.
        """
        assert self.table is not None
        live = len(self.nodes) - len(self.table.dead)
        # Nodes that stall together do not cross the line at the same instant: count the ones well on their way.
        quiet = self._silent_nodes(now, self.timing.dead_after / 2)
        if len(quiet) == 1 or 2 * len(quiet) < live:
            return True
        longest = max(now - self.nodes[node_id].last_seen for node_id in silent)
        if longest > self.timing.dead_after * MASS_SILENCE_FACTOR:
            return True
        if not self.holding_verdict:
            self.holding_verdict = True
            log.warning(
                "%d of %d live nodes silent at once (%s): waiting, it looks like a stall",
                len(quiet),
                live,
                ", ".join(node_name(n) for n in quiet),
            )
        return False

    def _publish(self, table: TableData) -> None:
        self.table = table
        self.holding_verdict = False
        message = Table(table)
        for node_id, record in self.nodes.items():
            if node_id not in table.dead:
                self._send([record.identity], message)
        log.info("published table version %d (dead: %s)", table.version, [node_name(n) for n in table.dead])

    def _status(self) -> StatusReport:
        now = time.monotonic()
        reports = [
            NodeReport(node_id, r.endpoint, r.pid, not self._is_dead(node_id), r.keys, (now - r.last_seen) * 1000)
            for node_id, r in sorted(self.nodes.items())
        ]
        return StatusReport(os.getpid(), self.table, reports)


def serve(nodes: int, rep: int, bind: str, timing: Timing) -> None:
    """Run the master in this process; announce its endpoint on stdout once bound."""
    master = Master(nodes, rep, bind, timing)
    sys.stdout.write(f"READY {master.endpoint}\n")
    sys.stdout.flush()
    master.run()
