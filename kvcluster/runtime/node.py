"""The storage node process: ``NodeCore`` driven over ZeroMQ with the real clock.

One process, one thread, one ``zmq.Poller`` loop: a ROUTER socket takes client
requests and replication from primaries, a DEALER per master talks to the
master group (everything for the master goes to every member: only the
leader answers, so no message waits on finding it), and one
DEALER per peer carries this node's replication as a primary. The driver
decodes what arrives, hands it to the core with ``time.monotonic()``, and
carries out the actions the core returns. It owns every socket and the clock;
the core owns every decision.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq

from kvcluster.addresses import parse_addresses
from kvcluster.core.actions import Action, Answer, DropPeer, Exit, ToMaster, ToPeer
from kvcluster.core.node import NodeCore
from kvcluster.core.placement import node_name
from kvcluster.core.protocol import Message, Timing, decode, encode
from kvcluster.core.records import TableSeen
from kvcluster.core.stats import BOUNDS
from kvcluster.core.wire import DiskReport
from kvcluster.curve import Curve, start_authenticator
from kvcluster.errors import AddressUnusable, ProtocolError
from kvcluster.runtime.ratelimit import RejectionLog, peer_name
from kvcluster.runtime.recovery import recover
from kvcluster.runtime.snapshots import Snapshot
from kvcluster.runtime.wal import FsyncPolicy, WriteAheadLog

log = logging.getLogger(__name__)

LONG_PASS = 0.05  # seconds: a pass longer than this is logged; work that grows with the data must be cut smaller
DRAIN_LIMIT = 256  # messages taken from one socket per pass, so every socket gets its turn under load
BEAT_CHECK_EVERY = 16  # messages handled between looks at the heartbeat clock
NOBLOCK = int(zmq.NOBLOCK)  # plain ints: flag arithmetic on zmq's enums costs more than a send
SNDMORE = int(zmq.SNDMORE)

Handler = Callable[[list[bytes], Message], None]
# Asks the master which id a node started by hand takes, given its endpoint: the id, and where its data goes.
Claim = Callable[["zmq.Context[zmq.Socket[bytes]]", str], "tuple[int, NodeStorage | None]"]
SNAPSHOT_AFTER = 64 << 20  # bytes of log since the last snapshot that start the next one (at least)
SNAPSHOT_AT_STOP = 1 << 20  # bytes of log since the last snapshot that make a clean stop write one
DISK_REPORT_EVERY = 0.5  # seconds between refreshes of the log figures a heartbeat carries


@dataclass(frozen=True)
class Listen:
    """Where a node binds (port 0: a free one) and the host (and port, 0: the bound one) it tells the master."""

    host: str
    port: int = 0
    advertise_host: str = ""
    advertise_port: int = 0


def _bind(router: zmq.Socket[bytes], listen: Listen) -> str:
    """Bind ``router`` as ``listen`` says; the endpoint to advertise, or ``AddressUnusable``."""
    try:
        if listen.port == 0:
            port = router.bind_to_random_port(f"tcp://{listen.host}")
        else:
            router.bind(f"tcp://{listen.host}:{listen.port}")
            port = listen.port
    except zmq.ZMQError as exc:
        where = f"{listen.host}:{listen.port}" if listen.port else listen.host
        raise AddressUnusable(f"cannot listen on {where}: {os.strerror(exc.errno or 0)}") from None
    return f"tcp://{listen.advertise_host or listen.host}:{listen.advertise_port or port}"


@dataclass(frozen=True)
class NodeStorage:
    """Where and how a node keeps its data: its directory, fsync policy and snapshot threshold."""

    directory: Path
    policy: FsyncPolicy = FsyncPolicy.EVERYSEC
    snapshot_after: int = SNAPSHOT_AFTER


class NodeProcess:
    """Runs one ``NodeCore`` until SIGTERM or until the master fences it."""

    def __init__(
        self,
        node_id: int,
        master_endpoint: str,
        timing: Timing,
        host: str = "127.0.0.1",
        storage: NodeStorage | None = None,
        *,
        listen: Listen | None = None,
        curve: Curve | None = None,
        claim: Claim | None = None,
    ) -> None:
        self.ctx = zmq.Context()
        self.ctx.linger = 0
        self.auth = None
        try:
            self.router = self.ctx.socket(zmq.ROUTER)
            if curve is not None:
                curve.serve(self.router)
            endpoint = _bind(self.router, listen or Listen(host))
            if curve is not None:
                self.auth = start_authenticator(self.ctx, curve, f"node at {endpoint}")
            if claim is not None:
                # A node started by hand learns its id (and so its data directory) from the master.
                node_id, storage = claim(self.ctx, endpoint)
            recovered = recover(storage.directory) if storage is not None else None
        except BaseException:
            self._close_context()
            raise
        self.curve = curve
        self.poller = zmq.Poller()
        self.masters: dict[str, zmq.Socket[bytes]] = {}  # by address
        for index, address in enumerate(parse_addresses(master_endpoint)):
            sock = self.ctx.socket(zmq.DEALER)
            # One identity per incarnation: the master tells a restarted node from its dead predecessor by it.
            sock.setsockopt(zmq.IDENTITY, f"node-{node_id}-{os.getpid()}".encode())
            if curve is not None:
                curve.connect_to(sock, curve.masters[index])
            sock.connect(address)
            self.poller.register(sock, zmq.POLLIN)
            self.masters[address] = sock
        self.poller.register(self.router, zmq.POLLIN)
        self.peers: dict[int, zmq.Socket[bytes]] = {}
        held = None
        if recovered is not None and recovered.replica is not None and recovered.table is not None:
            held = (recovered.replica, recovered.table)
            log.info("recovered %d keys from %d records", recovered.replica.keys, recovered.records)
        self.core = NodeCore(node_id, endpoint, os.getpid(), timing, held)
        self.rejections = RejectionLog(log, self.core.name)
        self.stopping = False
        self.fenced = False  # stopped because the master declared it dead
        self.storage = storage
        self.wal: WriteAheadLog | None = None
        self.deferred: list[Answer] = []  # acknowledgements waiting for the pass's records to be logged
        self.snapshot: Snapshot | None = None
        self.snapshot_after = storage.snapshot_after if storage is not None else 0
        self.next_disk_report = 0.0
        if storage is not None and recovered is not None:
            self.wal = WriteAheadLog(storage.directory, storage.policy, recovered.next_seq)
            self.wal.written = recovered.log_bytes  # replaying a long log next time is what a snapshot saves
            self.core.replica.journal = []
        self.core.sample_process = ProcessSampler().sample

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        core = self.core
        core.wall_offset = time.time() - time.monotonic()
        core.start(time.monotonic())
        self._act()
        log.info("%s listening on %s", core.name, core.endpoint)
        try:
            while not self.stopping:
                core.tick(time.monotonic())
                self._act()
                ready = dict(self.poller.poll(max(1, int((core.next_beat - time.monotonic()) * 1000))))
                started, cpu_started = time.monotonic(), time.thread_time()
                if self.router in ready:
                    self._drain(self.router, lambda env, msg: core.on_router(time.monotonic(), env, msg))
                for address, master in self.masters.items():
                    if master in ready:
                        self._drain(master, lambda _env, msg: core.on_master(time.monotonic(), msg), address)
                for node_id, peer in list(self.peers.items()):
                    if peer in ready:
                        self._drain(peer, lambda _env, msg: core.on_peer(time.monotonic(), msg), node_name(node_id))
                core.flush(time.monotonic())
                self.rejections.flush(time.monotonic())
                self._act()
                self._persist()
                self._report_long_pass(time.monotonic() - started, time.thread_time() - cpu_started)
        finally:
            self._close_log()
            self._close_context()
            log.info("%s stopped", core.name)

    def _close_context(self) -> None:
        if self.auth is not None:
            self.auth.stop()  # its thread holds a socket of the context
        self.ctx.destroy(linger=0)

    def _stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def _report_long_pass(self, took: float, cpu: float) -> None:
        """Say so when one pass of the loop kept requests waiting: on the CPU (our fault) or off it (starved)."""
        if took > LONG_PASS:
            log.warning(
                "%s: one pass of the loop took %.0f ms (%.0f ms on the CPU)", self.core.name, took * 1000, cpu * 1000
            )

    def _drain(self, sock: zmq.Socket[bytes], handle: Handler, source: str | None = None) -> None:
        """Handle what ``sock`` holds; a rejected frame is put down to ``source``, or for the ROUTER to its sender."""
        for count in range(1, DRAIN_LIMIT + 1):
            if count % BEAT_CHECK_EVERY == 0:
                # On a crowded machine a long pass must not starve the heartbeat: the master would declare us dead.
                self.core.tick(time.monotonic())
            try:
                frames = sock.recv_multipart(NOBLOCK)
            except zmq.Again:
                break
            try:
                handle(frames[:-1], decode(frames[-1]))
            except ProtocolError as exc:
                self.rejections.reject(time.monotonic(), source or peer_name(frames[0]), exc)
            self._act()

    def _act(self) -> None:
        for action in self.core.take():
            self._carry_out(action)

    def _carry_out(self, action: Action) -> None:
        match action:
            case Answer() if self.wal is not None:
                self.deferred.append(action)
            case Answer():
                self._answer(action, time.monotonic())
            case ToPeer(node_id, endpoint, message):
                self._peer(node_id, endpoint).send(encode(message))
            case ToMaster(message):
                # With the master gone its queue fills up: drop the message rather than block the loop (a late
                # heartbeat is worth nothing anyway).
                frame = encode(message)
                for master in self.masters.values():
                    with contextlib.suppress(zmq.Again):
                        master.send(frame, NOBLOCK)
            case DropPeer(node_id):
                sock = self.peers.pop(node_id, None)
                if sock is not None:
                    self.poller.unregister(sock)
                    sock.close(linger=0)
            case Exit():
                self.stopping = True
                self.fenced = True

    def _answer(self, answer: Answer, now: float) -> None:
        route = answer.route
        assert isinstance(route, list)
        for frame in route:
            self.router.send(frame, SNDMORE)
        self.router.send(encode(answer.message))
        if answer.arrived:
            self.core.stats.hist[bisect_right(BOUNDS, now - answer.arrived)] += 1

    # --- the log ---

    def _persist(self) -> None:
        """Log what the pass changed, then let its answers go (a group commit); take a snapshot step."""
        wal = self.wal
        if wal is None:
            return
        journal = self.core.replica.journal
        if journal:
            wal.append(journal)
            journal.clear()
        logged = wal.write_out()
        held = []
        now = time.monotonic()
        for answer in self.deferred:
            if logged or not answer.durable:
                self._answer(answer, now)  # reads still go out while the disk refuses writes
            else:
                held.append(answer)
        self.deferred = held
        if now >= self.next_disk_report or (wal.error or "") != (self.core.disk.error if self.core.disk else ""):
            self.next_disk_report = now + DISK_REPORT_EVERY
            self.core.disk = DiskReport(wal.policy.value, wal.syncs.last_ms(), wal.syncs.p99_ms(), wal.error or "")
        if logged:
            self._snapshot_step()

    def _snapshot_step(self) -> None:
        wal, table = self.wal, self.core.table
        assert wal is not None
        assert self.storage is not None
        if self.snapshot is None and table is not None and wal.written >= self.snapshot_after:
            seq = wal.rotate()
            self.snapshot = Snapshot(self.storage.directory, seq, self.core.replica, TableSeen(table.data))
        if self.snapshot is not None:
            self.snapshot.step()
            if self.snapshot.done():
                if self.snapshot.failed is None:
                    self.snapshot_after = max(self.snapshot_after, self.snapshot.size)
                self.snapshot = None

    def _close_log(self) -> None:
        """On a clean stop, log what is left and snapshot the rest of the log away: the next start reads less."""
        if self.wal is None:
            return
        self._persist()
        table = self.core.table
        if self.snapshot is None and table is not None and self.wal.written >= SNAPSHOT_AT_STOP and self.storage:
            self.snapshot = Snapshot(
                self.storage.directory, self.wal.rotate(), self.core.replica, TableSeen(table.data)
            )
        if self.snapshot is not None:
            self.snapshot.finish()
        self.wal.close()

    def _peer(self, node_id: int, endpoint: str) -> zmq.Socket[bytes]:
        sock = self.peers.get(node_id)
        if sock is None:
            sock = self.ctx.socket(zmq.DEALER)
            # Replication must never block the loop (two nodes blocked sending to each other would deadlock);
            # what is queued is bounded by the requests clients have in flight.
            sock.setsockopt(zmq.SNDHWM, 0)
            if self.curve is not None:
                self.curve.connect_to(sock, self.curve.node)  # every node serves with the one node key
            sock.connect(endpoint)
            self.poller.register(sock, zmq.POLLIN)
            self.peers[node_id] = sock
        return sock


class ProcessSampler:
    """This process's CPU % (of one core, since the previous sample) and resident memory, at most once a second."""

    def __init__(self) -> None:
        import psutil  # noqa: PLC0415 - the node's only use of it

        self.process = psutil.Process()
        self.sampled_at = time.monotonic()
        self.cpu = self._cpu_seconds()
        self.last = (0.0, int(self.process.memory_info().rss))

    def _cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def sample(self) -> tuple[float, int]:
        now = time.monotonic()
        if now - self.sampled_at >= 1.0:
            cpu = self._cpu_seconds()
            self.last = (100 * (cpu - self.cpu) / (now - self.sampled_at), int(self.process.memory_info().rss))
            self.sampled_at, self.cpu = now, cpu
        return self.last


def serve(
    node_id: int,
    master_endpoint: str,
    timing: Timing,
    host: str = "127.0.0.1",
    storage: NodeStorage | None = None,
    curve: Curve | None = None,
) -> bool:
    """Run a storage node in this process until it is stopped; True if the master fenced it."""
    process = NodeProcess(node_id, master_endpoint, timing, host, storage, curve=curve)
    process.run()
    return process.fenced
