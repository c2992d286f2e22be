"""The wire contract between master, storage nodes and clients: every message, its layout and its checks.

This module owns what crosses a socket. Every message is a ``msgspec.Struct``
sent as a msgpack array ``[tag, *fields]``, where ``tag = PROTOCOL_VERSION << 8
| MsgType``, so one integer names both the version and the type. Records inside
messages (``Op``, ``Result``, ``Write``, ``SlotTail``, ``TableData``,
``NodeReport``, ``ClusterEvent``) are arrays of their fields, in declaration order. ``decode``
checks the tag, the arity and the exact type of every field, the ranges that
always hold (counters >= 0, node ids >= 1) and the table's cross-field rules
before it returns a message; anything else, truncated or trailing bytes
included, raises ``ProtocolError`` and never reaches the state machines.

What a node can refuse per operation is deliberately *not* checked here: a
bad kind, key, value or slot inside one ``Op`` decodes, and the node answers
``INVALID`` for that op alone (``check_key``/``check_value`` below), so one
bad op does not cost its whole batch.

Timing (heartbeats, leases, failure detection) is part of the contract too:
the lease a node holds must run out before the master may declare it dead.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from kvcluster.errors import ProtocolError

PROTOCOL_VERSION = 5
MAX_KEY_BYTES = 256
MAX_VALUE_BYTES = 1024 * 1024
MAX_SCAN_KEYS = 10_000  # keys in one scan page: a page is read in one pass of the node's loop
APPLIED_WINDOW_BYTES = 1 << 17  # a node remembers each client's latest 2^20 op ids: a bitmap of at most this size
_WHITESPACE = re.compile(r"\s")


@dataclass(frozen=True, slots=True)
class Timing:
    """Failure-detection timing shared by master and nodes, in seconds.

    A node serves as primary only while its lease is fresh. The lease runs from
    the moment the node *sent* a heartbeat the master acknowledged, and the
    master declares a node dead only ``dead_after`` after it *received* its last
    heartbeat, so with ``lease < dead_after`` an old primary has stopped serving
    before any other node is promoted in its place.
    """

    heartbeat: float = 0.1
    lease: float = 0.5
    dead_after: float = 0.7

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat < self.lease < self.dead_after:
            raise ValueError("timing must satisfy 0 < heartbeat < lease < dead_after")


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


class _Record(Struct, array_like=True, frozen=True, forbid_unknown_fields=True, gc=False):
    """A fixed-length array of fields on the wire; a frame with a field missing or extra is refused.

    ``gc=False``: these never form reference cycles, so the garbage collector
    need not track the thousands a batch carries (16 bytes less each, too).
    """


class _Message(_Record, frozen=True):
    """A whole frame: a record whose first array item is its tag."""


def _tag(msg_type: MsgType) -> int:
    return PROTOCOL_VERSION << 8 | msg_type


# --- records inside messages ---


class Op(_Record, frozen=True):
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


class Result(_Record, frozen=True):
    """A node's answer to one ``Op``; a client treats a status it does not know as ``INVALID``."""

    status: int
    value: str | None


class Write(_Record, frozen=True):
    """One put or delete forwarded from a primary to a backup; ``value`` None deletes the key."""

    slot: Count
    epoch: Count
    key: str
    value: str | None
    version: Count
    client: Count
    op_id: int  # as the client sent it: Op.op_id is not range-checked, so neither is this


class SlotTail(_Record, frozen=True):
    """What a new primary holds of a slot beyond what every replica is known to hold.

    ``high`` is the highest version it holds; ``writes`` are its uncommitted
    writes to the slot, oldest first. A backup undoes what it holds above
    ``high`` and applies the writes it lacks.
    """

    slot: Count
    epoch: Count
    high: Count
    writes: list[Write]


class AppliedWindow(_Record, frozen=True):
    """Which of a client's op ids a node has applied: bit ``i`` of ``bits`` (least significant bit of each byte
    first) stands for op id ``first + i``."""

    client: Count
    first: Annotated[int, Meta(multiple_of=8)]  # as Op.op_id, not range-checked; windows start on a byte
    bits: Annotated[bytes, Meta(max_length=APPLIED_WINDOW_BYTES)]


class TableData(_Record, frozen=True):
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
        for replicas in self.replicas:
            distinct = set(replicas)
            if len(distinct) != len(replicas) or not replicas or not distinct <= known:
                raise ValueError(f"table: invalid replica list {replicas}")


class NodeReport(_Record, frozen=True):
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


class ClusterEvent(_Record, frozen=True):
    """One entry of the master's recent events; ``age_s``: seconds before the status report was made."""

    age_s: float
    kind: EventKind
    node_id: Count  # 0 when the event concerns no single node
    slots: Count  # slots concerned; 0 for node events


# --- messages ---


class Holdings(_Record, frozen=True):
    """What a node read back from its disk at start: the last table it installed, and per slot of that table
    the highest version it holds and a digest of its contents (see ``Replica.digest``)."""

    table: TableData
    highs: list[Count]
    digests: list[Count]


class DiskReport(_Record, frozen=True):
    """A node's log: its fsync policy, the last and 99th-percentile sync times, and why it cannot write, if so."""

    policy: str
    last_sync_ms: float
    p99_sync_ms: float
    error: str


class Hello(_Message, frozen=True, tag=_tag(MsgType.HELLO)):
    """``held`` is what the node recovered from its disk, if anything: after a whole-cluster stop the masters
    rebuild the table from it."""

    node_id: NodeId
    endpoint: str
    pid: Count
    held: Holdings | None = None


class Heartbeat(_Message, frozen=True, tag=_tag(MsgType.HEARTBEAT)):
    """Sent to every master; ``pid`` names the incarnation, so a new leader can tell an old one apart.

    ``overdue`` names the peers that have left a ``REPLICATE`` or ``RECONCILE`` of this node unacknowledged for
    too long (``core/acks.py``): both may be alive, with the link between them cut.
    """

    node_id: NodeId
    pid: Count
    sent_at: float
    table_version: Count
    keys: Count
    disk: DiskReport | None = None
    overdue: list[NodeId] = []


class HeartbeatAck(_Message, frozen=True, tag=_tag(MsgType.HEARTBEAT_ACK)):
    """The lease grant: only the acting leader sends it, and a node ignores it from a term older than one it saw."""

    sent_at: float
    table_version: Count
    term: Count


class TableRequest(_Message, frozen=True, tag=_tag(MsgType.TABLE_REQUEST)):
    pass


class Table(_Message, frozen=True, tag=_tag(MsgType.TABLE)):
    data: TableData


class StatusRequest(_Message, frozen=True, tag=_tag(MsgType.STATUS_REQUEST)):
    pass


class StatusReport(_Message, frozen=True, tag=_tag(MsgType.STATUS)):
    """The master's view; ``moving`` lists ``[slot, source, target]`` of copies under way, and the healed
    counts and seconds describe the current round of repairs (seconds is 0 when none is running);
    ``events`` are the master's recent events, oldest first."""

    master_pid: Count
    master_id: Count
    term: Count
    table: TableData | None
    nodes: list[NodeReport]
    moving: list[Annotated[list[Count], Meta(min_length=3, max_length=3)]]
    healed_slots: Count
    healed_keys: Count
    healing_seconds: float
    draining: list[NodeId]
    events: list[ClusterEvent]


class Request(_Message, frozen=True, tag=_tag(MsgType.REQUEST)):
    client: Count
    request_id: Count
    ops: list[Op]


class Reply(_Message, frozen=True, tag=_tag(MsgType.REPLY)):
    request_id: Count
    node_id: NodeId
    results: list[Result]


class Replicate(_Message, frozen=True, tag=_tag(MsgType.REPLICATE)):
    """Writes for a backup; ``committed``: the sender's writes up to this counter are on every replica."""

    repl_id: Count
    sender: NodeId
    committed: Watermark
    writes: list[Write]


class Reconcile(_Message, frozen=True, tag=_tag(MsgType.RECONCILE)):
    repl_id: Count
    sender: NodeId
    tails: list[SlotTail]


class Commit(_Message, frozen=True, tag=_tag(MsgType.COMMIT)):
    """The commit watermark alone, sent when a primary has no writes to carry it."""

    sender: NodeId
    committed: Watermark


class CopySlot(_Message, frozen=True, tag=_tag(MsgType.COPY_SLOT)):
    """Start streaming ``slot`` (at ``epoch``) to ``target``, which joins as a replica once it has caught up.

    ``base`` and ``digest``: what a returning ``target`` still holds of the slot (its highest version and the
    digest of its contents), so that the source may send only the writes since; 0 and 0 when nothing.
    """

    slot: Count
    epoch: Count
    target: NodeId
    base: Count = 0
    digest: Count = 0


class SlotCopy(_Message, frozen=True, tag=_tag(MsgType.SLOT_COPY)):
    """A slot's committed contents; the writes after ``high`` follow as ordinary replication.

    ``applied`` is every op id the sender holds as committed, so that a resend of a put the copy
    already contains is answered ``OK`` by the new replica once it is primary, not applied again.
    """

    repl_id: Count
    sender: NodeId
    slot: Count
    epoch: Count
    high: Count
    entries: list[tuple[str, str]]
    applied: list[AppliedWindow]
    # When ``base`` is not 0, ``entries`` is empty and ``writes`` take a replica holding ``digest`` at ``base``
    # to the sender's contents, in order (a value None deletes).
    base: Count = 0
    digest: Count = 0
    writes: list[tuple[str, str | None]] = []


class CopyDone(_Message, frozen=True, tag=_tag(MsgType.COPY_DONE)):
    node_id: NodeId
    slot: Count
    epoch: Count
    target: NodeId
    keys: Count


class ReplicateAck(_Message, frozen=True, tag=_tag(MsgType.REPLICATE_ACK)):
    repl_id: Count
    node_id: NodeId
    rejected_slots: list[Count]


class Drain(_Message, frozen=True, tag=_tag(MsgType.DRAIN)):
    node_id: NodeId


class NodeExited(_Message, frozen=True, tag=_tag(MsgType.NODE_EXITED)):
    """Incarnation ``pid`` of node ``node_id`` exited: it can never serve again, so no lease need run out."""

    node_id: NodeId
    pid: Count


class Join(_Message, frozen=True, tag=_tag(MsgType.JOIN)):
    """Before its first hello: may the process ``pid`` at ``endpoint`` be node ``node_id`` (0: the next free id)?"""

    node_id: Count
    endpoint: str
    pid: Count


class JoinAnswer(_Message, frozen=True, tag=_tag(MsgType.JOIN_ANSWER)):
    """The id the node is to say hello under; ``refusal`` says why it may not (empty when it may)."""

    node_id: Count
    refusal: str


class Fenced(_Message, frozen=True, tag=_tag(MsgType.FENCED)):
    node_id: NodeId
    term: Count


class NotLeader(_Message, frozen=True, tag=_tag(MsgType.NOT_LEADER)):
    """This master does not act: ``leader`` is the acting one's id (1-based), or 0 when none is known."""

    term: Count
    leader: Count


class NotReady(_Message, frozen=True, tag=_tag(MsgType.NOT_READY)):
    registered: Count
    expected: Count


class Scan(_Message, frozen=True, tag=_tag(MsgType.SCAN)):
    """Ask for the first ``limit`` keys of ``slots``, in order, that start with ``prefix`` and sort after ``after``.

    Served like a get: only if the node is the primary of every slot listed, with a fresh lease.
    """

    request_id: Count
    prefix: str
    after: str
    limit: Annotated[int, Meta(ge=1, le=MAX_SCAN_KEYS)]
    slots: list[Count]


class ScanPage(_Message, frozen=True, tag=_tag(MsgType.SCAN_PAGE)):
    """The answer to ``Scan``: its keys in order, fewer than ``limit`` when the slots hold no more.

    ``status`` is ``OK``, or the ``Status`` a get of any listed slot would have got (and no keys).
    """

    request_id: Count
    node_id: NodeId
    status: int
    keys: list[str]


class StatsRequest(_Message, frozen=True, tag=_tag(MsgType.STATS_REQUEST)):
    """Ask a node for its counters; answered with ``NodeStats`` at once, whatever the node's state."""

    request_id: Count


class NodeStats(_Message, frozen=True, tag=_tag(MsgType.STATS)):
    """A node's counters. ``gets``, ``puts``, ``deletes`` and the latencies cover the last ``window_s`` seconds
    (4 to 5); the ``total_*`` counts run from the node's start. A latency is a request's, from its arrival to its
    reply leaving the node (for writes: replication to every backup and the log write included).

    ``pending_writes``: writes this node, as primary, has sent and not yet had acknowledged by every backup;
    ``oldest_pending_ms``: how long the oldest of them has waited (0 with none). ``fsync_p99_ms`` is -1 for a
    node that keeps no log; ``cpu_percent`` and ``rss_bytes`` describe its process, sampled at most once a second.
    """

    request_id: Count
    node_id: NodeId
    pid: Count
    uptime_s: float
    window_s: float
    gets: Count
    puts: Count
    deletes: Count
    replies: Count
    p50_ms: float
    p99_ms: float
    total_gets: Count
    total_puts: Count
    total_deletes: Count
    keys: Count
    primary_slots: Count
    backup_slots: Count
    table_version: Count
    pending_writes: Count
    oldest_pending_ms: float
    fsync_policy: str
    fsync_p99_ms: float
    cpu_percent: float
    rss_bytes: Count


Message = (
    Hello
    | Heartbeat
    | HeartbeatAck
    | TableRequest
    | Table
    | StatusRequest
    | StatusReport
    | Request
    | Reply
    | Replicate
    | Reconcile
    | Commit
    | CopySlot
    | SlotCopy
    | CopyDone
    | Drain
    | NodeExited
    | Join
    | JoinAnswer
    | ReplicateAck
    | Fenced
    | NotReady
    | NotLeader
    | Scan
    | ScanPage
    | StatsRequest
    | NodeStats
)

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Message)


def encode(message: Message) -> bytes:
    """Serialise a message to one frame."""
    if not isinstance(message, _Message):
        raise TypeError(f"not a message: {message!r}")
    return _ENCODER.encode(message)


def decode(frame: bytes) -> Message:
    """Parse and validate one frame; raise ``ProtocolError`` on anything malformed."""
    try:
        return _DECODER.decode(frame)
    except msgspec.DecodeError as exc:  # ValidationError included: wrong type, range, arity or tag
        raise ProtocolError(_explain(frame, str(exc))) from None
    except RecursionError:  # only if a field ever takes arbitrarily nested data: none does today
        raise ProtocolError(f"malformed frame ({len(frame)} bytes): nested too deeply") from None


def _explain(frame: bytes, problem: str) -> str:
    """Name the version and message type of a rejected frame when its head shows them."""
    tag = _head_tag(frame)
    if tag is None:
        return f"malformed frame ({len(frame)} bytes): {problem}"
    version = tag >> 8 if tag > 0xFF else tag  # versions 1 and 2 sent [version, type, ...]
    if version != PROTOCOL_VERSION:
        return f"unsupported protocol version {version} (message tag {tag}); this process speaks {PROTOCOL_VERSION}"
    try:
        name = MsgType(tag & 0xFF).name
    except ValueError:
        return f"unknown message type {tag & 0xFF} (message tag {tag})"
    return f"{name}: {problem}"


def _head_tag(frame: bytes) -> int | None:
    """The first item of a frame that is a non-empty msgpack array starting with an unsigned int, else None."""
    if not frame:
        return None
    marker = frame[0]
    if 0x91 <= marker <= 0x9F:
        start = 1
    elif marker in (0xDC, 0xDD) and int.from_bytes(frame[1 : 3 if marker == 0xDC else 5], "big") > 0:
        start = 3 if marker == 0xDC else 5
    else:
        return None
    head = frame[start : start + 9]
    if head and head[0] <= 0x7F:
        return head[0]
    width = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}.get(head[0]) if head else None
    if width is None or len(head) < 1 + width:
        return None
    return int.from_bytes(head[1 : 1 + width], "big")


def check_key(key: str) -> str | None:
    """Return why ``key`` is not acceptable, or ``None`` if it is."""
    if not key:
        return "key must not be empty"
    if _WHITESPACE.search(key):
        return f"key {key!r} contains whitespace"
    if len(key.encode()) > MAX_KEY_BYTES:
        return f"key is longer than {MAX_KEY_BYTES} bytes"
    return None


def check_value(value: str) -> str | None:
    """Return why ``value`` is not acceptable, or ``None`` if it is."""
    if _WHITESPACE.search(value):
        return "value contains whitespace"
    if len(value.encode()) > MAX_VALUE_BYTES:
        return f"value is larger than {MAX_VALUE_BYTES // 1024 // 1024} MiB"
    return None
