"""Which master a client asks, sans I/O: the guess at the leader, its redirects, and rotation past silent members.

A question goes to the master believed to lead. A ``NOT_LEADER`` answer
names the one that does, which is asked at once; mid-election it names
none, and the next master is asked after ``ELECTION_PAUSE``. A master that
stays silent for ``TRY_TIMEOUT`` is passed over for the next one. A
``NOT_READY`` answer (the cluster is starting) is asked again after
``NOT_READY_PAUSE``. The seeker never sleeps: it says when it wants to be
woken (``next_wake``), and its driver calls ``on_timer`` then.
"""

from __future__ import annotations

import math

from msgspec import Struct

from kvcluster.core.protocol import Message, NotLeader, NotReady

TRY_TIMEOUT = 0.25  # seconds one master of a group gets to answer before the next is asked: a dead one costs this
ELECTION_PAUSE = 0.05  # seconds between questions while no master knows the leader
NOT_READY_PAUSE = 0.05  # seconds between questions while the cluster is starting


class AskMaster(Struct, frozen=True):
    """Send ``message`` to master number ``member`` (0-based, in the order the client was given them)."""

    member: int
    message: Message


class LeaderSeeker:
    """One question at a time to the master group; remembers the leader between questions."""

    def __init__(self, count: int) -> None:
        self.count = max(1, count)
        self.current = 0  # the master believed to lead
        self.question: Message | None = None
        self.answer_by = math.inf  # when the master asked is passed over
        self.ask_again_at = math.inf  # when the question goes out again after a pause

    def ask(self, now: float, message: Message) -> AskMaster:
        """Start asking ``message`` (replacing any question still open); send the returned action."""
        self.question = message
        return self._send(now)

    def cancel(self) -> None:
        """Stop asking: nobody waits for the answer any more."""
        self.question = None
        self.answer_by = self.ask_again_at = math.inf

    def next_wake(self) -> float:
        return min(self.answer_by, self.ask_again_at) if self.question is not None else math.inf

    def on_answer(self, now: float, index: int, message: Message) -> tuple[Message | None, AskMaster | None]:
        """An answer from master ``index``: the answer to hand on (None for a redirect), and what to send next."""
        if isinstance(message, NotLeader):
            return None, self._redirect(now, index, message)
        if isinstance(message, NotReady):
            if self.question is not None:
                self.answer_by, self.ask_again_at = math.inf, now + NOT_READY_PAUSE
            return message, None
        self.current = index  # whoever answers a question leads, or did a moment ago
        self.cancel()
        return message, None

    def _redirect(self, now: float, index: int, message: NotLeader) -> AskMaster | None:
        if self.question is None or index != self.current:
            return None  # a late answer from a master passed over already
        named = message.leader - 1
        if message.leader and named != index and named < self.count:
            self.current = named
            return self._send(now)
        # Mid-election nobody knows the leader: try the next member after a pause rather than spin.
        self.current = (self.current + 1) % self.count
        self.answer_by, self.ask_again_at = math.inf, now + ELECTION_PAUSE
        return None

    def on_timer(self, now: float) -> AskMaster | None:
        """The question to send now, if a pause ended or the master asked stayed silent too long."""
        if self.question is None:
            return None
        if now >= self.ask_again_at:
            return self._send(now)
        if now >= self.answer_by:
            self.current = (self.current + 1) % self.count
            return self._send(now)
        return None

    def _send(self, now: float) -> AskMaster:
        assert self.question is not None
        self.answer_by, self.ask_again_at = now + TRY_TIMEOUT, math.inf
        return AskMaster(self.current, self.question)
