"""The wire contract between master, storage nodes and clients.

Every message is a msgpack array ``[PROTOCOL_VERSION, MsgType, *fields]``.
``decode`` validates the version, the type and every field before it builds a
message, so a malformed or truncated frame raises ``ProtocolError`` instead of
reaching the state machines. Batches of operations travel as arrays of small
named tuples, which msgpack packs as plain arrays at no extra cost.

Timing (heartbeats, leases, failure detection) is part of the contract too:
the lease a node holds must run out before the master may declare it dead.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import msgpack

from kvcluster.errors import ProtocolError

PROTOCOL_VERSION = 2
MAX_KEY_BYTES = 256
MAX_VALUE_BYTES = 1024 * 1024
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


class OpKind(enum.IntEnum):
    """What a client operation does."""

    GET = 1
    PUT = 2


class Status(enum.IntEnum):
    """The outcome of one operation at a node."""

    OK = 0
    NOT_FOUND = 1
    NOT_PRIMARY = 2  # refresh the table and resend elsewhere
    RETRY = 3  # this node is catching up (table, lease, sync): resend shortly
    INVALID = 4  # the operation is malformed (bad key, slot or value)


class Op(NamedTuple):
    """One client operation. ``op_id`` is unique per client and deduplicates resends."""

    kind: int
    key: str
    value: str | None
    slot: int
    epoch: int
    op_id: int


class Result(NamedTuple):
    """A node's answer to one ``Op``."""

    status: int
    value: str | None


class Write(NamedTuple):
    """One put forwarded from a primary to a backup."""

    slot: int
    epoch: int
    key: str
    value: str
    version: int
    client: int
    op_id: int


class SlotTail(NamedTuple):
    """What a new primary holds of a slot beyond what every replica is known to hold.

    ``high`` is the highest version it holds; ``writes`` are its uncommitted
    writes to the slot, oldest first. A backup undoes what it holds above
    ``high`` and applies the writes it lacks.
    """

    slot: int
    epoch: int
    high: int
    writes: list[Write]


@dataclass(frozen=True, slots=True)
class TableData:
    """The routing table: the cluster shape, endpoints, dead nodes in order of death, and per slot its replica
    list (primary first) and epoch."""

    version: int
    rep: int
    slots: int
    endpoints: dict[int, str]
    dead: list[int]
    replicas: list[list[int]]
    epochs: list[int]


@dataclass(frozen=True, slots=True)
class NodeReport:
    """The master's view of one storage node, for ``status``."""

    node_id: int
    endpoint: str
    pid: int
    alive: bool
    keys: int
    last_seen_ms: float


@dataclass(frozen=True, slots=True)
class Hello:
    node_id: int
    endpoint: str
    pid: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    node_id: int
    sent_at: float
    table_version: int
    keys: int


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    sent_at: float
    table_version: int


@dataclass(frozen=True, slots=True)
class TableRequest:
    pass


@dataclass(frozen=True, slots=True)
class Table:
    data: TableData


@dataclass(frozen=True, slots=True)
class StatusRequest:
    pass


@dataclass(frozen=True, slots=True)
class StatusReport:
    """The master's view; ``moving`` lists ``[slot, source, target]`` of copies under way, and the healed
    counts and seconds describe the current round of repairs (seconds is 0 when none is running)."""

    master_pid: int
    table: TableData | None
    nodes: list[NodeReport]
    moving: list[list[int]]
    healed_slots: int
    healed_keys: int
    healing_seconds: float
    draining: list[int]


@dataclass(frozen=True, slots=True)
class Request:
    client: int
    request_id: int
    ops: list[Op]


@dataclass(frozen=True, slots=True)
class Reply:
    request_id: int
    node_id: int
    results: list[Result]


@dataclass(frozen=True, slots=True)
class Replicate:
    """Writes for a backup; ``committed``: the sender's writes up to this counter are on every replica."""

    repl_id: int
    sender: int
    committed: int
    writes: list[Write]


@dataclass(frozen=True, slots=True)
class Reconcile:
    repl_id: int
    sender: int
    tails: list[SlotTail]


@dataclass(frozen=True, slots=True)
class Commit:
    """The commit watermark alone, sent when a primary has no writes to carry it."""

    sender: int
    committed: int


@dataclass(frozen=True, slots=True)
class ReplicateAck:
    repl_id: int
    node_id: int
    rejected_slots: list[int]


@dataclass(frozen=True, slots=True)
class CopySlot:
    """Start streaming ``slot`` (at ``epoch``) to ``target``, which joins as a replica once it has caught up."""

    slot: int
    epoch: int
    target: int


@dataclass(frozen=True, slots=True)
class SlotCopy:
    """A slot's committed contents; the writes after ``high`` follow as ordinary replication."""

    repl_id: int
    sender: int
    slot: int
    epoch: int
    high: int
    entries: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class CopyDone:
    node_id: int
    slot: int
    epoch: int
    target: int
    keys: int


@dataclass(frozen=True, slots=True)
class Drain:
    node_id: int


@dataclass(frozen=True, slots=True)
class Fenced:
    node_id: int


@dataclass(frozen=True, slots=True)
class NotReady:
    registered: int
    expected: int


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
    | ReplicateAck
    | Fenced
    | NotReady
)


# --- validation helpers: each returns the value with a precise type or raises ---

T = TypeVar("T")


def _int(value: Any, name: str) -> int:
    if type(value) is not int:
        raise ProtocolError(f"{name}: expected int, got {type(value).__name__}")
    return value


def _float(value: Any, name: str) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise ProtocolError(f"{name}: expected float, got {type(value).__name__}")


def _str(value: Any, name: str) -> str:
    if type(value) is not str:
        raise ProtocolError(f"{name}: expected str, got {type(value).__name__}")
    return value


def _opt_str(value: Any, name: str) -> str | None:
    return None if value is None else _str(value, name)


def _bool(value: Any, name: str) -> bool:
    if type(value) is not bool:
        raise ProtocolError(f"{name}: expected bool, got {type(value).__name__}")
    return value


def _list(value: Any, name: str, length: int | None = None) -> list[Any]:
    if type(value) is not list:
        raise ProtocolError(f"{name}: expected array, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise ProtocolError(f"{name}: expected {length} fields, got {len(value)}")
    return value


def _each(value: Any, name: str, parse: Callable[[Any, str], T]) -> list[T]:
    return [parse(item, name) for item in _list(value, name)]


R = TypeVar("R", bound=tuple[Any, ...])
_OPTIONAL_STR = (str, type(None))


def _record(make: Callable[[list[Any]], R], *fields: tuple[str, tuple[type, ...]]) -> Callable[[Any, str], R]:
    """A parser for a record sent as a fixed-length array, checking each field's exact type.

    Batches carry thousands of these, so the check is one loop rather than a
    call per field.
    """
    arity = len(fields)

    def parse(raw: Any, name: str) -> R:
        if type(raw) is not list or len(raw) != arity:
            raise ProtocolError(f"{name}: expected an array of {arity} fields")
        for value, (field_name, types) in zip(raw, fields, strict=True):
            if type(value) not in types:
                raise ProtocolError(f"{name}.{field_name}: unexpected {type(value).__name__}")
        return make(raw)

    return parse


_INT = (int,)
_STR = (str,)
_op = _record(Op._make, ("kind", _INT), ("key", _STR), ("value", _OPTIONAL_STR), ("slot", _INT), ("epoch", _INT),
              ("op_id", _INT))  # fmt: skip
_result = _record(Result._make, ("status", _INT), ("value", _OPTIONAL_STR))
_write = _record(Write._make, ("slot", _INT), ("epoch", _INT), ("key", _STR), ("value", _STR), ("version", _INT),
                 ("client", _INT), ("op_id", _INT))  # fmt: skip


def _pair(raw: Any, name: str) -> tuple[str, str]:
    key, value = _list(raw, name, 2)
    return _str(key, "key"), _str(value, "value")


def _slot_tail(raw: Any, name: str) -> SlotTail:
    slot, epoch, high, writes = _list(raw, name, 4)
    return SlotTail(_int(slot, "slot"), _int(epoch, "epoch"), _int(high, "high"), _each(writes, "writes", _write))


def _table_data(raw: Any, name: str) -> TableData:
    version, rep, slots, endpoints, dead, replicas, epochs = _list(raw, name, 7)
    pairs = _list(endpoints, "endpoints")
    data = TableData(
        version=_int(version, "version"),
        rep=_int(rep, "rep"),
        slots=_int(slots, "slots"),
        endpoints={_int(p[0], "node_id"): _str(p[1], "endpoint") for p in (_list(p, "endpoint", 2) for p in pairs)},
        dead=_each(dead, "dead", _int),
        replicas=[_each(nodes, "replicas", _int) for nodes in _list(replicas, "replicas")],
        epochs=_each(epochs, "epochs", _int),
    )
    # Every process derives placement from these numbers, so they must describe a cluster that can exist.
    nodes = len(data.endpoints)
    if set(data.endpoints) != set(range(1, nodes + 1)):
        raise ProtocolError(f"{name}: node ids must be 1..{nodes}")
    if not 1 <= data.rep <= nodes or data.slots < 1 or not set(data.dead) <= set(data.endpoints):
        raise ProtocolError(f"{name}: inconsistent table (rep {data.rep}, {nodes} nodes, {data.slots} slots)")
    if len(data.replicas) != data.slots or len(data.epochs) != data.slots:
        raise ProtocolError(f"{name}: expected a replica list and an epoch for each of {data.slots} slots")
    for replicas in data.replicas:
        if not replicas or len(set(replicas)) != len(replicas) or not set(replicas) <= data.endpoints.keys():
            raise ProtocolError(f"{name}: invalid replica list {replicas}")
    return data


def _table_wire(data: TableData) -> list[Any]:
    return [data.version, data.rep, data.slots, sorted(data.endpoints.items()), data.dead, data.replicas, data.epochs]


def _node_report(raw: Any, name: str) -> NodeReport:
    node_id, endpoint, pid, alive, keys, last_seen_ms = _list(raw, name, 6)
    return NodeReport(
        _int(node_id, "node_id"),
        _str(endpoint, "endpoint"),
        _int(pid, "pid"),
        _bool(alive, "alive"),
        _int(keys, "keys"),
        _float(last_seen_ms, "last_seen_ms"),
    )


# --- encoding: message -> fields, and fields -> message, per type ---


def _fields(message: Message) -> tuple[MsgType, list[Any]]:
    match message:
        case Hello(node_id, endpoint, pid):
            return MsgType.HELLO, [node_id, endpoint, pid]
        case Heartbeat(node_id, sent_at, table_version, keys):
            return MsgType.HEARTBEAT, [node_id, sent_at, table_version, keys]
        case HeartbeatAck(sent_at, table_version):
            return MsgType.HEARTBEAT_ACK, [sent_at, table_version]
        case TableRequest():
            return MsgType.TABLE_REQUEST, []
        case Table(data):
            return MsgType.TABLE, [_table_wire(data)]
        case StatusRequest():
            return MsgType.STATUS_REQUEST, []
        case StatusReport(master_pid, table, nodes, moving, healed_slots, healed_keys, healing_seconds, draining):
            wire_nodes = [[n.node_id, n.endpoint, n.pid, n.alive, n.keys, n.last_seen_ms] for n in nodes]
            wire_table = None if table is None else _table_wire(table)
            return MsgType.STATUS, [
                master_pid,
                wire_table,
                wire_nodes,
                moving,
                healed_slots,
                healed_keys,
                healing_seconds,
                draining,
            ]
        case Request(client, request_id, ops):
            return MsgType.REQUEST, [client, request_id, ops]
        case Reply(request_id, node_id, results):
            return MsgType.REPLY, [request_id, node_id, results]
        case Replicate(repl_id, sender, committed, writes):
            return MsgType.REPLICATE, [repl_id, sender, committed, writes]
        case Reconcile(repl_id, sender, tails):
            return MsgType.RECONCILE, [repl_id, sender, tails]
        case Commit(sender, committed):
            return MsgType.COMMIT, [sender, committed]
        case CopySlot(slot, epoch, target):
            return MsgType.COPY_SLOT, [slot, epoch, target]
        case SlotCopy(repl_id, sender, slot, epoch, high, entries):
            return MsgType.SLOT_COPY, [repl_id, sender, slot, epoch, high, entries]
        case Drain(node_id):
            return MsgType.DRAIN, [node_id]
        case CopyDone(node_id, slot, epoch, target, keys):
            return MsgType.COPY_DONE, [node_id, slot, epoch, target, keys]
        case ReplicateAck(repl_id, node_id, rejected_slots):
            return MsgType.REPLICATE_ACK, [repl_id, node_id, rejected_slots]
        case Fenced(node_id):
            return MsgType.FENCED, [node_id]
        case NotReady(registered, expected):
            return MsgType.NOT_READY, [registered, expected]
    raise TypeError(f"not a message: {message!r}")


def _status_report(f: list[Any]) -> StatusReport:
    return StatusReport(
        _int(f[0], "master_pid"),
        None if f[1] is None else _table_data(f[1], "table"),
        _each(f[2], "nodes", _node_report),
        [_each(move, "move", _int) for move in _list(f[3], "moving")],
        _int(f[4], "healed_slots"),
        _int(f[5], "healed_keys"),
        _float(f[6], "healing_seconds"),
        _each(f[7], "draining", _int),
    )


_DECODERS: dict[MsgType, tuple[int, Callable[[list[Any]], Message]]] = {
    MsgType.HELLO: (3, lambda f: Hello(_int(f[0], "node_id"), _str(f[1], "endpoint"), _int(f[2], "pid"))),
    MsgType.HEARTBEAT: (
        4,
        lambda f: Heartbeat(
            _int(f[0], "node_id"), _float(f[1], "sent_at"), _int(f[2], "table_version"), _int(f[3], "keys")
        ),
    ),
    MsgType.HEARTBEAT_ACK: (2, lambda f: HeartbeatAck(_float(f[0], "sent_at"), _int(f[1], "table_version"))),
    MsgType.TABLE_REQUEST: (0, lambda _: TableRequest()),
    MsgType.TABLE: (1, lambda f: Table(_table_data(f[0], "table"))),
    MsgType.STATUS_REQUEST: (0, lambda _: StatusRequest()),
    MsgType.STATUS: (8, _status_report),
    MsgType.REQUEST: (3, lambda f: Request(_int(f[0], "client"), _int(f[1], "request_id"), _each(f[2], "ops", _op))),
    MsgType.REPLY: (
        3,
        lambda f: Reply(_int(f[0], "request_id"), _int(f[1], "node_id"), _each(f[2], "results", _result)),
    ),
    MsgType.REPLICATE: (
        4,
        lambda f: Replicate(
            _int(f[0], "repl_id"), _int(f[1], "sender"), _int(f[2], "committed"), _each(f[3], "writes", _write)
        ),
    ),
    MsgType.RECONCILE: (
        3,
        lambda f: Reconcile(_int(f[0], "repl_id"), _int(f[1], "sender"), _each(f[2], "tails", _slot_tail)),
    ),
    MsgType.COMMIT: (2, lambda f: Commit(_int(f[0], "sender"), _int(f[1], "committed"))),
    MsgType.COPY_SLOT: (3, lambda f: CopySlot(_int(f[0], "slot"), _int(f[1], "epoch"), _int(f[2], "target"))),
    MsgType.SLOT_COPY: (
        6,
        lambda f: SlotCopy(
            _int(f[0], "repl_id"),
            _int(f[1], "sender"),
            _int(f[2], "slot"),
            _int(f[3], "epoch"),
            _int(f[4], "high"),
            _each(f[5], "entries", _pair),
        ),
    ),
    MsgType.DRAIN: (1, lambda f: Drain(_int(f[0], "node_id"))),
    MsgType.COPY_DONE: (
        5,
        lambda f: CopyDone(
            _int(f[0], "node_id"), _int(f[1], "slot"), _int(f[2], "epoch"), _int(f[3], "target"), _int(f[4], "keys")
        ),
    ),
    MsgType.REPLICATE_ACK: (
        3,
        lambda f: ReplicateAck(_int(f[0], "repl_id"), _int(f[1], "node_id"), _each(f[2], "rejected_slots", _int)),
    ),
    MsgType.FENCED: (1, lambda f: Fenced(_int(f[0], "node_id"))),
    MsgType.NOT_READY: (2, lambda f: NotReady(_int(f[0], "registered"), _int(f[1], "expected"))),
}


def encode(message: Message) -> bytes:
    """Serialise a message to one frame."""
    msg_type, fields = _fields(message)
    packed: bytes = msgpack.packb([PROTOCOL_VERSION, int(msg_type), *fields], use_bin_type=True)
    return packed


def decode(frame: bytes) -> Message:
    """Parse and validate one frame; raise ``ProtocolError`` on anything malformed."""
    try:
        raw = msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 - msgpack raises many unrelated classes for bad input
        raise ProtocolError(f"undecodable frame ({len(frame)} bytes): {exc}") from None
    if type(raw) is not list or len(raw) < 2:
        raise ProtocolError("frame is not a [version, type, ...] array")
    if type(raw[0]) is not int or raw[0] != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {raw[0]!r}")
    if type(raw[1]) is not int:
        raise ProtocolError(f"message type must be an integer, got {raw[1]!r}")
    try:
        msg_type = MsgType(raw[1])
    except ValueError:
        raise ProtocolError(f"unknown message type {raw[1]!r}") from None
    arity, build = _DECODERS[msg_type]
    fields = raw[2:]
    if len(fields) != arity:
        raise ProtocolError(f"{msg_type.name}: expected {arity} fields, got {len(fields)}")
    try:
        return build(fields)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ProtocolError(f"{msg_type.name}: {exc}") from None


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
