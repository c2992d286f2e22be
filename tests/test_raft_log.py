"""The master group's early election: a follower whose connection to its leader drops stands at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pysyncobj.monotonic import monotonic as raft_clock

from kvcluster.runtime.raft_log import MasterGroup

ADDRESSES = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
FAR = 1e9  # an election deadline that never comes


@dataclass
class Member:
    address: str


@dataclass
class FakeLog:
    """What ``MasterGroup._watch_leader`` reads of pysyncobj: the leader, the connection to it, and the deadline."""

    me: str
    leader: str | None
    connected: bool = True
    deadline: float = FAR
    extra: dict[str, Any] = field(default_factory=dict)

    def _isLeader(self) -> bool:  # noqa: N802 - pysyncobj's names
        return self.leader == self.me

    def _getLeader(self) -> Member | None:  # noqa: N802
        return None if self.leader is None else Member(self.leader)

    def isNodeConnected(self, _node: Member) -> bool:  # noqa: N802
        return self.connected

    @property
    def _SyncObj__raftElectionDeadline(self) -> float:  # noqa: N802
        return self.deadline

    @_SyncObj__raftElectionDeadline.setter
    def _SyncObj__raftElectionDeadline(self, value: float) -> None:  # noqa: N802
        self.deadline = value


def group(log: FakeLog) -> MasterGroup:
    member = MasterGroup.__new__(MasterGroup)  # no pysyncobj behind it: only the watch is under test
    member.addresses = ADDRESSES
    member.me = log.me
    member.log = log  # type: ignore[assignment]
    member.leader_link = None
    return member


def test_only_the_first_follower_stands_at_once_when_the_leaders_connection_drops() -> None:
    deadlines = []
    for me in ADDRESSES[1:]:
        log = FakeLog(me, leader=ADDRESSES[0])
        member = group(log)
        member._watch_leader()
        assert log.deadline == FAR  # connected: nothing changes
        log.connected = False
        before = raft_clock()
        member._watch_leader()
        deadlines.append(log.deadline - before)
    assert deadlines[0] <= 0.01  # master2 stands now
    assert deadlines[1] > 1e8  # master3 keeps its election timeout, and votes for master2


def test_a_leader_never_seen_connected_is_left_to_the_election_timeout() -> None:
    log = FakeLog(ADDRESSES[2], leader=ADDRESSES[0], connected=False)
    member = group(log)
    member._watch_leader()
    member._watch_leader()
    assert log.deadline == FAR


def test_the_leader_itself_does_nothing() -> None:
    log = FakeLog(ADDRESSES[0], leader=ADDRESSES[0])
    member = group(log)
    member._watch_leader()
    log.connected = False
    member._watch_leader()
    assert log.deadline == FAR
