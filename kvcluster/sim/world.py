"""One simulated run: the master, the nodes and the clients on one clock, with the faults of its plan.

``World`` wires the real cores (through ``processes.py``) and the simulated
clients to the simulated network, applies the fault plan, runs the event
loop until the workload has ended and a fresh reader has read every key
back, and returns a ``RunResult``: the history, the final reads and what the
master concluded. Every random choice comes from streams derived from the
seed by name (``random.Random(f"{seed}/{name}")``), so removing a fault
leaves the workload and the network weather of the other streams as they
were.
"""

from __future__ import annotations

import random
import traceback
from dataclasses import dataclass, field

from kvcluster.check.faults import MEMBERSHIP, FaultKind
from kvcluster.check.history import Operation
from kvcluster.core.client_ops import Spec
from kvcluster.core.master import MasterCore
from kvcluster.core.node import NodeCore
from kvcluster.core.placement import RoutingTable, under_replicated
from kvcluster.core.protocol import Drain, Timing
from kvcluster.core.wire import OpKind
from kvcluster.sim.clients import DEADLINE, CallSpec, SimClient, Sink, Workload
from kvcluster.sim.clock import Clock
from kvcluster.sim.config import Shape, SimConfig, draw_shape
from kvcluster.sim.disk import SimDisk
from kvcluster.sim.faults import CLIENTS, Fault, plan_faults
from kvcluster.sim.network import Link, Network
from kvcluster.sim.processes import GROUP_SIZE, SimMaster, SimNode, SimProcess
from kvcluster.sim.trace import Trace, core_logs

MAX_EVENTS = 3_000_000
SETTLE_LIMIT = 3.0  # seconds after the workload for healing to finish before the final reads
SINGLE_SHARE = 0.7  # of client calls: one put or get, as the CLI makes them
DELETE_SHARE = 0.2  # of writes: deletes, drawn from a stream of their own so the other draws stay as they were
ADMIN_PID = 900  # below the clients' 1000 + index, above every node id
CLOSE_NOTICE = 0.001  # seconds from a process's death to its peers' sockets reporting the closed connection
RECHECK = 0.2  # seconds between two looks of a membership change at the master's state, as the CLI polls


class Admin:
    """The process running ``kvcluster remove-node``: it asks the master to drain a node until it is empty."""

    def __init__(self, clock: Clock, net: Network, master: SimMaster) -> None:
        self.pid = ADMIN_PID
        self.name = "admin"
        self.alive = True
        self.links_out: list[Link] = []
        self.clock = clock
        self.link = net.connect(self, master, "admin>master", master.arrive, lambda _link, _message: None)

    def drain(self, node_id: int) -> None:
        self.link.send(Drain(node_id), self.clock.now)


@dataclass
class RunResult:
    """What one run produced, for the checks and the report."""

    seed: int
    shape: Shape
    faults: list[Fault]
    history: list[Operation]
    final: list[Operation]
    keys: list[str]
    declared_dead: list[int]
    unavailable: list[str]  # keys whose slot has no live replica in the master's last table
    healed: bool  # every slot had its replicas back (or could not) before the final reads
    dropped_to_master: int  # node messages the master's full queue turned away
    finished: bool
    error: str | None
    invalid: list[str]
    events: int
    messages: int
    sim_time: float
    trace: Trace = field(repr=False)


class World:
    """Everything of one run; ``run()`` once."""

    def __init__(
        self, seed: int, config: SimConfig, faults: list[Fault] | None = None, trace: Trace | None = None
    ) -> None:
        self.seed = seed
        self.config = config
        self.shape = shape = draw_shape(seed, config)
        self.clock = clock = Clock()
        self.trace = trace if trace is not None else Trace()
        self.net = Network(clock, self.stream("net"), shape.net)
        self.net.observer = self.trace.delivery
        timing = Timing()
        self.master = SimMaster(
            lambda member: MasterCore(
                shape.nodes, shape.rep, timing, member, shape.slots, master_id=member, replicated=True
            ),
            clock,
            self.stream("cpu"),
            self.stream("group"),
        )
        self.master.notes = self.trace.note
        self.timing = timing
        self.nodes: dict[int, SimNode] = {}  # the current incarnation of every node started so far
        self.by_endpoint: dict[str, SimNode] = {}
        self.restarts: dict[int, int] = {}  # node id -> how many times it was started again
        self.disks: dict[int, SimDisk] = {}  # node id -> its disk, which outlives its processes
        for node_id in range(1, shape.nodes + 1):
            self._start_node(node_id)
        self.incarnations: dict[tuple[int, int], int] = {}
        self.admin: Admin | None = None
        self.faults = (
            faults
            if faults is not None
            else plan_faults(self.stream("faults"), shape.nodes, shape.rep, config.duration, config.max_faults)
        )
        self.keys = [f"k{i}" for i in range(config.keys)]
        self.history: list[Operation] = []
        self.final: list[Operation] = []
        self.clients = [self._client(i, self._workload(i), self.history) for i in range(config.clients)]
        self.idle = 0
        self.reader: SimClient | None = None
        self.settle_from = 0.0
        self.healed = False

    def stream(self, name: str) -> random.Random:
        return random.Random(f"{self.seed}/{name}")

    # --- wiring ---

    def _start_node(self, node_id: int) -> SimNode:
        """A new process for ``node_id`` (a later incarnation gets its own pid and CPU stream); not booted yet."""
        again = self.restarts.get(node_id, 0)
        endpoint = f"sim://server{node_id}"
        disk = self.disks.setdefault(node_id, SimDisk())
        core = NodeCore(node_id, endpoint, 100 * (again + 1) + node_id, self.timing, disk.recover())
        core.replica.journal = []
        stream = self.stream(f"cpu{node_id}" + (f".{again}" if again else ""))
        node = SimNode(core, self.clock, stream, self.net, self._connect_peer, self.shape.net.master_hwm)
        node.disk = disk
        node.notes = self.trace.note
        node.master_link = self.net.connect(
            node, self.master, f"{node.name}>master", self.master.arrive, node.arrive_master
        )
        old = self.nodes.get(node_id)
        self.nodes[node_id] = node
        self.by_endpoint[endpoint] = node
        if old is not None:
            self._reconnect(old)
        return node

    def _reconnect(self, old: SimNode) -> None:
        """Sockets connected to a dead process's endpoint reach its new incarnation, as ZeroMQ reconnects."""
        for node in self.nodes.values():
            node.forget_peer_link(old)
        for client in self.clients:
            client.forget_link(old)

    def _connect_peer(self, node: SimNode, endpoint: str) -> Link:
        peer = self.by_endpoint[endpoint]
        pair = (node.core.pid, peer.core.pid)
        self.incarnations[pair] = count = self.incarnations.get(pair, 0) + 1
        name = f"{node.name}>{peer.name}" + (f"#{count}" if count > 1 else "")
        return self.net.connect(node, peer, name, peer.arrive_router, node.arrive_peer)

    def _connect_master(self, client: SimClient, member: int, back: Sink) -> Link:
        """A client's DEALER to master ``member`` (0-based) of the group."""
        name = f"{client.name}>master{member + 1}"
        link = self.net.connect(client, self.master, name, self.master.arrive, back)
        self.master.client_members[link] = member + 1
        return link

    def _connect_client(self, client: SimClient, node_id: int) -> Link:
        node = self.nodes[node_id]
        return self.net.connect(
            client, node, f"{client.name}>{node.name}", node.arrive_router, client.arrive_reply, lossy=True
        )

    def _client(self, index: int, workload: Workload, into: list[Operation]) -> SimClient:
        rng = self.stream(f"client{index}")
        think = self.config.think

        def record(op: Operation) -> None:
            into.append(op)
            self.trace.operation(op)

        think_time = lambda: rng.expovariate(1.0 / think)  # noqa: E731 - one line, named for what it is
        client = SimClient(
            index, self.clock, rng, self._connect_client, self._connect_master, GROUP_SIZE, workload, think_time, record
        )
        client.on_done = self._client_done
        return client

    def _workload(self, index: int) -> Workload:
        """Mostly single puts, deletes and gets, sometimes an ``execute`` of a few with several requests in flight."""
        rng = self.stream(f"workload{index}")
        deletes = self.stream(f"deletes{index}")
        keys, put_ratio, end = self.keys, self.config.put_ratio, self.config.duration
        written = [0]

        def op() -> Spec:
            key = keys[rng.randrange(len(keys))]
            if rng.random() < put_ratio:
                if deletes.random() < DELETE_SHARE:
                    return OpKind.DELETE, key, None
                written[0] += 1
                return OpKind.PUT, key, f"{index}.{written[0]}"
            return OpKind.GET, key, None

        def next_call() -> CallSpec | None:
            if self.clock.now >= end:
                return None
            if rng.random() < SINGLE_SHARE:
                return CallSpec([op()])
            ops = [op() for _ in range(rng.randint(2, 6))]
            return CallSpec(ops, batch=rng.choice((1, 2, 4)), window=rng.choice((1, 2, 4, 8)))

        return next_call

    def _client_done(self, client: SimClient) -> None:
        if client is self.reader:
            self.clock.stopped = True
            return
        self.idle += 1
        if self.idle == len(self.clients):
            self.trace.note(self.clock.now, "workload over; waiting for every slot to have its replicas")
            self.settle_from = self.clock.now
            self._settle(None)

    def _settle(self, _arg: object) -> None:
        """Wait (up to ``SETTLE_LIMIT``) until healing is over, then start the reader."""
        self.healed = self._healed()
        if not self.healed and self.clock.now < self.settle_from + SETTLE_LIMIT:
            self.clock.at(self.clock.now + 0.1, self._settle)
            return
        self.trace.note(self.clock.now, "a new client reads every key")
        pending = list(self.keys)

        def reads() -> CallSpec | None:
            return CallSpec([(OpKind.GET, pending.pop(0), None)]) if pending else None

        self.reader = self._client(len(self.clients), reads, self.final)
        self.reader.think = lambda: 0.0
        self.reader.start(self.clock.now + 0.01)

    def _healed(self) -> bool:
        """Every slot has ``rep`` live replicas, or too few nodes are left for that."""
        table = self.master.core.table
        if table is None:
            return False
        return len(table.endpoints) - len(table.dead) < table.rep or not under_replicated(table)

    # --- faults ---

    def _apply(self, fault: Fault) -> None:
        clock = self.clock
        clock.at(fault.at, self._note_fault, f"fault: {fault.describe()}")
        if fault.until < float("inf") and fault.kind not in MEMBERSHIP:
            clock.at(fault.until, self._note_fault, f"fault over: {fault.kind} {fault.node or 'master'}")
        match fault.kind:
            case FaultKind.KILL | FaultKind.DOUBLE_KILL:
                self._kill_at(fault.node, fault.at)
                if fault.kind == FaultKind.DOUBLE_KILL:
                    self._kill_at(fault.other, fault.at + fault.duration)
            case FaultKind.RESTART:
                clock.at(fault.at, self._restart, fault.node)
            case FaultKind.ADD_NODE:
                clock.at(fault.at, self._add, None)
            case FaultKind.REMOVE_NODE:
                clock.at(fault.at, self._remove, fault.node)
            case FaultKind.PAUSE | FaultKind.STALL | FaultKind.PAUSE_MASTER:
                process = self.nodes[fault.node] if fault.node else self.master
                process.pauses = sorted([*process.pauses, (fault.at, fault.until)])
                clock.at(fault.at, self._stop, (process, fault.until))
            case FaultKind.SLOW:
                self.nodes[fault.node].slow.append((fault.at, fault.until, fault.extra))
            case FaultKind.FLAKY:
                clock.at(fault.at, self._flaky, (fault.node, fault.extra, fault.until))
                clock.at(fault.until, self._flaky, (fault.node, 0.0, fault.until))
            case FaultKind.POWER_CUT:
                clock.at(fault.at, self._power_cut, fault.duration)
            case FaultKind.LEADER_CRASH | FaultKind.LEADER_PAUSE | FaultKind.LEADER_CUT:
                # A paused leader is a crashed one to the group (``SimMaster``): it steps down when it resumes.
                how = "cut" if fault.kind == FaultKind.LEADER_CUT else "crash"
                clock.at(fault.at, self.master.fail_leader, (how, fault.duration))
            case _:
                pairs = self._cut_pairs(fault)
                clock.at(fault.at, self._cut, pairs)
                clock.at(fault.until, self._heal, pairs)

    def _kill_at(self, node_id: int, at: float) -> None:
        node = self.nodes[node_id]
        node.kill_at = at
        self.clock.at(at, self._kill, node)

    def _flaky(self, flaky: tuple[int, float, float]) -> None:
        node_id, loss, until = flaky
        if loss:
            self.net.flaky[node_id] = (loss, until)
        else:
            self.net.flaky.pop(node_id, None)

    def _power_cut(self, outage: float) -> None:
        """Every process dies at once; each disk keeps what the seed decides; all start again ``outage`` later."""
        cut = self.stream("power")
        running = sorted(n for n, node in self.nodes.items() if node.alive)
        for node_id in running:
            node = self.nodes[node_id]
            self._kill(node)
            lost = self.disks[node_id].power_cut(cut)
            self.trace.note(self.clock.now, f"{node.name}: power cut, {lost} unsynced records lost")
        self.master.power_cut()
        restart_at = self.clock.now + outage
        self.clock.at(restart_at, self.master.start_again)
        for node_id in running:
            self.clock.at(restart_at + cut.uniform(0.0, 0.05), self._start_again, node_id)

    def _start_again(self, node_id: int) -> None:
        self.restarts[node_id] = self.restarts.get(node_id, 0) + 1
        self.trace.note(self.clock.now, f"server{node_id} starts again from its disk")
        self._start_node(node_id).boot(None)

    def _restart(self, node_id: int) -> None:
        """``kvcluster restart``, once the master has declared the old incarnation dead."""
        table = self.master.core.table
        if self.nodes[node_id].alive or table is None or node_id not in table.dead:
            self.clock.at(self.clock.now + RECHECK, self._restart, node_id)
            return
        self._start_again(node_id)

    def _add(self, _arg: object) -> None:
        """``kvcluster add-node``: the next id, once the master has taken in the one before."""
        table = self.master.core.table
        if table is None or max(table.endpoints) != len(self.nodes):
            self.clock.at(self.clock.now + RECHECK, self._add, None)
            return
        node = self._start_node(len(self.nodes) + 1)
        self.trace.note(self.clock.now, f"{node.name} added")
        node.boot(None)

    def _remove(self, node_id: int) -> None:
        """``kvcluster remove-node``: ask the master to drain the node, and stop it once it holds nothing."""
        if self.admin is None:
            self.admin = Admin(self.clock, self.net, self.master)
        self.admin.drain(node_id)
        self.clock.at(self.clock.now + RECHECK, self._stop_drained, node_id)

    def _stop_drained(self, node_id: int) -> None:
        assert self.admin is not None
        self.admin.drain(node_id)  # again, as the CLI does: a leader that took over meanwhile may not have heard it
        master = self.master.core
        table = master.table
        moving = any(node_id in (m.source, m.target) for m in master.repairs.moves.values())
        if table is None or moving or any(node_id in nodes for nodes in table.replicas):
            self.clock.at(self.clock.now + RECHECK, self._stop_drained, node_id)
            return
        node = self.nodes[node_id]
        node.kill_at = self.clock.now
        self._kill(node)

    def _kill(self, node: SimNode) -> None:
        """SIGKILL: the kernel closes the process's connections, and each client's socket monitor says so."""
        node.kill(None)
        self.clock.at(self.clock.now + CLOSE_NOTICE, self._connections_closed, node)

    def _connections_closed(self, node: SimNode) -> None:
        for client in [*self.clients, *([self.reader] if self.reader is not None else [])]:
            client.connection_lost(node)

    def _stop(self, stop: tuple[SimProcess, float]) -> None:
        process, until = stop
        self.net.stop(process, self.clock.now, until)

    def _cut_pairs(self, fault: Fault) -> list[tuple[int, int]]:
        node = fault.node
        match fault.kind:
            case FaultKind.ISOLATE:
                return [(node, 0), (0, node)]
            case FaultKind.ONEWAY | FaultKind.LATE if node == CLIENTS:
                return [(client.pid, fault.other) for client in self.clients]
            case FaultKind.ONEWAY | FaultKind.LATE:
                return [(node, fault.other)]
        others = [n for n in self.nodes if n != node]
        return [(node, n) for n in others] + [(n, node) for n in others]

    def _cut(self, pairs: list[tuple[int, int]]) -> None:
        for src, dst in pairs:
            self.net.cut(src, dst)

    def _heal(self, pairs: list[tuple[int, int]]) -> None:
        for src, dst in pairs:
            self.net.heal(src, dst)

    def _note_fault(self, text: str) -> None:
        self.trace.note(self.clock.now, text)

    # --- the run ---

    def run(self) -> RunResult:
        clock = self.clock
        boot = self.stream("boot")
        error: str | None = None
        finished = False
        with core_logs(self.trace, lambda: clock.now):
            self.master.start()
            for node in self.nodes.values():
                clock.at(boot.uniform(0.0, 0.005), node.boot)
            for client in self.clients:
                client.start(0.05 + boot.uniform(0.0, 0.05))
            for fault in self.faults:
                self._apply(fault)
            limit = self.config.duration + SETTLE_LIMIT + DEADLINE * (len(self.keys) + 2)
            try:
                finished = clock.run(limit, MAX_EVENTS)
            except Exception:  # noqa: BLE001 - any exception in a core is a finding, reported with its traceback
                error = traceback.format_exc()
        return self._result(finished, error)

    def _result(self, finished: bool, error: str | None) -> RunResult:
        data = self.master.core.table
        table = RoutingTable(data) if data is not None else None
        unavailable = [k for k in self.keys if table is None or table.primary(table.slot_of(k)) is None]
        clients = [*self.clients, *([self.reader] if self.reader is not None else [])]
        invalid = [text for client in clients for text in client.invalid]
        return RunResult(
            seed=self.seed,
            shape=self.shape,
            faults=self.faults,
            history=self.history,
            final=self.final,
            keys=self.keys,
            declared_dead=list(data.dead) if data is not None else [],
            unavailable=unavailable,
            healed=self.healed,
            dropped_to_master=self.net.dropped_to_master,
            finished=finished and self.reader is not None and self.reader.done,
            error=error,
            invalid=invalid,
            events=self.clock.events,
            messages=self.net.delivered,
            sim_time=self.clock.now,
            trace=self.trace,
        )
