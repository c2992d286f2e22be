"""The sockets to the master group: one DEALER per master, CURVE handshake watching, and a blocking ask.

``--master`` takes one address or a comma-separated list of every master in
the group. Which master to ask, and when to move on to the next, is decided
by ``core.client_masters.LeaderSeeker``; ``MasterLink.ask`` drives it for
callers that want one answer and may block for it (joining nodes, status).
The client's own table fetches drive the seeker inside ``ClientCore``, over
these same sockets. ``survey`` and ``roll_call`` ask every master at once.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import zmq

from kvcluster.addresses import parse_addresses
from kvcluster.core.client_masters import TRY_TIMEOUT, AskMaster, LeaderSeeker
from kvcluster.core.protocol import Message, NotLeader, NotReady, StatusReport, StatusRequest, decode, encode
from kvcluster.errors import ClusterUnavailable, KeyRefused, ProtocolError

if TYPE_CHECKING:
    from kvcluster.curve import Curve, Handshakes


def monitor_event(frames: list[bytes]) -> int:
    """The event number of a socket monitor message: the first 16 bits of its first frame.

    Parsed here because ``zmq.utils.monitor`` imports asyncio, which a put or get does not need.
    """
    return int.from_bytes(frames[0][:2], "little")


class MasterLink:
    """Sockets to every master of one cluster; used by one thread at a time."""

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
        self.seeker = LeaderSeeker(len(self.sockets))

    def check_handshakes(self, final: bool) -> None:
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

    def send(self, ask: AskMaster) -> None:
        # A full queue means this master is not reading: the seeker passes it over when it stays silent.
        with contextlib.suppress(zmq.Again):
            self.sockets[ask.member].send(encode(ask.message), zmq.NOBLOCK)

    def receive(self, index: int) -> list[Message]:
        """Every message waiting on master ``index``'s socket; garbled frames are left out (they time out)."""
        messages: list[Message] = []
        sock = self.sockets[index]
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return messages
            with contextlib.suppress(ProtocolError):
                messages.append(decode(frame))

    def ask(self, message: Message, wanted: type[Message], until: float) -> Message:
        """Send ``message`` to the leader and return its ``wanted`` (or ``NotReady``) answer by ``until``."""
        seeker = self.seeker
        self.send(seeker.ask(time.monotonic(), message))
        poller = zmq.Poller()
        for sock in self.sockets:
            poller.register(sock, zmq.POLLIN)
        try:
            while True:
                now = time.monotonic()
                self.check_handshakes(final=now >= until)
                if now >= until:
                    raise ClusterUnavailable(self.address, self.deadline)
                wake = min(until, seeker.next_wake())
                if self.monitors:
                    wake = min(wake, now + TRY_TIMEOUT)  # look at the handshakes now and then: a refusal ends the wait
                for sock, _ in poller.poll(max(0, int((wake - now) * 1000)) + 1):
                    index = self.sockets.index(sock)
                    for reply in self.receive(index):
                        if not isinstance(reply, wanted | NotReady | NotLeader):
                            continue  # a late answer to an earlier question
                        answer, again = seeker.on_answer(time.monotonic(), index, reply)
                        if again is not None:
                            self.send(again)
                        if answer is not None:
                            return answer
                again = seeker.on_timer(time.monotonic())
                if again is not None:
                    self.send(again)
        finally:
            seeker.cancel()


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
