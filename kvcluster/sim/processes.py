"""Simulated processes: the master and the storage nodes, each driving the real core like its ZeroMQ driver.

A ``SimNode`` runs ``NodeCore`` with the pass loop of ``runtime/node.py``:
when something arrives (or the heartbeat timer is due) it drains its request
socket, then its master socket, then each peer socket in the order they were
opened, at most ``DRAIN_LIMIT`` messages each and a ``tick`` every
``BEAT_CHECK_EVERY``, carrying out the core's actions after every message;
then ``flush`` (group commit) and the ``tick`` at the top of the next loop.
A ``SimMaster`` runs ``MasterCore`` like ``runtime/master.py``: it drains
every message that has arrived, then ticks, and otherwise wakes every
``TICK``; it stands for the whole master group, modelled by its contract.

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

from kvcluster.core.actions import Answer, DropPeer, Exit, Propose, ToMaster, ToPeer
from kvcluster.core.group_state import FALLBACK, MasterState, takeover_grace
from kvcluster.core.master import TICK, MasterCore
from kvcluster.core.node import NodeCore
from kvcluster.core.protocol import Message, NotLeader
from kvcluster.runtime.node import BEAT_CHECK_EVERY, DRAIN_LIMIT
from kvcluster.sim.clock import Clock
from kvcluster.sim.disk import SimDisk
from kvcluster.sim.network import Link, Network

GROUP_SIZE = 3  # members the simulated group takes its leaders from, in turn
SYNC_TIME = 0.001  # seconds an fdatasync of one pass's records takes
COMMIT_DELAY = 0.004  # seconds from a proposal to its commit: a round trip to a majority and the next tick

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
    """The master group by its contract, behind one simulated ROUTER: a leader, a term and the committed log.

    The members are not simulated one by one (no Raft runs here): the
    leader is a ``MasterCore`` that leads from the newest committed
    ``MasterState``, its proposals commit ``COMMIT_DELAY`` later if it still
    leads, and ``fail_leader`` replaces it as the runtime's group would.
    ``crash`` is a leader killed or paused: it stops acting at once (a paused
    member ticks its Raft member before anything else when it resumes, and
    steps down). ``cut`` is a leader cut off from the other members but not
    from the nodes: it goes on acting, granting leases, for ``FALLBACK``,
    and nothing it proposes commits. Either way a new member leads after the
    election delay, term one higher, judging no node for the takeover grace.
    Nodes send every member the same messages, so each message reaches every
    member still acting.
    """

    def __init__(
        self, make_core: Callable[[int], MasterCore], clock: Clock, rng: random.Random, fate: random.Random
    ) -> None:
        super().__init__(0, "master", clock, rng, cost=0.00001)
        self.make_core = make_core
        self.fate = fate  # whether a crashed leader's last proposals reached a majority
        self.term = 1
        self.core = make_core(1)
        self.core.lead(0.0, self.term, None, 0.0)
        self.deposed: list[MasterCore] = []  # cut-off leaders still acting until their fallback ends
        self.cut_off: list[MasterCore] = []  # leaders that lost their majority: nothing they proposed commits
        self.log: MasterState | None = None
        self.inbox: deque[tuple[Link, Message]] = deque()
        self.client_members: dict[Link, int] = {}  # a client's link to one member -> that member's id
        self.crashed: set[int] = set()  # members that answer nobody until the next election

    def start(self) -> None:
        self.set_timer(TICK)

    def arrive(self, link: Link, message: Message) -> None:
        self.inbox.append((link, message))
        link.unread += 1
        self.wake()

    def fail_leader(self, failure: tuple[str, float]) -> None:
        """The leader crashes or is cut off (``failure`` = (how, election delay)): another takes over later."""
        how, election = failure
        now, old = self.clock.now, self.core
        self.note(now, f"leader master{old.master_id} (term {self.term}) {how}; election in {election:.3f} s")
        if how == "crash":
            old.follow(self.term, 0)
            self.crashed.add(old.master_id)
        else:
            self.deposed.append(old)
            self.cut_off.append(old)
            self.clock.at(now + FALLBACK, self._step_down, old)
        self.clock.at(now + election, self._elect, old.master_id % GROUP_SIZE + 1)

    def power_cut(self) -> None:
        """Every member stops at once; what their log held is of no use to the next start (``up`` makes it anew)."""
        self.note(self.clock.now, f"every master stops (term {self.term})")
        for core in self._acting():
            core.follow(self.term, 0)
            self.cut_off.append(core)  # a proposal of theirs still on its way never commits
        self.deposed.clear()
        self.inbox.clear()
        self.crashed = set(range(1, GROUP_SIZE + 1))

    def start_again(self, _arg: object) -> None:
        """The group starts again with an empty log: its first table comes from what the nodes kept."""
        self.term += 1
        self.log = None
        self.note(self.clock.now, f"the master group starts again (term {self.term}, no table)")
        self.core = self.make_core(1)
        self.core.lead(self.clock.now, self.term, None, 0.0)
        self.crashed.clear()
        self.wake()

    def _step_down(self, core: MasterCore) -> None:
        core.follow(self.term, self.core.master_id)
        self.deposed.remove(core)

    def _elect(self, member: int) -> None:
        now = self.clock.now
        self.term += 1
        self.crashed.clear()  # a crashed member is back, as a follower, by the time the group has elected
        version = self.log.table.version if self.log is not None and self.log.table is not None else 0
        self.note(now, f"master{member} leads term {self.term} from table version {version}")
        self.core = self.make_core(member)
        self.core.lead(now, self.term, self.log, takeover_grace(self.core.timing))
        self.wake()

    def _answer_client(self, t: float, link: Link, member: int, message: Message) -> None:
        """A client asked ``member``: a leader (or a candidate) answers itself, a crashed member does not,
        and any other names the leader (0 mid-election), as a follower's ``NotLeader`` does."""
        if member in self.crashed:
            return
        for core in self._acting():
            if core.master_id == member:
                core.on_message(t, link.reverse, message)
                return
        leader = self.core.master_id if self.core.acting else 0
        link.reverse.send(NotLeader(self.term, leader), t)

    def _acting(self) -> list[MasterCore]:
        return [self.core, *self.deposed]

    def run_pass(self, _arg: object) -> None:
        t = self.start_pass()
        if t is None:
            return
        inbox = self.inbox
        while inbox:
            if self.pauses:
                resumed = self.runnable_at(t)
                assert resumed is not None  # the group is never gone as a whole
                t = resumed
            link, message = inbox.popleft()
            link.unread -= 1
            member = self.client_members.get(link)
            if member is not None:
                self._answer_client(t, link, member, message)
            else:
                for core in self._acting():
                    core.on_message(t, link.reverse, message)
            t += self.cost(t)
            self._act(t)
        for core in self._acting():
            core.tick(t)
        self._act(t)
        self.busy_until = t
        self.set_timer(t + TICK)

    def _act(self, t: float) -> None:
        for core in self._acting():
            for action in core.take():
                if isinstance(action, Propose):
                    self.clock.at(t + COMMIT_DELAY, self._commit, (core, action.state))
                    continue
                assert isinstance(action, Answer)
                route = action.route
                assert isinstance(route, Link)
                route.send(action.message, t)

    def _commit(self, proposal: tuple[MasterCore, MasterState]) -> None:
        core, state = proposal
        if core is self.core and core.acting:
            self.log = state
            core.on_committed(state)
        elif core.acting or core in self.cut_off:
            core.on_commit_failed()
        elif self.fate.random() < 0.5:
            self.log = state  # the crashed leader's entry reached a majority: the next leader has a table nobody saw
        self._act(self.clock.now)


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
        self.disk: SimDisk | None = None  # when set, answers wait until the pass's records are on it
        self.held: list[Answer] = []

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
        self._log(t)
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
        self.held.clear()  # the pass's records never reached the disk, and neither do its answers
        self.router_inbox.clear()
        self.master_inbox.clear()
        self.peer_inboxes.clear()

    # --- actions ---

    def _log(self, t: float) -> None:
        """Write the pass's records, and once their sync is done let the pass's answers go: a group commit.

        The sync takes ``SYNC_TIME``: a power cut in between keeps any prefix of what was written, and the
        answers waiting on it are never sent.
        """
        disk, journal = self.disk, self.core.replica.journal
        if disk is None or journal is None:
            return
        disk.write(journal)
        journal.clear()
        held, self.held = self.held, []
        self.clock.at(t + SYNC_TIME, self._synced, (len(disk.records), held))

    def _synced(self, done: tuple[int, list[Answer]]) -> None:
        written, held = done
        disk = self.disk
        resumed = self.runnable_at(self.clock.now)
        if not self.alive or disk is None or resumed is None:
            return
        if resumed > self.clock.now:
            self.clock.at(resumed, self._synced, done)  # paused meanwhile: the answers go once it runs again
            return
        disk.synced = max(disk.synced, min(written, len(disk.records)))
        for answer in held:
            assert isinstance(answer.route, Link)
            answer.route.send(answer.message, self.clock.now)

    def _act(self, t: float) -> None:
        for action in self.core.take():
            match action:
                case Answer() if self.disk is not None:
                    self.held.append(action)
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
