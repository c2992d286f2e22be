"""Simulated processes: the master and the storage nodes, each driving the real core like its ZeroMQ driver.

A ``SimNode`` runs ``NodeCore`` with the pass loop of ``runtime/node.py``:
when something arrives (or the heartbeat timer is due) it drains its request
socket, then its master socket, then each peer socket in the order they were
opened, at most ``DRAIN_LIMIT`` messages each and a ``tick`` every
``BEAT_CHECK_EVERY``, carrying out the core's actions after every message;
then ``flush`` (group commit) and the ``tick`` at the top of the next loop.
A ``SimMaster`` runs ``MasterCore`` like ``runtime/master.py``: it drains
every message that has arrived, then ticks, and otherwise wakes every
``TICK``.

Each message costs simulated CPU time, so a pass has a duration and the
process is busy meanwhile. Faults planned for a process are windows it
consults as it goes: paused (it handles nothing and fires no timer; on
resume it carries on with the current time, as after SIGSTOP/SIGCONT), slow
(every message costs more), killed (it stops for good, mid-pass if need be).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

from kvcluster.core.actions import Answer, DropPeer, Exit, ToMaster, ToPeer
from kvcluster.core.master import TICK, MasterCore
from kvcluster.core.node import NodeCore
from kvcluster.core.protocol import Message
from kvcluster.runtime.node import BEAT_CHECK_EVERY, DRAIN_LIMIT
from kvcluster.sim.clock import Clock
from kvcluster.sim.network import Link, Network

Notes = Callable[[float, str], None]
Connector = Callable[["SimNode", str], Link]


class SimProcess:
    """What every simulated process shares: liveness, its fault windows, CPU cost and wake-ups."""

    def __init__(self, pid: int, name: str, clock: Clock, rng: random.Random, cost: float) -> None:
        self.pid = pid
        self.name = name
        self.clock = clock
        self.rng = rng
        self.alive = True
        self.links_out: list[Link] = []
        self.pauses: list[tuple[float, float]] = []  # (from, until), sorted, disjoint
        self.slow: list[tuple[float, float, float]] = []  # (from, until, extra seconds per message)
        self.kill_at: float | None = None
        self.base_cost = cost
        self.busy_until = 0.0
        self.pass_scheduled = False
        self.timer_token = 0
        self.notes: Notes | None = None

    def runnable_at(self, t: float) -> float | None:
        """The first moment from ``t`` on at which this process runs, or None if it is dead by then."""
        for start, until in self.pauses:
            if start <= t < until:
                t = until
        if self.kill_at is not None and t >= self.kill_at:
            return None
        return t

    def cost(self, t: float) -> float:
        """Simulated CPU time of handling one message at ``t``."""
        cost = self.base_cost * (0.5 + self.rng.random())
        for start, until, extra in self.slow:
            if start <= t < until:
                cost += extra
        return cost

    def wake(self) -> None:
        """Something arrived: run a pass as soon as the process is free."""
        if self.pass_scheduled or not self.alive:
            return
        self.pass_scheduled = True
        at = self.clock.now + 0.00002
        self.clock.at(at if at > self.busy_until else self.busy_until, self.run_pass)

    def set_timer(self, at: float) -> None:
        self.timer_token += 1
        self.clock.at(at, self._on_timer, self.timer_token)

    def _on_timer(self, token: int) -> None:
        if token == self.timer_token and not self.pass_scheduled and self.alive:
            self.run_pass(None)

    def start_pass(self) -> float | None:
        """The time this pass starts, or None if it must wait (it was rescheduled) or the process is dead."""
        self.pass_scheduled = False
        if not self.alive:
            return None
        now = self.clock.now
        t = self.runnable_at(now)
        if t is None:
            return None
        if t > now or now < self.busy_until:
            self.pass_scheduled = True
            self.clock.at(max(t, self.busy_until), self.run_pass)
            return None
        return t

    def run_pass(self, _arg: object) -> None:
        raise NotImplementedError

    def note(self, t: float, text: str) -> None:
        if self.notes is not None:
            self.notes(t, f"{self.name}: {text}")


class SimMaster(SimProcess):
    """``MasterCore`` behind one simulated ROUTER socket."""

    def __init__(self, core: MasterCore, clock: Clock, rng: random.Random) -> None:
        super().__init__(0, "master", clock, rng, cost=0.00001)
        self.core = core
        self.inbox: deque[tuple[Link, Message]] = deque()

    def start(self) -> None:
        self.set_timer(TICK)

    def arrive(self, link: Link, message: Message) -> None:
        self.inbox.append((link, message))
        link.unread += 1
        self.wake()

    def run_pass(self, _arg: object) -> None:
        t = self.start_pass()
        if t is None:
            return
        core = self.core
        inbox = self.inbox
        while inbox:
            if self.pauses:
                resumed = self.runnable_at(t)
                assert resumed is not None  # the master is never killed
                t = resumed
            link, message = inbox.popleft()
            link.unread -= 1
            core.on_message(t, link.reverse, message)
            t += self.cost(t)
            self._act(t)
        core.tick(t)
        self._act(t)
        self.busy_until = t
        self.set_timer(t + TICK)

    def _act(self, t: float) -> None:
        for action in self.core.take():
            assert isinstance(action, Answer)
            route = action.route
            assert isinstance(route, Link)
            route.send(action.message, t)


class SimNode(SimProcess):
    """``NodeCore`` behind a ROUTER (clients and primaries), a DEALER to the master and a DEALER per peer."""

    def __init__(
        self, core: NodeCore, clock: Clock, rng: random.Random, network: Network, connect: Connector, hwm: int
    ) -> None:
        super().__init__(core.node_id, core.name, clock, rng, cost=0.00003)
        self.core = core
        self.network = network
        self.connect = connect
        self.hwm = hwm
        self.master_link: Link | None = None
        self.router_inbox: deque[tuple[Link, Message]] = deque()
        self.master_inbox: deque[Message] = deque()
        self.peers: dict[int, Link] = {}  # peer node id -> our DEALER's stream to it, in the order opened
        self.peer_inboxes: dict[Link, deque[Message]] = {}
        self.exiting = False
        self.exited_at: float | None = None

    # --- sockets: what arrives ---

    def arrive_router(self, link: Link, message: Message) -> None:
        self.router_inbox.append((link, message))
        self.wake()

    def arrive_master(self, _link: Link, message: Message) -> None:
        self.master_inbox.append(message)
        self.wake()

    def arrive_peer(self, link: Link, message: Message) -> None:
        inbox = self.peer_inboxes.get(link.reverse)
        if inbox is not None:
            inbox.append(message)
            self.wake()

    # --- the loop ---

    def boot(self, _arg: object) -> None:
        """The process starts: hello, the first heartbeat, then the loop."""
        now = self.clock.now
        self.core.start(now)
        self._act(now)
        self.core.tick(now)
        self._act(now)
        self.set_timer(self.core.next_beat)

    def run_pass(self, _arg: object) -> None:
        t: float | None = self.start_pass()
        if t is None:
            return
        core = self.core
        t = self._drain_router(t)
        if t is not None and self.master_inbox:
            t = self._drain(t, self.master_inbox, core.on_master)
        for inbox in list(self.peer_inboxes.values()):
            if t is not None and inbox:
                t = self._drain(t, inbox, core.on_peer)
        if t is not None:
            t = self._step(t, 1)  # a pause or a kill may fall between the last message and the flush
        if t is None:
            return  # killed in the middle of the pass
        core.flush(t)
        self._act(t)
        if self.exiting:
            self._exit(t)
            return
        core.tick(t)
        self._act(t)
        self.busy_until = t
        if self.router_inbox or self.master_inbox or any(self.peer_inboxes.values()):
            self.pass_scheduled = True
            self.clock.at(t, self.run_pass)
        else:
            self.set_timer(max(core.next_beat, t))

    def _step(self, t: float, count: int) -> float | None:
        """Before the ``count``-th message of a drain: honour pauses and a kill, and check the heartbeat clock."""
        if self.pauses or self.kill_at is not None:
            resumed = self.runnable_at(t)
            if resumed is None:
                return None
            t = resumed
        if count % BEAT_CHECK_EVERY == 0:
            self.core.tick(t)
            self._act(t)
        return t

    def _drain_router(self, start: float) -> float | None:
        t: float | None = start
        inbox = self.router_inbox
        on_router = self.core.on_router
        count = 0
        while inbox and count < DRAIN_LIMIT and t is not None:
            count += 1
            t = self._step(t, count)
            if t is None:
                return None
            link, message = inbox.popleft()
            on_router(t, link.reverse, message)
            t += self.cost(t)
            self._act(t)
        return t

    def _drain(self, start: float, inbox: deque[Message], handle: Callable[[float, Message], None]) -> float | None:
        t: float | None = start
        count = 0
        while inbox and count < DRAIN_LIMIT:
            count += 1
            t = self._step(t, count) if t is not None else None
            if t is None:
                return None
            handle(t, inbox.popleft())
            t += self.cost(t)
            self._act(t)
        return t

    def _exit(self, t: float) -> None:
        """The loop ends and the context is destroyed with linger 0."""
        self.note(t, "exited (fenced)")
        self.exited_at = t
        self.network.kill(self, t)
        self.router_inbox.clear()
        self.master_inbox.clear()
        self.peer_inboxes.clear()

    def forget_peer_link(self, old: SimProcess) -> None:
        """``old`` is gone for good: the next message to its endpoint opens a new connection (to its successor)."""
        for node_id, link in list(self.peers.items()):
            if link.dst is old:
                del self.peers[node_id]
                link.close()
                self.peer_inboxes.pop(link, None)

    def kill(self, _arg: object) -> None:
        """SIGKILL at the current time."""
        if not self.alive:
            return
        self.note(self.clock.now, "killed")
        self.network.kill(self, self.clock.now)
        self.router_inbox.clear()
        self.master_inbox.clear()
        self.peer_inboxes.clear()

    # --- actions ---

    def _act(self, t: float) -> None:
        for action in self.core.take():
            match action:
                case Answer(route, message):
                    assert isinstance(route, Link)
                    route.send(message, t)
                case ToPeer(node_id, endpoint, message):
                    link = self.peers.get(node_id)
                    if link is None:
                        link = self.peers[node_id] = self.connect(self, endpoint)
                        self.peer_inboxes[link] = deque()
                    link.send(message, t)
                case ToMaster(message):
                    master = self.master_link
                    assert master is not None
                    if master.backlog() >= self.hwm:
                        self.network.dropped_to_master += 1
                        self.network.note(t, master, message, "dropped: master queue full")
                    else:
                        master.send(message, t)
                case DropPeer(node_id):
                    link = self.peers.pop(node_id, None)
                    if link is not None:
                        link.close()
                        self.peer_inboxes.pop(link, None)
                case Exit():
                    self.exiting = True
