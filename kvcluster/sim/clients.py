"""Simulated clients: a workload of calls, each run by the real ``ClientCore`` on simulated links and clock.

A simulated client is what a process using ``kvcluster.Client`` is: one
``ClientCore`` with the library's default deadline and try timeout, a link
to every member of the master group (it follows ``NOT_LEADER`` and passes
over silent members as the real client does) and one per node it talks to.
It runs calls one after another, each a ``Connection.execute`` of a few
operations in a lane of its own (a single put or get is a call of one), and
records every operation as a ``history.Operation``, invoked when its call
started and completed when its answer came.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from kvcluster.check.history import Operation, history_operation
from kvcluster.core.client import ClientCore
from kvcluster.core.client_masters import AskMaster
from kvcluster.core.client_ops import (
    DEFAULT_DEADLINE,
    ClientAction,
    ClientConfig,
    Complete,
    Completion,
    Lane,
    NewTable,
    OpResult,
    PendingOp,
    SendRequest,
    Spec,
    WakeAt,
)
from kvcluster.core.protocol import Message, Reply
from kvcluster.sim.clock import Clock
from kvcluster.sim.network import Link

DEADLINE = DEFAULT_DEADLINE  # the real client's: the world bounds its run by it

Sink = Callable[[Link, Message], None]


@dataclass(frozen=True)
class CallSpec:
    """One ``Connection.execute``: its operations, and how many per request and requests in flight."""

    ops: list[Spec]
    batch: int = 1
    window: int = 1


Workload = Callable[[], CallSpec | None]  # the next call, or None when the client is done


class SimClient:
    """One client process: the real client core, and links to each master and to the nodes it asked."""

    def __init__(
        self,
        index: int,
        clock: Clock,
        rng: random.Random,
        connect: Callable[[SimClient, int], Link],
        connect_master: Callable[[SimClient, int, Sink], Link],
        masters: int,
        workload: Workload,
        think: Callable[[], float],
        record: Callable[[Operation], None],
    ) -> None:
        self.pid = 1000 + index
        self.index = index
        self.name = f"client{index}"
        self.clock = clock
        self.alive = True
        self.links_out: list[Link] = []
        self.connect = connect
        self.workload = workload
        self.think = think
        self.record = record
        self.core = ClientCore(rng.getrandbits(62), masters, ClientConfig())
        self.conns: dict[int, Link] = {}
        self.masters = [connect_master(self, member, self._answer_from(member)) for member in range(masters)]
        self.call: CallSpec | None = None
        self.invoked = 0.0
        self.remaining = 0
        self.timer_token = 0
        self.done = False
        self.invalid: list[str] = []  # operations a node refused as malformed: the simulation built them wrong
        self.on_done: Callable[[SimClient], None] | None = None

    # --- arrivals ---

    def _answer_from(self, member: int) -> Sink:
        def arrive(_link: Link, message: Message) -> None:
            self.core.on_master(self.clock.now, member, message)
            self._act()

        return arrive

    def arrive_reply(self, _link: Link, message: Message) -> None:
        if isinstance(message, Reply):
            self.core.on_reply(self.clock.now, message)
            self._act()

    def forget_link(self, old: object) -> None:
        """The node process ``old`` is gone for good: the next request to its endpoint reaches its successor."""
        for node_id, link in list(self.conns.items()):
            if link.dst is old:
                self.conns.pop(node_id).close()

    def connection_lost(self, old: object) -> None:
        """The kernel closed the connection to the dead process ``old``: what a socket monitor reports."""
        for node_id, link in list(self.conns.items()):
            if link.dst is old:
                self.core.on_lost(self.clock.now, node_id)
                self._act()

    # --- calls ---

    def start(self, at: float) -> None:
        self.clock.at(at, self._begin)

    def _begin(self, _arg: object) -> None:
        spec = self.workload()
        if spec is None:
            self.done = True
            if self.on_done is not None:
                self.on_done(self)
            return
        self.call, self.invoked, self.remaining = spec, self.clock.now, len(spec.ops)
        lane = Lane(spec.batch, spec.window, spec.window)
        self.core.submit(self.clock.now, lane, spec.ops)
        self._act()

    def _act(self) -> None:
        for action in self.core.take():
            self._carry_out(action)

    def _carry_out(self, action: ClientAction) -> None:
        now = self.clock.now
        match action:
            case SendRequest(node_id, _, request):
                conn = self.conns.get(node_id)
                if conn is None:
                    conn = self.conns[node_id] = self.connect(self, node_id)
                conn.send(request, now)
            case AskMaster(member, message):
                self.masters[member].send(message, now)
            case WakeAt(at):
                self.timer_token += 1
                if at < float("inf"):
                    self.clock.at(max(at, now), self._on_timer, self.timer_token)
            case Complete(ops):
                for op in ops:
                    assert op.result is not None
                    self._finish(op, op.result)
            case NewTable(message):
                dead = message.data.dead
                for node_id in [n for n in self.conns if n in dead]:
                    self.conns.pop(node_id).close()

    def _finish(self, op: PendingOp, result: OpResult) -> None:
        if result.completion in (Completion.INVALID, Completion.UNWRITABLE):
            self.invalid.append(f"{self.name}: {result.completion.value} for {op.kind.name} {op.key!r}")
        self.record(history_operation(self.index, op.kind, op.key, op.value, self.invoked, self.clock.now, result))
        self.remaining -= 1
        if not self.remaining:
            self.call = None
            self.clock.at(self.clock.now + self.think(), self._begin)

    def _on_timer(self, token: int) -> None:
        if token == self.timer_token:
            self.core.on_timer(self.clock.now)
            self._act()
