"""How a client reaches the acting master: a socket per master, a guess at the leader, and redirects.

``--master`` takes one address or a comma-separated list of every master in
the group. A question goes to the master believed to lead; a ``NOT_LEADER``
answer names the one that does (or, mid-election, none, and the next is
tried after a short pause), and a master that stays silent for ``TRY_TIMEOUT``
is passed over for the next. The whole question has the caller's deadline.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import zmq

from kvcluster.addresses import parse_addresses
from kvcluster.core.protocol import Message, NotLeader, NotReady, StatusReport, StatusRequest, decode, encode
from kvcluster.errors import ClusterUnavailable, KeyRefused

if TYPE_CHECKING:
    from kvcluster.curve import Curve, Handshakes

TRY_TIMEOUT = 0.25  # seconds one master of a group gets to answer before the next is asked: a dead one costs this
ELECTION_PAUSE = 0.05  # seconds between questions while no master knows the leader


def monitor_event(frames: list[bytes]) -> int:
    """The event number of a socket monitor message: the first 16 bits of its first frame.

    Parsed here because ``zmq.utils.monitor`` imports asyncio, which a put or get does not need.
    """
    return int.from_bytes(frames[0][:2], "little")


class MasterLink:
    """Sockets to every master of one cluster; not thread-safe, like the client that owns it."""

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], addresses: str, deadline: float, curve: Curve | None = None
    ) -> None:
        self.address = addresses
        self.endpoints = parse_addresses(addresses)
        self.deadline = deadline
        self.sockets: list[zmq.Socket[bytes]] = []
        # With CURVE, a monitor per socket tells a refused key from a master that is down.
        self.monitors: list[tuple[zmq.Socket[bytes], Handshakes]] = []
        for index, endpoint in enumerate(self.endpoints):
            sock = ctx.socket(zmq.DEALER)
            if curve is not None:
                from kvcluster.curve import HANDSHAKE_EVENTS, Handshakes  # noqa: PLC0415

                curve.connect_to(sock, curve.masters[index])
                self.monitors.append((sock.get_monitor_socket(HANDSHAKE_EVENTS), Handshakes()))
            sock.connect(endpoint)
            self.sockets.append(sock)
        self.current = 0  # the master believed to lead

    def _check_handshakes(self, final: bool) -> None:
        """Raise ``KeyRefused`` once every master refused our key, or at the deadline if none ever let us in."""
        if not self.monitors:
            return
        for monitor, seen in self.monitors:
            while monitor.poll(0):
                seen.note(monitor_event(monitor.recv_multipart(zmq.NOBLOCK)))
        if any(seen.succeeded for _, seen in self.monitors):
            return
        if all(seen.refused for _, seen in self.monitors) or (final and any(s.shut_out() for _, s in self.monitors)):
            raise KeyRefused

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
        for monitor, _ in self.monitors:
            monitor.close(linger=0)

    @property
    def key(self) -> str:
        """The masters, as the table cache records them."""
        return ",".join(self.endpoints)

    def ask(self, message: Message, wanted: type[Message], until: float) -> Message:
        """Send ``message`` to the leader and return its ``wanted`` (or ``NotReady``) answer by ``until``."""
        while True:
            remaining = until - time.monotonic()
            self._check_handshakes(final=remaining <= 0)
            if remaining <= 0:
                raise ClusterUnavailable(self.address, self.deadline)
            wait = remaining if len(self.sockets) == 1 else min(remaining, TRY_TIMEOUT)
            if self.monitors:
                wait = min(wait, TRY_TIMEOUT)  # look at the handshakes now and then: a refusal ends the wait
            reply = self._ask_one(self.sockets[self.current], message, wanted, time.monotonic() + wait)
            if isinstance(reply, NotLeader) and reply.leader:
                self.current = reply.leader - 1
            elif reply is None or isinstance(reply, NotLeader):
                if isinstance(reply, NotLeader):
                    time.sleep(min(ELECTION_PAUSE, max(0.0, until - time.monotonic())))
                self.current = (self.current + 1) % len(self.sockets)
            else:
                return reply

    def _ask_one(
        self, sock: zmq.Socket[bytes], message: Message, wanted: type[Message], until: float
    ) -> Message | None:
        try:
            sock.send(encode(message), zmq.NOBLOCK)
        except zmq.Again:
            return None  # requests pile up unanswered: this master is gone
        while True:
            remaining = until - time.monotonic()
            if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1):
                return None
            reply = decode(sock.recv())
            if isinstance(reply, wanted | NotReady | NotLeader):
                return reply
            # A late answer to an earlier question: skip it.


def survey(
    ctx: zmq.Context[zmq.Socket[bytes]],
    endpoints: list[str],
    question: Message,
    timeout: float,
    curve: Curve | None = None,
) -> list[Message | None]:
    """Ask every master ``question`` at once; each answer, or ``None`` for one silent for ``timeout`` seconds."""
    sockets = []
    poller = zmq.Poller()
    for index, endpoint in enumerate(endpoints):
        sock = ctx.socket(zmq.DEALER)
        if curve is not None:
            curve.connect_to(sock, curve.masters[index])
        sock.connect(endpoint)
        sock.send(encode(question), zmq.NOBLOCK)
        poller.register(sock, zmq.POLLIN)
        sockets.append(sock)
    answers: list[Message | None] = [None] * len(sockets)
    until = time.monotonic() + timeout
    while any(a is None for a in answers) and (remaining := until - time.monotonic()) > 0:
        for sock, _ in poller.poll(int(remaining * 1000) + 1):
            answers[sockets.index(sock)] = decode(sock.recv())
    for sock in sockets:
        sock.close(linger=0)
    return answers


def roll_call(
    endpoints: list[str], timeout: float, curve: Curve | None = None
) -> tuple[list[tuple[str, int | None]], StatusReport | None]:
    """Each master's (role, term) as it answers for itself, and the leader's report, if one answered.

    A role is ``leader``, ``follower``, ``no leader`` (a member mid-election) or ``not answering``
    (term None).
    """
    ctx = zmq.Context()
    try:
        answers = survey(ctx, endpoints, StatusRequest(), timeout, curve)
    finally:
        ctx.destroy(linger=0)
    found: list[tuple[str, int | None]] = []
    report = None
    for answer in answers:
        if isinstance(answer, StatusReport):
            found.append(("leader", answer.term))
            report = answer
        elif isinstance(answer, NotLeader):
            found.append(("follower" if answer.leader else "no leader", answer.term))
        else:
            found.append(("not answering", None))
    return found, report


def roles(endpoints: list[str], timeout: float) -> list[tuple[str, int | None]]:
    """Each master's (role, term), as ``roll_call`` gives them."""
    return roll_call(endpoints, timeout)[0]


def await_leader(endpoints: list[str], newer_than: int, until: float, poll: float = 0.02) -> tuple[int, int] | None:
    """The 0-based index and term of a master leading a term after ``newer_than``, or None by ``until``."""
    while time.monotonic() < until:
        for index, (role, term) in enumerate(roles(endpoints, poll * 5)):
            if role == "leader" and term is not None and term > newer_than:
                return index, term
        time.sleep(poll)
    return None
