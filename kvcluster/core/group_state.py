"""What the master group agrees on, and how long a new leader holds back before it judges any node.

With several masters, only the leader of the group acts, and every change to
the cluster's shape goes through the group's log before anyone outside sees
it: the table, the nodes being drained, the incarnation (pid) of every node
and the moves under way. ``MasterState`` is that record, one log entry per
change; a member that becomes leader rebuilds its ``MasterCore`` from the
newest one (``MasterCore.lead``). The log itself is kept by a Raft library in
the runtime (``runtime/raft_log.py``); the simulator keeps it by contract.

The lease rule. A node serves only while a lease from an acting master is
fresh. A deposed leader that has not yet noticed may still grant leases for
up to ``fallback`` seconds after the new leader won (the Raft library steps it
down once it has heard from no majority for that long), and each grant lasts
``lease``. So a new leader treats every node as heard ``takeover_grace`` into
the future: it declares nobody dead before every lease it could not see has
run out, and never sooner than ``dead_after`` after it won.
"""

from __future__ import annotations

import msgspec
from msgspec import Struct

from kvcluster.core.protocol import Timing
from kvcluster.core.wire import Count, NodeId, TableData


class MoveRecord(Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """A slot copy under way; ``replaces`` is the node the target takes the place of, or 0 when it is added."""

    slot: Count
    source: NodeId
    target: NodeId
    epoch: Count
    replaces: Count


class MasterState(Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """One entry of the master group's log: everything a new leader needs to carry on."""

    table: TableData | None
    draining: list[NodeId]
    pids: dict[int, Count]
    moves: list[MoveRecord]


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(MasterState)


def encode_state(state: MasterState) -> bytes:
    return _ENCODER.encode(state)


def decode_state(blob: bytes) -> MasterState:
    """Raises ``msgspec.DecodeError`` for a blob no master wrote: the log is trusted, so that is a bug."""
    return _DECODER.decode(blob)


# The group's timing, as the runtime configures its Raft library and the simulator models it.
FALLBACK = 1.0  # seconds after which a leader that heard from no majority steps down: a table entry takes a while
ELECTION_TIMEOUT = (0.4, 0.8)  # a follower that heard no leader for a random time in this range stands


def takeover_grace(timing: Timing, fallback: float = FALLBACK) -> float:
    """How far ahead of its election a new leader counts every node as last heard from (see the module doc)."""
    return max(0.0, fallback + timing.lease - timing.dead_after)
