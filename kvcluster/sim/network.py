"""The simulated network: ZeroMQ over TCP on loopback, one FIFO stream per direction of each connection.

A ``Link`` is one direction of one connection (a DEALER's stream to a
ROUTER, or the ROUTER's answers back). Messages on a link arrive in the order
they were sent, each after a latency drawn from the run's distribution (a
fraction of a millisecond, with rare spikes); only messages on different
links overtake one another. A cut link *holds* what it carries until the cut
heals, as a stalled TCP stream does. Messages are lost only where the real
system can lose them:

- the receiving process is dead (killed or exited); what a killed process
  sent in its last moment (a random window per socket) never left it;
- the sender closed the connection (``DropPeer``, a client forgetting a dead
  node): what was still queued is discarded after a random prefix got out,
  and answers on it are discarded;
- (not a loss) what a process sent just before it was stopped waits until
  it resumes;
- a node's non-blocking send to the master finds the master's queue over its
  high-water mark (the master is not reading);
- a *lossy* link (client to node and back) drops or badly delays a message,
  standing in for a client that times out and resends.

A *flaky* process loses packets, not messages: TCP sends a lost packet again
after its retransmission timeout (``RTO_MIN``, doubling each time it is lost
again, until the flakiness is over), so a message to or from it may come
hundreds of milliseconds late,
and everything behind it on its link waits. Without ZeroMQ heartbeats
(kvcluster sets none) the connection survives and nothing is lost.

The network owns no process logic: a link hands what it delivers to its
``sink``, the receiving process's socket.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kvcluster.core.protocol import Message, decode, encode
from kvcluster.sim.clock import Clock

SEND_BUFFER_WINDOW = 0.001  # seconds: at most this recent, a send may still sit in the process's own queue
RTO_MIN = 0.2  # seconds: Linux's least TCP retransmission timeout, which a loss on a fast link costs


class Endpoint(Protocol):
    """What a link needs to know of the processes at its ends."""

    pid: int
    name: str
    alive: bool
    links_out: list[Link]


Sink = Callable[["Link", Message], None]
Observer = Callable[[float, "Link", Message, str], None]


@dataclass(frozen=True)
class NetParams:
    """The run's network weather, drawn from its seed."""

    spike_rate: float = 0.001  # chance a message takes 2-50 ms instead of 0.1-2 ms
    lossy_drop: float = 0.0  # on client links: chance a message is lost
    lossy_delay: float = 0.0  # on client links: chance a message arrives 0.2-1.2 s late
    master_hwm: int = 1000  # messages a node may have queued towards the master before its sends are dropped
    codec_rate: float = 0.0  # chance a message goes through encode/decode instead of being passed as an object


class Link:
    """One direction of one connection: a FIFO stream of messages from ``src`` to ``dst``."""

    __slots__ = (
        "closed",
        "discard",
        "dst",
        "last_at",
        "lossy",
        "name",
        "net",
        "queue",
        "reverse",
        "scheduled",
        "sink",
        "src",
        "unread",
    )

    def __init__(self, net: Network, name: str, src: Endpoint, dst: Endpoint, sink: Sink, lossy: bool) -> None:
        self.net = net
        self.name = name
        self.src = src
        self.dst = dst
        self.sink = sink
        self.lossy = lossy
        self.reverse: Link = self
        self.queue: deque[tuple[float, float, Message]] = deque()  # (arrives at, sent at, message)
        self.scheduled = False
        self.last_at = 0.0
        self.closed = False  # the sender's socket is gone: nothing more is sent
        self.discard = False  # the receiver's socket is gone: nothing more is delivered
        self.unread = 0  # delivered but not yet taken by the receiver (for the master's high-water mark)

    def send(self, message: Message, now: float) -> None:
        """Queue ``message``, sent at ``now`` (which may be later than the clock during a long pass)."""
        if self.closed or not self.src.alive:
            return
        net = self.net
        rng = net.rng
        delay = net.latency()
        if net.flaky:
            delay += net.retransmissions(self, now)
        if self.lossy:
            roll = rng.random()
            if roll < net.params.lossy_drop:
                net.note(now, self, message, "lost")
                return
            if roll < net.params.lossy_drop + net.params.lossy_delay:
                delay += rng.uniform(0.2, 1.2)
        if net.params.codec_rate and rng.random() < net.params.codec_rate:
            message = decode(encode(message))
            net.encoded += 1
        at = now + delay
        at = max(at, self.last_at)
        self.last_at = at
        self.queue.append((at, now, message))
        net.sent += 1
        if not self.scheduled and len(self.queue) == 1:
            self.scheduled = True
            net.clock.at(at, _arrive, self)

    def backlog(self) -> int:
        """Messages sent on this link that the receiver has not taken yet."""
        return len(self.queue) + self.unread

    def close(self) -> None:
        """The sender closed its socket with linger 0: a random prefix of what is queued still gets out."""
        self.closed = True
        if self.queue:
            keep = self.net.rng.randrange(len(self.queue) + 1)
            while len(self.queue) > keep:
                self.queue.pop()
        self.reverse.closed = True
        self.reverse.discard = True
        self.reverse.queue.clear()

    def truncate_after(self, since: float) -> None:
        """Forget what was sent after ``since``: it never left a process that died."""
        while self.queue and self.queue[-1][1] > since:
            self.queue.pop()

    def hold_after(self, since: float, until: float) -> None:
        """What was sent after ``since`` leaves only at ``until``: the sender was stopped before writing it out."""
        queue = self.queue
        index = len(queue)
        while index and queue[index - 1][1] > since:
            index -= 1
        for i in range(index, len(queue)):
            at, sent, message = queue[i]
            if at < until:
                queue[i] = (until + self.net.latency(), sent, message)
                until = queue[i][0]
            self.last_at = max(self.last_at, queue[i][0])


def _arrive(link: Link) -> None:
    """The message at the head of ``link`` arrives, unless the link is cut or its receiver is gone."""
    link.scheduled = False
    net = link.net
    queue = link.queue
    if not queue:
        return
    if link.discard:
        queue.clear()
        return
    if net.cuts and (link.src.pid, link.dst.pid) in net.cuts:
        net.held.setdefault((link.src.pid, link.dst.pid), []).append(link)
        return
    now = net.clock.now
    if queue[0][0] > now:  # held back since it was scheduled (its sender was stopped)
        link.scheduled = True
        net.clock.at(queue[0][0], _arrive, link)
        return
    _, _, message = queue.popleft()
    if link.dst.alive:
        net.delivered += 1
        if net.observer is not None:
            net.observer(now, link, message, "")
        link.sink(link, message)
    else:
        net.note(now, link, message, "lost: receiver dead")
    if queue and not link.scheduled:
        link.scheduled = True
        at = queue[0][0]
        net.clock.at(at if at > now else now, _arrive, link)


class Network:
    """Every link of the run, the cuts in force, and the one random stream that draws latencies and losses."""

    def __init__(self, clock: Clock, rng: random.Random, params: NetParams) -> None:
        self.clock = clock
        self.rng = rng
        self.params = params
        self.cuts: dict[tuple[int, int], int] = {}  # (src pid, dst pid) -> how many faults cut it
        self.held: dict[tuple[int, int], list[Link]] = {}
        self.flaky: dict[int, tuple[float, float]] = {}  # pid -> (the share of its packets lost, until when)
        self.observer: Observer | None = None
        self.sent = 0
        self.delivered = 0
        self.encoded = 0
        self.dropped_to_master = 0
        self._spike = params.spike_rate

    def latency(self) -> float:
        roll = self.rng.random()
        if roll < self._spike:
            return 0.002 + 0.048 * (roll / self._spike)
        base = (roll - self._spike) / (1.0 - self._spike)
        return 0.0001 + 0.0019 * base * base * base

    def retransmissions(self, link: Link, now: float) -> float:
        """The time a message sent on ``link`` at ``now`` loses to TCP retransmissions while either end is flaky.

        Each try is lost with the flaky end's chance until the flakiness is over; the next one then gets through.
        """
        loss, until = max(self.flaky.get(link.src.pid, (0.0, 0.0)), self.flaky.get(link.dst.pid, (0.0, 0.0)))
        late, timeout = 0.0, RTO_MIN
        while now + late < until and self.rng.random() < loss:
            late += timeout
            timeout *= 2
        return late

    def connect(self, src: Endpoint, dst: Endpoint, name: str, forward: Sink, back: Sink, lossy: bool = False) -> Link:
        """A new connection from ``src`` to ``dst``; returns its forward link (``.reverse`` carries answers)."""
        there = Link(self, name, src, dst, forward, lossy)
        here = Link(self, f"{name}<", dst, src, back, lossy)
        there.reverse, here.reverse = here, there
        src.links_out.append(there)
        dst.links_out.append(here)
        return there

    def note(self, now: float, link: Link, message: Message, what: str) -> None:
        if self.observer is not None:
            self.observer(now, link, message, what)

    def cut(self, src: int, dst: int) -> None:
        """Stop delivering from process ``src`` to ``dst``; messages wait on their links."""
        self.cuts[(src, dst)] = self.cuts.get((src, dst), 0) + 1

    def heal(self, src: int, dst: int) -> None:
        """Undo one ``cut``; once none is left, the held links deliver again, in order."""
        count = self.cuts.get((src, dst), 0) - 1
        if count > 0:
            self.cuts[(src, dst)] = count
            return
        self.cuts.pop((src, dst), None)
        now = self.clock.now
        for link in self.held.pop((src, dst), []):
            if link.queue and not link.scheduled:
                link.scheduled = True
                at = max(link.queue[0][0], now + self.latency())
                self.clock.at(at, _arrive, link)

    def kill(self, process: Endpoint, now: float) -> None:
        """``process`` died at ``now``: what each socket sent in its last moments is lost; nothing reaches it."""
        process.alive = False
        for link in process.links_out:
            link.truncate_after(now - self.rng.uniform(0.0, SEND_BUFFER_WINDOW))

    def stop(self, process: Endpoint, now: float, until: float) -> None:
        """``process`` is stopped from ``now`` to ``until``: its latest sends wait in its own queues meanwhile."""
        for link in process.links_out:
            link.hold_after(now - self.rng.uniform(0.0, SEND_BUFFER_WINDOW), until)
