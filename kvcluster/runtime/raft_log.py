"""The master group's log: a pysyncobj (Raft) member ticked from the master's own loop, and the role it gives.

pysyncobj 0.3.17 keeps the log, elects the leader and persists the term and
the vote (in ``<journal>.meta``, written before any vote is sent) next to its
journal, so a member restarted under its old id cannot vote twice in one
term. What this module adds to it:

- **One thread.** ``autoTick`` is off: the master's loop calls ``tick`` between
  its ZeroMQ polls, so the log, the ``MasterCore`` and the sockets are only
  ever touched by one thread.
- **A leader that stays a leader only while a majority answers.** pysyncobj
  steps a leader down once it has heard from no majority for
  ``leaderFallbackTimeout``; its default of 30 s would let a deposed leader
  grant leases for that long, so it is ``FALLBACK`` here, and the new leader
  waits it out (``core/group_state.py``).
- **Pickle only from members.** pysyncobj's transport unpickles what it
  receives. Members bind to loopback, and every frame is encrypted and
  authenticated with the cluster's secret (Fernet, the library's ``password``
  option) before it is unpickled, so a stranger's bytes are dropped unread.
- **Handing the lead over.** A leader that hears no storage node, while the
  nodes exist, asks a member chosen at random to stand at once (the library's
  leadership transfer, Raft's ``TimeoutNow``): that member most likely still
  reaches them, and a random choice cannot bounce the lead between two
  members that both lost the nodes.
- **A barrier on election.** A new leader may not have applied every entry
  committed before it won; it appends a no-op and reads the state only once
  that is applied, which implies all earlier ones are.
- **An election at once when the leader's process is gone.** When a process
  exits, the kernel closes its connections; a follower whose connection to
  the leader drops stands for election then instead of after its election
  timeout. Only the first follower in member order does, so that two
  candidates never split the vote; the others vote for it, and stand after
  their own timeout only if it does not win (it died too, or lags the log).
  Raft's safety never rests on timeouts, so an early election is always
  safe; a drop without a death (the leader closing a connection it found
  broken) costs one needless election, as a timeout would. A paused or
  partitioned leader closes nothing, and is waited out as before.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.monotonic import monotonic as raft_clock
from pysyncobj.poller import POLL_EVENT_TYPE

from kvcluster.core.group_state import ELECTION_TIMEOUT, FALLBACK
from kvcluster.core.wire import RaftMember, RaftReport

log = logging.getLogger(__name__)

RAFT_PERIOD = 0.05  # seconds between a leader's appends when it has nothing new (heartbeats of the group)
REJOIN_QUIET = 2.0  # seconds a restarted member only listens: it hears the leader long before
BIND_TRIES = 5  # a second apart; the library spins in its constructor until bound, so fail instead of hanging
SOCKET_BUFFER = 1 << 20  # bytes: an entry carries a whole table (tens of KB); it should leave in one write
COMPACT_AFTER = 200  # entries: each holds a whole state, so only the newest matters


class _Log(SyncObj):  # type: ignore[misc]  # pysyncobj has no type hints
    """The replicated state: the newest ``MasterState`` blob appended."""

    def __init__(self, self_address: str, partners: list[str], conf: SyncObjConf) -> None:
        super().__init__(self_address, partners, conf)
        self.state = b""  # set after SyncObj.__init__, so pysyncobj snapshots it with the log
        self.term = 0  # of the leader that proposed ``state``

    @replicated  # type: ignore[untyped-decorator]
    def append(self, blob: bytes, term: int) -> None:
        # A deposed leader's queued proposal is forwarded to the new leader by pysyncobj and may commit after the
        # new leader's own entries: an older term never replaces a newer one, the same on every member.
        if term >= self.term:
            self.state, self.term = blob, term

    @replicated  # type: ignore[untyped-decorator]
    def barrier(self) -> None:
        """Nothing: once applied, every entry before it is applied too."""


def _nothing(_fd: int, _event: int) -> None:
    """A ``wake_on`` fd only ends the wait; its owner reads it."""


@dataclass(frozen=True, slots=True)
class Role:
    """What this member is in the group: the leader's id is 1-based, 0 when none is known."""

    leading: bool
    term: int
    leader: int


class MasterGroup:
    """One member of the group, at ``addresses[member_id - 1]``."""

    def __init__(self, member_id: int, addresses: list[str], secret: str, journal: Path) -> None:
        self.addresses = addresses
        conf = SyncObjConf(
            autoTick=False,
            password=secret,
            journalFile=str(journal),
            fullDumpFile=str(journal.with_suffix(".dump")),
            appendEntriesPeriod=RAFT_PERIOD,
            raftMinTimeout=ELECTION_TIMEOUT[0],
            raftMaxTimeout=ELECTION_TIMEOUT[1],
            leaderFallbackTimeout=FALLBACK,
            sendBufferSize=SOCKET_BUFFER,
            recvBufferSize=SOCKET_BUFFER,
            logCompactionMinEntries=COMPACT_AFTER,
            commandsWaitLeader=False,
            # The group's log takes a few entries a minute, each a table that a failover waits for: send each at
            # once instead of with the next periodic append (up to RAFT_PERIOD later).
            appendEntriesUseBatch=False,
            maxBindRetries=BIND_TRIES,
            connectionRetryTime=0.2,  # a restarted member hears the leader before its election timer runs out
        )
        self.me = addresses[member_id - 1]
        rejoining = journal.exists()
        self.log = _Log(self.me, [a for a in addresses if a != self.me], conf)
        self.leader_link: tuple[str, bool] | None = None  # the followed leader's address, and whether connected
        if rejoining:
            self._hold_back_election()

    def _hold_back_election(self) -> None:
        """A restarted member waits ``REJOIN_QUIET`` before it may stand for election.

        pysyncobj has no pre-vote: a member that times out before it has heard
        the current leader stands in a higher term, and every other member
        follows that term, deposing a healthy leader. The library offers no
        setting for its first deadline, hence the name-mangled attribute.
        """
        self.log._SyncObj__raftElectionDeadline = raft_clock() + REJOIN_QUIET

    def tick(self) -> None:
        """Exchange messages with the other members and apply what is committed; never blocks."""
        self.log.doTick(0.0)
        self._watch_leader()

    def _watch_leader(self) -> None:
        """Stand for election soon after the connection to the leader drops (see the module's docstring)."""
        leader = None if self.log._isLeader() else self.log._getLeader()
        if leader is None:
            self.leader_link = None
            return
        connected = bool(self.log.isNodeConnected(leader))
        if self.leader_link == (leader.address, True) and not connected:
            first = next(a for a in self.addresses if a != leader.address)
            if first == self.me:
                self.log._SyncObj__raftElectionDeadline = raft_clock()
                log.info("master group: lost the connection to leader %s; standing now", leader.address)
        self.leader_link = (leader.address, connected)

    def wake_on(self, fd: int) -> None:
        """Let ``wait`` end as soon as ``fd`` is readable too (the master's ZeroMQ socket: one wait for both)."""
        self.log._poller.subscribe(fd, _nothing, POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)

    def wait(self, timeout: float) -> None:
        """Wait at most ``timeout`` seconds for a message of the group (handled as it is read) or a ``wake_on`` fd."""
        self.log._poller.poll(timeout)

    def role(self) -> Role:
        leader = self.log._getLeader()
        address = None if leader is None else leader.address
        leader_id = self.addresses.index(address) + 1 if address in self.addresses else 0
        return Role(bool(self.log._isLeader()), int(self.log._getTerm()), leader_id)

    def report(self) -> RaftReport:
        """The log as this member sees it; only a leader knows what the others hold (the rest show 0)."""
        status = self.log.getStatus()
        commit = int(status["commit_idx"])
        members = []
        for member_id, address in enumerate(self.addresses, start=1):
            if address == self.me:
                held, connected = int(status["last_applied"]), True
            else:
                held = int(status.get(f"match_idx_server_{address}", 0))
                connected = status.get(f"partner_node_status_server_{address}") == 2  # pysyncobj's "connected"
            members.append(RaftMember(member_id, held, max(0, commit - held), connected))
        return RaftReport(commit, int(status["last_applied"]), members)

    def state(self) -> bytes:
        """The newest state applied here (empty before the first)."""
        return bytes(self.log.state)

    def append(self, blob: bytes, term: int, done: Callable[[bool], None]) -> None:
        """Append ``blob``; ``done(True)`` once committed and applied here, ``done(False)`` if it never will be."""
        self.log.append(blob, term, callback=lambda _result, error: done(error == FAIL_REASON.SUCCESS))

    def hand_over(self) -> None:
        """Ask another member, drawn at random, to take the lead now; the library refuses one not caught up."""
        others = [a for a in self.addresses if a != self.me]
        self.log.transferLeadership(random.choice(others))

    def barrier(self, done: Callable[[bool], None]) -> None:
        self.log.barrier(callback=lambda _result, error: done(error == FAIL_REASON.SUCCESS))

    def close(self) -> None:
        self.log.destroy()
