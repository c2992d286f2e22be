"""The simulated network keeps TCP's promises: per-link FIFO, nothing lost on a live connection, cuts hold."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from kvcluster.core.protocol import Commit, Message
from kvcluster.sim.clock import Clock
from kvcluster.sim.network import RTO_MIN, Link, NetParams, Network


@dataclass
class End:
    pid: int
    name: str
    alive: bool = True
    links_out: list[Link] = field(default_factory=list)


STEP = st.tuples(st.sampled_from(["send", "send", "send", "cut", "heal", "stop"]), st.booleans(), st.floats(0, 0.01))


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(STEP, max_size=80), seed=st.integers(0, 2**32), codec=st.booleans())
def test_links_deliver_everything_in_order_and_hold_while_cut(
    steps: list[tuple[str, bool, float]], seed: int, codec: bool
) -> None:
    clock = Clock()
    net = Network(clock, random.Random(seed), NetParams(spike_rate=0.2, codec_rate=0.5 if codec else 0.0))
    a, b = End(1, "a"), End(2, "b")
    received: dict[str, list[int]] = {"a>b": [], "a>b<": []}
    cut_now: dict[tuple[int, int], bool] = {}
    violations: list[str] = []

    def sink(link: Link, message: Message) -> None:
        assert isinstance(message, Commit)
        if cut_now.get((link.src.pid, link.dst.pid)):
            violations.append(f"{link.name} delivered {message.committed} while cut")
        received[link.name].append(message.committed)

    forward = net.connect(a, b, "a>b", sink, sink)
    links = {True: forward, False: forward.reverse}
    sent: dict[str, list[int]] = {"a>b": [], "a>b<": []}
    at = 0.0
    for kind, which, gap in steps:
        at += gap
        clock.run(at, 1_000_000)
        clock.now = max(clock.now, at)
        link = links[which]
        pair = (link.src.pid, link.dst.pid)
        if kind == "send":
            sent[link.name].append(len(sent[link.name]))
            link.send(Commit(link.src.pid, sent[link.name][-1]), clock.now)
        elif kind == "cut" and not cut_now.get(pair):
            cut_now[pair] = True
            net.cut(*pair)
        elif kind == "heal" and cut_now.get(pair):
            cut_now[pair] = False
            net.heal(*pair)
        elif kind == "stop":
            net.stop(link.src, clock.now, clock.now + gap)
    for pair, is_cut in list(cut_now.items()):
        if is_cut:
            clock.run(clock.now, 1_000_000)
            cut_now[pair] = False
            net.heal(*pair)
    clock.run(float("inf"), 1_000_000)
    assert not violations
    assert received == sent


def test_a_killed_sender_loses_at_most_its_last_millisecond_and_a_dead_receiver_gets_nothing() -> None:
    clock = Clock()
    net = Network(clock, random.Random(1), NetParams())
    a, b = End(1, "a"), End(2, "b")
    got: list[int] = []
    link = net.connect(a, b, "a>b", lambda _link, m: got.append(m.committed if isinstance(m, Commit) else -1), print)
    for i in range(10):
        link.send(Commit(1, i), i * 0.001)
    clock.now = 0.0095
    net.kill(a, 0.0095)
    clock.run(1.0, 1000)
    assert got == list(range(len(got)))
    assert len(got) >= 9
    b.alive = False
    a.alive = True
    link.send(Commit(1, 99), clock.now)
    clock.run(2.0, 1000)
    assert 99 not in got


def test_a_flaky_end_delays_messages_by_retransmissions_and_loses_none() -> None:
    clock = Clock()
    net = Network(clock, random.Random(7), NetParams(spike_rate=0.0))
    a, b = End(1, "a"), End(2, "b")
    arrivals: list[tuple[float, int]] = []
    forward = net.connect(a, b, "a>b", lambda _link, m: arrivals.append((clock.now, m.committed)), lambda *_: None)  # type: ignore[attr-defined]
    net.flaky[b.pid] = (0.5, 1.5)  # flaky for the first 150 of 200 messages
    for n in range(200):
        forward.send(Commit(1, n), n * 0.01)
    clock.run(float("inf"), 1_000_000)
    assert [n for _, n in arrivals] == list(range(200))
    late = [t - n * 0.01 for t, n in arrivals]
    assert sum(delay >= RTO_MIN for delay in late) > 50  # about half lost a packet at least once
    assert max(late) < 2 * 1.5 + RTO_MIN  # a try after the flakiness is over gets through
