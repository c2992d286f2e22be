"""The master process: ``MasterCore`` driven over one ZeroMQ ROUTER socket with the real clock.

Alone (``--masters 1``) it acts from the start. As a member of a group it
also ticks its Raft member (``runtime/raft_log.py``) every pass: the core acts
only while this member leads, from the state the group committed, and every
table it makes waits in the log until committed before it reaches a node.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import msgspec
import zmq

from kvcluster.core.actions import Answer, Propose
from kvcluster.core.group_state import MasterState, decode_state, encode_state, takeover_grace
from kvcluster.core.liveness import OUT_OF_TOUCH_FACTOR
from kvcluster.core.master import TICK, MasterCore
from kvcluster.core.protocol import StatusReport, Timing, decode, encode
from kvcluster.curve import Curve, start_authenticator
from kvcluster.errors import AddressUnusable, ProtocolError
from kvcluster.runtime.raft_log import MasterGroup, Role
from kvcluster.runtime.ratelimit import RejectionLog, peer_name

log = logging.getLogger(__name__)

GROUP_POLL = 0.02  # seconds a group member waits at most, for Raft's timers; a message on either side ends it
HAND_OVER_RETRY = 1.0  # seconds between asks to hand the lead over: an election takes a fraction of that


@dataclass(frozen=True, slots=True)
class Membership:
    """Where this master sits in its group: its id (1-based), every member's Raft address, and the shared files."""

    member_id: int
    addresses: list[str]
    secret: str
    journal: Path


class MasterProcess:
    """Runs one ``MasterCore`` until SIGTERM."""

    def __init__(
        self,
        nodes: int,
        rep: int,
        bind: str,
        timing: Timing,
        membership: Membership | None,
        curve: Curve | None = None,
    ) -> None:
        self.ctx = zmq.Context()
        self.ctx.linger = 0
        self.router = self.ctx.socket(zmq.ROUTER)
        member_id = membership.member_id if membership else 1
        self.auth = None
        if curve is not None:
            curve.serve(self.router)
            self.auth = start_authenticator(self.ctx, curve, f"master{member_id}")
        host, _, port = bind.rpartition(":")
        try:
            if port == "0":
                chosen = self.router.bind_to_random_port(f"tcp://{host}")
            else:
                self.router.bind(f"tcp://{bind}")
                chosen = int(port)
        except zmq.ZMQError as exc:
            self._close()
            raise AddressUnusable(f"master{member_id} cannot listen on {bind}: {os.strerror(exc.errno or 0)}") from None
        self.endpoint = f"tcp://{'127.0.0.1' if host in ('0.0.0.0', '*') else host}:{chosen}"  # noqa: S104 - matching, not binding
        self.core = MasterCore(nodes, rep, timing, os.getpid(), master_id=member_id, replicated=membership is not None)
        self.group = (
            MasterGroup(member_id, membership.addresses, membership.secret, membership.journal) if membership else None
        )
        if self.group is not None:
            self.group.wake_on(cast(int, self.router.getsockopt(zmq.FD)))
        self.rejections = RejectionLog(log, f"master{member_id}")
        self.role = Role(leading=False, term=0, leader=0)
        self.electing = False  # this member won; its barrier is not applied yet
        self.won_at = 0.0
        self.next_hand_over = 0.0
        self.stopping = False

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        log.info("master for %d nodes x %d replicas on %s", self.core.expected, self.core.rep, self.endpoint)
        try:
            while not self.stopping:
                if self.group is None:
                    self.router.poll(int(TICK * 1000))
                else:
                    self._wait_for_either(self.group)
                    # Before any heartbeat is read: a member that lost its majority must not grant a lease.
                    self._follow_group(self.group)
                self._drain()
                self.rejections.flush(time.monotonic())
                self.core.tick(time.monotonic())
                if self.group is not None:
                    self._hand_over_if_out_of_touch(self.group, time.monotonic())
                self._act()
        finally:
            if self.group is not None:
                self.group.close()
            self._close()
            log.info("master stopped")

    def _close(self) -> None:
        if self.auth is not None:
            self.auth.stop()  # its thread holds a socket of the context
        self.ctx.destroy(linger=0)

    def _stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def _wait_for_either(self, group: MasterGroup) -> None:
        """One wait for the group's sockets and this master's, so neither side's message waits for the other's poll.

        The ZeroMQ socket's FD only signals that its events may have changed (edge-triggered): it is
        armed again by reading ``EVENTS``, and a message left unread by the last pass is not waited for.
        """
        if not cast(int, self.router.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            group.wait(GROUP_POLL)

    def _follow_group(self, group: MasterGroup) -> None:
        group.tick()
        role = group.role()
        if role.leading and not self.core.acting and not self.electing:
            self.electing, self.won_at = True, time.monotonic()
            group.barrier(lambda ok: self._on_barrier(group, role.term, ok))
        elif not role.leading and (self.core.acting or role != self.role):
            self.electing = False
            self.core.follow(role.term, role.leader)
        if (role.term, role.leader) != (self.role.term, self.role.leader):
            leader = f"master{role.leader}" if role.leader else "no leader yet"
            log.info("master group: term %d, %s", role.term, leader)
        self.role = role
        self._act()

    def _hand_over_if_out_of_touch(self, group: MasterGroup, now: float) -> None:
        """Leading but hearing no storage node: let a member that may still reach them lead instead."""
        if now < self.next_hand_over or not self.core.out_of_touch(now):
            return
        self.next_hand_over = now + HAND_OVER_RETRY
        silence = OUT_OF_TOUCH_FACTOR * self.core.timing.dead_after
        log.warning("leading, but no storage node has been heard for %.1f s: handing the lead over", silence)
        group.hand_over()

    def _on_barrier(self, group: MasterGroup, term: int, ok: bool) -> None:
        self.electing = False
        role = group.role()
        if not ok or not role.leading or role.term != term:
            return  # lost it again before taking over; the next pass sees the new role
        blob = group.state()
        state = decode_state(blob) if blob else None
        self.core.lead(time.monotonic(), term, state, takeover_grace(self.core.timing))
        took = (time.monotonic() - self.won_at) * 1000
        log.info("took over as leader of term %d in %.0f ms after winning", term, took)

    def _on_commit(self, state: MasterState, ok: bool) -> None:
        if ok:
            self.core.on_committed(state)
        else:
            self.core.on_commit_failed()

    def _drain(self) -> None:
        while True:
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self.core.on_message(time.monotonic(), tuple(frames[:-1]), decode(frames[-1]))
            except ProtocolError as exc:
                self.rejections.reject(time.monotonic(), peer_name(frames[0]), exc)
            self._act()

    def _act(self) -> None:
        for action in self.core.take():
            if isinstance(action, Propose):
                assert self.group is not None
                blob = encode_state(action.state)
                self.group.append(blob, self.core.term, functools.partial(self._on_commit, action.state))
                continue
            assert isinstance(action, Answer)
            assert isinstance(action.route, tuple)
            message = action.message
            if isinstance(message, StatusReport) and self.group is not None:
                message = msgspec.structs.replace(message, raft=self.group.report())
            self.router.send_multipart([*action.route, encode(message)])


def serve(
    nodes: int,
    rep: int,
    bind: str,
    timing: Timing,
    membership: Membership | None = None,
    curve: Curve | None = None,
) -> None:
    """Run the master in this process; announce its endpoint on stdout once bound."""
    master = MasterProcess(nodes, rep, bind, timing, membership, curve)
    sys.stdout.write(f"READY {master.endpoint}\n")
    sys.stdout.flush()
    master.run()
