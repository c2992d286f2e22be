"""The wire contract between master, storage nodes and clients: every message, its layout and its checks.

This module owns the messages that cross a socket, and their encoding. Every
message is a ``msgspec.Struct`` sent as a msgpack array ``[tag, *fields]``; the
tag, the field ranges and the records inside messages are in ``wire.py``. ``decode``
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

import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from kvcluster.core.wire import (
    PROTOCOL_VERSION,
    AppliedWindow,
    ClusterEvent,
    Count,
    DiskReport,
    Holdings,
    MessageStruct,
    MsgType,
    NodeId,
    NodeReport,
    Op,
    RaftReport,
    Result,
    SlotTail,
    TableData,
    Watermark,
    Write,
    tag_of,
)
from kvcluster.errors import ProtocolError

MAX_KEY_BYTES = 256
MAX_VALUE_BYTES = 1024 * 1024
MAX_SCAN_KEYS = 10_000  # keys in one scan page: a page is read in one pass of the node's loop
_WHITESPACE = re.compile(r"\s")


class Timing(msgspec.Struct, frozen=True):
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


# --- messages ---


class Hello(MessageStruct, frozen=True, tag=tag_of(MsgType.HELLO)):
    """``held`` is what the node recovered from its disk, if anything: after a whole-cluster stop the masters
    rebuild the table from it."""

    node_id: NodeId
    endpoint: str
    pid: Count
    held: Holdings | None = None


class Heartbeat(MessageStruct, frozen=True, tag=tag_of(MsgType.HEARTBEAT)):
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
    overdue: list[NodeId] = msgspec.field(default_factory=list)


class HeartbeatAck(MessageStruct, frozen=True, tag=tag_of(MsgType.HEARTBEAT_ACK)):
    """The lease grant: only the acting leader sends it, and a node ignores it from a term older than one it saw."""

    sent_at: float
    table_version: Count
    term: Count


class TableRequest(MessageStruct, frozen=True, tag=tag_of(MsgType.TABLE_REQUEST)):
    pass


class Table(MessageStruct, frozen=True, tag=tag_of(MsgType.TABLE)):
    data: TableData


class StatusRequest(MessageStruct, frozen=True, tag=tag_of(MsgType.STATUS_REQUEST)):
    pass


class StatusReport(MessageStruct, frozen=True, tag=tag_of(MsgType.STATUS)):
    """The master's view; ``moving`` lists ``[slot, source, target]`` of copies under way, and the healed
    counts and seconds describe the current round of repairs (seconds is 0 when none is running);
    ``events`` are the master's recent events, oldest first; ``raft`` the group's log (None: a lone master)."""

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
    raft: RaftReport | None = None


class Request(MessageStruct, frozen=True, tag=tag_of(MsgType.REQUEST)):
    """Operations from one client; ``deadline``: wall-clock seconds after which the client has given up (0: none)."""

    client: Count
    request_id: Count
    ops: list[Op]
    deadline: float = 0.0


class Reply(MessageStruct, frozen=True, tag=tag_of(MsgType.REPLY)):
    request_id: Count
    node_id: NodeId
    results: list[Result]


class Replicate(MessageStruct, frozen=True, tag=tag_of(MsgType.REPLICATE)):
    """Writes for a backup; ``committed``: the sender's writes up to this counter are on every replica."""

    repl_id: Count
    sender: NodeId
    committed: Watermark
    writes: list[Write]


class Reconcile(MessageStruct, frozen=True, tag=tag_of(MsgType.RECONCILE)):
    repl_id: Count
    sender: NodeId
    tails: list[SlotTail]


class Commit(MessageStruct, frozen=True, tag=tag_of(MsgType.COMMIT)):
    """The commit watermark alone, sent when a primary has no writes to carry it."""

    sender: NodeId
    committed: Watermark


class CopySlot(MessageStruct, frozen=True, tag=tag_of(MsgType.COPY_SLOT)):
    """Start streaming ``slot`` (at ``epoch``) to ``target``, which joins as a replica once it has caught up.

    ``base`` and ``digest``: what a returning ``target`` still holds of the slot (its highest version and the
    digest of its contents), so that the source may send only the writes since; 0 and 0 when nothing.
    """

    slot: Count
    epoch: Count
    target: NodeId
    base: Count = 0
    digest: Count = 0


class SlotCopy(MessageStruct, frozen=True, tag=tag_of(MsgType.SLOT_COPY)):
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
    writes: list[tuple[str, str | None]] = msgspec.field(default_factory=list)


class CopyDone(MessageStruct, frozen=True, tag=tag_of(MsgType.COPY_DONE)):
    node_id: NodeId
    slot: Count
    epoch: Count
    target: NodeId
    keys: Count


class ReplicateAck(MessageStruct, frozen=True, tag=tag_of(MsgType.REPLICATE_ACK)):
    repl_id: Count
    node_id: NodeId
    rejected_slots: list[Count]


class Drain(MessageStruct, frozen=True, tag=tag_of(MsgType.DRAIN)):
    node_id: NodeId


class NodeExited(MessageStruct, frozen=True, tag=tag_of(MsgType.NODE_EXITED)):
    """Incarnation ``pid`` of node ``node_id`` exited: it can never serve again, so no lease need run out."""

    node_id: NodeId
    pid: Count


class Join(MessageStruct, frozen=True, tag=tag_of(MsgType.JOIN)):
    """Before its first hello: may the process ``pid`` at ``endpoint`` be node ``node_id`` (0: the next free id)?"""

    node_id: Count
    endpoint: str
    pid: Count


class JoinAnswer(MessageStruct, frozen=True, tag=tag_of(MsgType.JOIN_ANSWER)):
    """The id the node is to say hello under; ``refusal`` says why it may not (empty when it may)."""

    node_id: Count
    refusal: str


class Fenced(MessageStruct, frozen=True, tag=tag_of(MsgType.FENCED)):
    node_id: NodeId
    term: Count


class NotLeader(MessageStruct, frozen=True, tag=tag_of(MsgType.NOT_LEADER)):
    """This master does not act: ``leader`` is the acting one's id (1-based), or 0 when none is known."""

    term: Count
    leader: Count


class NotReady(MessageStruct, frozen=True, tag=tag_of(MsgType.NOT_READY)):
    registered: Count
    expected: Count


class Scan(MessageStruct, frozen=True, tag=tag_of(MsgType.SCAN)):
    """Ask for the first ``limit`` keys of ``slots``, in order, that start with ``prefix`` and sort after ``after``.

    Served like a get: only if the node is the primary of every slot listed, with a fresh lease.
    """

    request_id: Count
    prefix: str
    after: str
    limit: Annotated[int, Meta(ge=1, le=MAX_SCAN_KEYS)]
    slots: list[Count]


class ScanPage(MessageStruct, frozen=True, tag=tag_of(MsgType.SCAN_PAGE)):
    """The answer to ``Scan``: its keys in order, fewer than ``limit`` when the slots hold no more.

    ``status`` is ``OK``, or the ``Status`` a get of any listed slot would have got (and no keys).
    """

    request_id: Count
    node_id: NodeId
    status: int
    keys: list[str]


class StatsRequest(MessageStruct, frozen=True, tag=tag_of(MsgType.STATS_REQUEST)):
    """Ask a node for its counters; answered with ``NodeStats`` at once, whatever the node's state."""

    request_id: Count


class NodeStats(MessageStruct, frozen=True, tag=tag_of(MsgType.STATS)):
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

# What a node sends back on a client's request. A client's sockets decode only these: a decoder is built on
# first use, from the types it must know, and one for every message costs a CLI get a few milliseconds.
NodeAnswer = Reply | ScanPage

_ENCODER = msgspec.msgpack.Encoder()
# (kinds, decoder), compared by identity: hashing a union of every message type costs more than a decode.
_DECODERS: list[tuple[Any, msgspec.msgpack.Decoder[Any]]] = []


def encode(message: Message) -> bytes:
    """Serialise a message to one frame."""
    if not isinstance(message, MessageStruct):
        raise TypeError(f"not a message: {message!r}")
    return _ENCODER.encode(message)


def decode(frame: bytes, kinds: Any = Message) -> Message:
    """Parse and validate one frame as one of ``kinds`` (any message by default); raise ``ProtocolError`` on
    anything malformed or of another kind."""
    decoder = _decoder(kinds)
    try:
        return decoder.decode(frame)  # type: ignore[no-any-return]
    except msgspec.DecodeError as exc:  # ValidationError included: wrong type, range, arity or tag
        raise ProtocolError(_explain(frame, str(exc))) from None
    except RecursionError:  # only if a field ever takes arbitrarily nested data: none does today
        raise ProtocolError(f"malformed frame ({len(frame)} bytes): nested too deeply") from None


def _decoder(kinds: Any) -> msgspec.msgpack.Decoder[Any]:
    """The decoder of ``kinds``, built the first time it is asked for."""
    for known, decoder in _DECODERS:
        if known is kinds:
            return decoder
    decoder = msgspec.msgpack.Decoder(kinds)
    _DECODERS.append((kinds, decoder))
    return decoder


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
    if "\0" in key:  # a node stores a pair as key NUL value (core/store.py)
        return f"key {key!r} contains a NUL character"
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
