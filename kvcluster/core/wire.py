"""The wire's building blocks: message types, field ranges, the base structs, and the records inside messages.

Every message (``protocol.py``) is a ``msgspec.Struct`` sent as a msgpack array
``[tag, *fields]``, where ``tag = PROTOCOL_VERSION << 8 | MsgType``, so one
integer names both the version and the type. The records here (``Op``,
``Result``, ``Write``, ``SlotTail``, ``TableData``, ``NodeReport``,
``ClusterEvent`` and the rest) travel inside messages as arrays of their
fields, in declaration order, and ``decode`` checks every field's type and range.
"""

from __future__ import annotations

import enum
from typing import Annotated

from msgspec import Meta, Struct

PROTOCOL_VERSION = 5
APPLIED_WINDOW_BYTES = 1 << 17  # a node remembers each client's latest 2^20 op ids: a bitmap of at most this size


class MsgType(enum.IntEnum):
    """Message types; the comment names sender -> receiver."""

    HELLO = 1  # node -> master
    HEARTBEAT = 2  # node -> master
    HEARTBEAT_ACK = 3  # master -> node
    TABLE_REQUEST = 4  # client -> master
    TABLE = 5  # master -> client, node
    STATUS_REQUEST = 6  # client -> master
    STATUS = 7  # master -> client
    REQUEST = 8  # client -> node
    REPLY = 9  # node -> client
    REPLICATE = 10  # primary -> backup
    RECONCILE = 11  # new primary -> backup
    REPLICATE_ACK = 12  # backup -> primary
    FENCED = 13  # master -> node declared dead
    NOT_READY = 14  # master -> client while nodes are still registering
    COMMIT = 15  # primary -> backup
    COPY_SLOT = 16  # master -> primary: copy a slot to a new replica
    SLOT_COPY = 17  # primary -> new replica
    COPY_DONE = 18  # primary -> master: the new replica holds the slot
    DRAIN = 19  # client -> master: move every slot off a node before it is removed
    NOT_LEADER = 20  # master -> client: ask the leader of the master group instead
    SCAN = 21  # client -> node: a page of the keys of slots it is primary of
    SCAN_PAGE = 22  # node -> client
    NODE_EXITED = 23  # the process that watches a node -> master: its process is gone
    JOIN = 24  # a node started by hand (kvcluster node) -> master: which node id may it take?
    JOIN_ANSWER = 25  # master -> that node
    STATS_REQUEST = 30  # client -> node: its counters, for ``kvcluster top``
    STATS = 31  # node -> client


class OpKind(enum.IntEnum):
    """What a client operation does."""

    GET = 1
    PUT = 2
    DELETE = 3  # a write of "absent": replicated, logged and deduplicated like a put


class Status(enum.IntEnum):
    """The outcome of one operation at a node."""

    OK = 0
    NOT_FOUND = 1
    NOT_PRIMARY = 2  # refresh the table and resend elsewhere
    RETRY = 3  # this node is catching up (table, lease, sync): resend shortly
    INVALID = 4  # the operation is malformed (bad key, slot or value)
    UNWRITABLE = 5  # the node cannot write its log (the result's value says why): nothing was applied


# --- field types: ranges that hold for every well-formed message, checked by ``decode`` ---

Count = Annotated[int, Meta(ge=0)]  # counters, versions, ids, pids, key counts, slots
NodeId = Annotated[int, Meta(ge=1)]  # storage nodes are numbered 1..n
Watermark = Annotated[int, Meta(ge=-1)]  # a write counter, or -1 (replica.NO_COMMIT: says nothing)


class Record(Struct, array_like=True, frozen=True, forbid_unknown_fields=True, gc=False):
    """A fixed-length array of fields on the wire; a frame with a field missing or extra is refused.

    ``gc=False``: these never form reference cycles, so the garbage collector
    need not track the thousands a batch carries (16 bytes less each, too).
    """


class MessageStruct(Record, frozen=True):
    """A whole frame: a record whose first array item is its tag."""


def tag_of(msg_type: MsgType) -> int:
    """The first array item of a message of this type, in this protocol version."""
    return PROTOCOL_VERSION << 8 | msg_type


# --- records inside messages ---


class Op(Record, frozen=True):
    """One client operation. ``op_id`` is unique per client and deduplicates resends.

    Only types are checked when decoding: a node answers ``INVALID`` for an op
    with a bad kind, key, value or slot, and serves the rest of the batch.
    """

    kind: int
    key: str
    value: str | None
    slot: int
    epoch: int
    op_id: int


class Result(Record, frozen=True):
    """A node's answer to one ``Op``; a client treats a status it does not know as ``INVALID``."""

    status: int
    value: str | None


class Write(Record, frozen=True):
    """One put or delete forwarded from a primary to a backup; ``value`` None deletes the key."""

    slot: Count
    epoch: Count
    key: str
    value: str | None
    version: Count
    client: Count
    op_id: int  # as the client sent it: Op.op_id is not range-checked, so neither is this


class SlotTail(Record, frozen=True):
    """What a new primary holds of a slot beyond what every replica is known to hold.

    ``high`` is the highest version it holds; ``writes`` are its uncommitted
    writes to the slot, oldest first. A backup undoes what it holds above
    ``high`` and applies the writes it lacks.
    """

    slot: Count
    epoch: Count
    high: Count
    writes: list[Write]


class AppliedWindow(Record, frozen=True):
    """Which of a client's op ids a node has applied: bit ``i`` of ``bits`` (least significant bit of each byte
    first) stands for op id ``first + i``."""

    client: Count
    first: Annotated[int, Meta(multiple_of=8)]  # as Op.op_id, not range-checked; windows start on a byte
    bits: Annotated[bytes, Meta(max_length=APPLIED_WINDOW_BYTES)]


class TableData(Record, frozen=True):
    """The routing table: the cluster shape, endpoints, dead nodes in order of death, and per slot its replica
    list (primary first) and epoch.

    ``endpoints`` travels as a msgpack map with integer keys. Every process
    derives placement from these numbers, so they must describe a cluster that
    can exist: checked when decoding and whenever one is built.
    """

    version: Annotated[int, Meta(ge=1)]
    rep: int
    slots: int
    endpoints: dict[int, str]
    dead: list[int]
    replicas: list[list[int]]
    epochs: list[Count]

    def __post_init__(self) -> None:
        nodes = self.endpoints.keys()
        if nodes != set(range(1, len(nodes) + 1)):
            raise ValueError(f"table: node ids must be 1..{len(nodes)}, got {sorted(nodes)}")
        if not 1 <= self.rep <= len(nodes) or self.slots < 1:
            raise ValueError(f"table: inconsistent shape (rep {self.rep}, {len(nodes)} nodes, {self.slots} slots)")
        if not nodes >= set(self.dead):
            raise ValueError(f"table: dead nodes {self.dead} are not all among nodes 1..{len(nodes)}")
        if len(self.replicas) != self.slots or len(self.epochs) != self.slots:
            raise ValueError(f"table: expected a replica list and an epoch for each of {self.slots} slots")
        known = set(nodes)
        # Slots share a few replica lists (one per choice of nodes): checking each list once keeps a CLI get fast.
        for replicas in set(map(tuple, self.replicas)):
            distinct = set(replicas)
            if len(distinct) != len(replicas) or not replicas or not distinct <= known:
                raise ValueError(f"table: invalid replica list {list(replicas)}")


class NodeReport(Record, frozen=True):
    """The master's view of one storage node, for ``status``."""

    node_id: NodeId
    endpoint: str
    pid: Count
    alive: bool
    keys: Count
    last_seen_ms: float  # may be negative: the master moves last_seen forward over its own stalls
    disk: DiskReport | None = None  # None for a node that keeps no log


class EventKind(enum.StrEnum):
    """What happened in a cluster event; strings, so ``status --json`` and the wire read the same."""

    DEAD = "dead"  # node_id declared dead
    JOINED = "joined"  # node_id joined a running cluster as a new node
    RESTARTED = (
        "restarted"  # a new incarnation of node_id joined, with no slots (it gets back by difference those it holds)
    )
    RECOVERED = "recovered"  # the cluster started again from its nodes' data; ``slots`` lost a stale replica
    PROMOTED = "promoted"  # node_id became primary of ``slots`` more slots
    MOVES_STARTED = "moves-started"  # ``slots`` copies started (node_id 0: many nodes)
    MOVES_FINISHED = "moves-finished"  # ``slots`` copies published as replicas
    MOVES_CANCELLED = "moves-cancelled"  # ``slots`` copies dropped (a source or target died, or too slow)
    DRAIN_STARTED = "drain-started"  # node_id's slots start moving elsewhere
    DRAIN_FINISHED = "drain-finished"  # node_id holds no slot any more: it can be stopped


class ClusterEvent(Record, frozen=True):
    """One entry of the master's recent events; ``age_s``: seconds before the status report was made."""

    age_s: float
    kind: EventKind
    node_id: Count  # 0 when the event concerns no single node
    slots: Count  # slots concerned; 0 for node events


class Holdings(Record, frozen=True):
    """What a node read back from its disk at start: the last table it installed, and per slot of that table
    the highest version it holds and a digest of its contents (see ``Replica.digest``)."""

    table: TableData
    highs: list[Count]
    digests: list[Count]


class DiskReport(Record, frozen=True):
    """A node's log: its fsync policy, the last and 99th-percentile sync times, and why it cannot write, if so."""

    policy: str
    last_sync_ms: float
    p99_sync_ms: float
    error: str


class RaftMember(Record, frozen=True):
    """One member of the master group as its leader sees it: the highest log index it is known to hold, how many
    committed entries it lacks (``lag``), and whether the leader is connected to it."""

    member_id: NodeId
    match_index: Count
    lag: Count
    connected: bool


class RaftReport(Record, frozen=True):
    """The master group's log at its leader: the commit index, the last entry applied, and every member."""

    commit_index: Count
    last_applied: Count
    members: list[RaftMember]
