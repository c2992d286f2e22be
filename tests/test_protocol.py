"""The wire protocol: every message round-trips, anything malformed raises ProtocolError, key and value limits."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvcluster.core.protocol import (
    MAX_KEY_BYTES,
    MAX_SCAN_KEYS,
    MAX_VALUE_BYTES,
    Commit,
    CopyDone,
    CopySlot,
    Drain,
    Fenced,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Join,
    JoinAnswer,
    Message,
    NodeExited,
    NodeStats,
    NotLeader,
    NotReady,
    Reconcile,
    Replicate,
    ReplicateAck,
    Reply,
    Request,
    Scan,
    ScanPage,
    SlotCopy,
    StatsRequest,
    StatusReport,
    StatusRequest,
    Table,
    TableRequest,
    Timing,
    check_key,
    check_value,
    decode,
    encode,
)
from kvcluster.core.wire import (
    APPLIED_WINDOW_BYTES,
    PROTOCOL_VERSION,
    AppliedWindow,
    ClusterEvent,
    EventKind,
    MsgType,
    NodeReport,
    Op,
    OpKind,
    Result,
    SlotTail,
    Status,
    TableData,
    Write,
)
from kvcluster.errors import ProtocolError

TABLE = TableData(
    version=3,
    rep=2,
    slots=3,
    endpoints={1: "tcp://127.0.0.1:5001", 2: "tcp://127.0.0.1:5002"},
    dead=[2],
    replicas=[[1], [1], [2]],
    epochs=[1, 1, 0],
)

SAMPLES: list[tuple[MsgType, Message]] = [
    (MsgType.HELLO, Hello(3, "tcp://127.0.0.1:40001", 4242)),
    (MsgType.HEARTBEAT, Heartbeat(3, 4242, 12345.678, 7, 100)),
    (MsgType.HEARTBEAT_ACK, HeartbeatAck(12345.678, 7, 2)),
    (MsgType.TABLE_REQUEST, TableRequest()),
    (MsgType.TABLE, Table(TABLE)),
    (MsgType.STATUS_REQUEST, StatusRequest()),
    (
        MsgType.STATUS,
        StatusReport(
            99,
            2,
            7,
            TABLE,
            [NodeReport(1, "tcp://127.0.0.1:5001", 11, True, 5, 12.5)],
            [[2, 1, 3]],
            4,
            900,
            1.5,
            [2],
            [ClusterEvent(1.25, EventKind.DEAD, 2, 0), ClusterEvent(1.0, EventKind.PROMOTED, 1, 40)],
        ),
    ),
    (MsgType.STATUS, StatusReport(99, 1, 1, None, [], [], 0, 0, 0.0, [], [])),
    (MsgType.DRAIN, Drain(3)),
    (MsgType.COPY_SLOT, CopySlot(17, 2, 3)),
    (MsgType.SLOT_COPY, SlotCopy(9, 1, 17, 2, (2 << 40) | 5, [("k", "v"), ("k2", "")], [])),
    (
        MsgType.SLOT_COPY,
        SlotCopy(9, 1, 17, 2, 5, [], [AppliedWindow(2**62 - 1, 1 << 20, b"\xff\x01"), AppliedWindow(3, -8, b"")]),
    ),
    (MsgType.COPY_DONE, CopyDone(1, 17, 2, 3, 2)),
    (
        MsgType.REQUEST,
        Request(2**62 - 1, 1, [Op(OpKind.PUT, "k", "v", 17, 1, 9), Op(OpKind.GET, "é", None, 4095, 0, 10)]),
    ),
    (MsgType.REQUEST, Request(1, 2, [])),
    (MsgType.REPLY, Reply(1, 3, [Result(Status.OK, "v"), Result(Status.NOT_FOUND, None), Result(Status.RETRY, None)])),
    (MsgType.REPLICATE, Replicate(5, 1, 2, [Write(17, 1, "k", "v", (1 << 40) | 3, 2**62 - 1, 9)])),
    (
        MsgType.RECONCILE,
        Reconcile(6, 1, [SlotTail(17, 1, 3, [Write(17, 0, "k", "", 3, 2**62 - 1, 9)]), SlotTail(18, 1, 0, [])]),
    ),
    (MsgType.COMMIT, Commit(1, 41)),
    (MsgType.REPLICATE_ACK, ReplicateAck(5, 2, [17, 18])),
    (MsgType.FENCED, Fenced(4, 1)),
    (MsgType.NOT_READY, NotReady(2, 5)),
    (MsgType.NOT_LEADER, NotLeader(3, 2)),
    (MsgType.REQUEST, Request(1, 3, [Op(OpKind.DELETE, "k", None, 17, 1, 11)])),
    (MsgType.REPLICATE, Replicate(5, 1, 2, [Write(17, 1, "k", None, (1 << 40) | 4, 2, 10)])),
    (MsgType.SCAN, Scan(7, "user:", "user:17", MAX_SCAN_KEYS, [0, 17, 4095])),
    (MsgType.SCAN, Scan(8, "", "", 1, [])),
    (MsgType.SCAN_PAGE, ScanPage(7, 2, Status.OK, ["user:18", "user:2", "é"])),
    (MsgType.SCAN_PAGE, ScanPage(8, 1, Status.NOT_PRIMARY, [])),
    (MsgType.NODE_EXITED, NodeExited(3, 4242)),
    (MsgType.JOIN, Join(0, "tcp://10.1.2.3:5000", 4242)),
    (MsgType.JOIN_ANSWER, JoinAnswer(6, "")),
    (MsgType.JOIN_ANSWER, JoinAnswer(2, "server2 is alive")),
    (MsgType.STATS_REQUEST, StatsRequest(3)),
    (
        MsgType.STATS,
        NodeStats(
            3,
            2,
            4242,
            12.5,
            4.5,
            900,
            90,
            9,
            999,
            0.25,
            4.0,
            9000,
            900,
            90,
            512,
            1366,
            1365,
            4,
            3,
            1.5,
            "everysec",
            0.8,
            37.5,
            40 << 20,
        ),
    ),
]


@pytest.mark.parametrize(("msg_type", "message"), SAMPLES, ids=[f"{t.name}-{i}" for i, (t, _) in enumerate(SAMPLES)])
def test_round_trip(msg_type: MsgType, message: Message) -> None:
    frame = encode(message)
    raw = msgspec.msgpack.decode(frame)
    assert raw[0] == PROTOCOL_VERSION << 8 | msg_type
    assert len(raw) == 1 + len(type(message).__struct_fields__)
    assert decode(frame) == message


def test_every_message_type_is_sampled() -> None:
    assert {t for t, _ in SAMPLES} == set(MsgType)


def sample(msg_type: MsgType) -> Message:
    return next(m for t, m in SAMPLES if t == msg_type)


def test_records_are_arrays_and_the_table_endpoints_a_map() -> None:
    raw = msgspec.msgpack.decode(encode(sample(MsgType.REPLICATE)))
    assert raw[1:4] == [5, 1, 2]
    assert raw[4] == [[17, 1, "k", "v", (1 << 40) | 3, 2**62 - 1, 9]]
    table = msgspec.msgpack.decode(encode(Table(TABLE)))[1]
    assert table == [3, 2, 3, {1: "tcp://127.0.0.1:5001", 2: "tcp://127.0.0.1:5002"}, [2], [[1], [1], [2]], [1, 1, 0]]


def test_decoded_batches_keep_their_named_fields() -> None:
    request = decode(encode(sample(MsgType.REQUEST)))
    assert isinstance(request, Request)
    assert request.ops[0].key == "k"
    assert request.ops[0].value == "v"
    reply = decode(encode(sample(MsgType.REPLY)))
    assert isinstance(reply, Reply)
    assert reply.results[1].status == Status.NOT_FOUND
    assert reply.results[0] in (Result(Status.OK, "v"), Result(Status.RETRY, None))


def test_messages_match_positional_patterns_and_are_frozen() -> None:
    message = decode(encode(sample(MsgType.REPLICATE)))
    match message:
        case Replicate(repl_id, sender, committed, [Write(slot, _, key, value, _, _, op_id)]):
            assert (repl_id, sender, committed, slot, key, value, op_id) == (5, 1, 2, 17, "k", "v", 9)
        case _:
            pytest.fail(f"no match for {message!r}")
    with pytest.raises(AttributeError):
        message.sender = 2  # type: ignore[misc]
    write = message.writes[0]
    assert hash(write) == hash(Write(*(getattr(write, f) for f in Write.__struct_fields__)))
    assert Op(OpKind.GET, "k", None, 1, 0, 1) == Op(OpKind.GET, "k", None, 1, 0, 1)


def test_ops_a_node_answers_invalid_still_decode() -> None:
    """Kind, key, value and slot are the node's to refuse, per op: one bad op must not cost its batch."""
    bad = [
        Op(99, "k", None, 1, 0, 1),
        Op(OpKind.GET, "", None, 1, 0, 2),
        Op(OpKind.PUT, "a b", "v", 1, 0, 3),
        Op(OpKind.PUT, "k", "x" * (MAX_VALUE_BYTES + 1), 1, 0, 4),
        Op(OpKind.PUT, "k", None, 1, 0, 5),
        Op(OpKind.GET, "k", None, -1, -1, -1),
        Op(OpKind.GET, "k", None, 2**63, 0, 6),
    ]
    request = Request(1, 1, [Op(OpKind.GET, "k", None, 1, 0, 0), *bad])
    assert decode(encode(request)) == request


@pytest.mark.parametrize(
    ("endpoints", "rep", "slots", "dead", "replicas", "epochs"),
    [
        ({1: "a", 3: "c"}, 1, 2, [], [[1], [1]], [0, 0]),
        ({}, 1, 2, [], [[1], [1]], [0, 0]),
        ({1: "a"}, 2, 2, [], [[1], [1]], [0, 0]),
        ({1: "a"}, 1, 0, [], [], []),
        ({1: "a"}, 1, 2, [2], [[1], [1]], [0, 0]),
        ({1: "a"}, 1, 2, [], [[1]], [0, 0]),
        ({1: "a"}, 1, 2, [], [[1], [1]], [0]),
        ({1: "a"}, 1, 2, [], [[1], [2]], [0, 0]),
        ({1: "a"}, 1, 2, [], [[1], [1, 1]], [0, 0]),
        ({1: "a"}, 1, 2, [], [[1], []], [0, 0]),
    ],
    ids=[
        "ids-not-dense",
        "no-nodes",
        "rep-over-nodes",
        "no-slots",
        "dead-unknown",
        "replicas-short",
        "epochs-short",
        "replica-unknown",
        "replica-twice",
        "replica-empty",
    ],
)
def test_a_table_that_cannot_exist_cannot_be_built(
    endpoints: dict[int, str], rep: int, slots: int, dead: list[int], replicas: list[list[int]], epochs: list[int]
) -> None:
    with pytest.raises(ValueError, match="table"):
        TableData(1, rep, slots, endpoints, dead, replicas, epochs)


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(TypeError):
        encode("hello")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode(Op(OpKind.GET, "k", None, 1, 0, 1))  # type: ignore[arg-type]


def pack(*items: Any) -> bytes:
    return msgspec.msgpack.encode(list(items))


def T(msg_type: MsgType, version: int = PROTOCOL_VERSION) -> int:  # noqa: N802 - reads as the frame's first item
    return version << 8 | msg_type


V = PROTOCOL_VERSION
OP = [int(OpKind.GET), "k", None, 1, 0, 1]
ENDPOINTS = {1: "tcp://a:1"}
TABLE_WIRE = [1, 1, 2, ENDPOINTS, [], [[1], [1]], [0, 0]]


def table_wire(*fields: Any, replicas: Any = None, epochs: Any = None) -> list[Any]:
    """A table on the wire with two slots: the given leading fields, then replica lists and epochs."""
    return [*fields, [[1], [1]] if replicas is None else replicas, [0, 0] if epochs is None else epochs]


DEEP = 100_000

MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "garbage": b"\xc1\xc1\xc1\xc1",
    "text": b"definitely not msgpack",
    "truncated": encode(sample(MsgType.REQUEST))[:-3],
    "truncated-header": encode(Hello(1, "tcp://x:1", 1))[:1],
    "truncated-tag": encode(Hello(1, "tcp://x:1", 1))[:2],
    "trailing-bytes": encode(Fenced(1, 1)) + b"\x00",
    "two-frames": encode(Fenced(1, 1)) * 2,
    "not-an-array": msgspec.msgpack.encode({"v": 1, "t": 1}),
    "map": msgspec.msgpack.encode({"tag": T(MsgType.FENCED), "node_id": 1}),
    "scalar": msgspec.msgpack.encode(7),
    "empty-array": pack(),
    "only-tag": pack(T(MsgType.HELLO)),
    "wrong-version": pack(T(MsgType.FENCED, V + 1), 1),
    "version-zero": pack(T(MsgType.FENCED, 0), 1),
    "version-2-layout": pack(2, int(MsgType.FENCED), 1),
    "version-2-tag": pack(T(MsgType.FENCED, 2), 1),
    "tag-as-string": pack("FENCED", 1),
    "tag-as-bool": pack(True, 1),
    "tag-as-float": pack(float(T(MsgType.FENCED)), 1),
    "tag-negative": pack(-T(MsgType.FENCED), 1),
    "tag-none": pack(None, 1),
    "unknown-type": pack(T(200)),  # type: ignore[arg-type]
    "type-zero": pack(V << 8, 1),
    "too-few-fields": pack(T(MsgType.HELLO), 1, "tcp://x:1"),
    "too-many-fields": pack(T(MsgType.FENCED), 1, 2, 3),
    "fields-on-empty-message": pack(T(MsgType.TABLE_REQUEST), 1),
    "str-for-int": pack(T(MsgType.FENCED), "1"),
    "float-for-int": pack(T(MsgType.FENCED), 1.0),
    "bool-for-int": pack(T(MsgType.FENCED), True),
    "none-for-int": pack(T(MsgType.FENCED), None),
    "int-for-str": pack(T(MsgType.HELLO), 1, 5, 1),
    "bytes-for-str": pack(T(MsgType.HELLO), 1, b"tcp://x:1", 1),
    "invalid-utf8": b"\x94" + msgspec.msgpack.encode(T(MsgType.HELLO)) + b"\x01\xa2\xc3\x28\x01",
    "str-for-float": pack(T(MsgType.HEARTBEAT_ACK), "now", 1, 1),
    "int-for-bool": pack(T(MsgType.STATUS), 1, None, [[1, "e", 2, 1, 0, 0.0]], [], 0, 0, 0.0, []),
    "node-id-zero": pack(T(MsgType.FENCED), 0),
    "node-id-negative": pack(T(MsgType.HEARTBEAT), -1, 1, 0.0, 0, 0),
    "client-negative": pack(T(MsgType.REQUEST), -1, 1, []),
    "request-id-negative": pack(T(MsgType.REQUEST), 1, -1, []),
    "ops-not-a-list": pack(T(MsgType.REQUEST), 1, 1, {"op": 1}),
    "ops-none": pack(T(MsgType.REQUEST), 1, 1, None),
    "op-too-short": pack(T(MsgType.REQUEST), 1, 1, [OP[:5]]),
    "op-too-long": pack(T(MsgType.REQUEST), 1, 1, [[*OP, 0]]),
    "op-not-a-list": pack(T(MsgType.REQUEST), 1, 1, ["op"]),
    "op-as-map": pack(T(MsgType.REQUEST), 1, 1, [{"kind": 1}]),
    "op-kind-str": pack(T(MsgType.REQUEST), 1, 1, [["GET", "k", None, 1, 0, 1]]),
    "op-key-none": pack(T(MsgType.REQUEST), 1, 1, [[1, None, None, 1, 0, 1]]),
    "op-value-int": pack(T(MsgType.REQUEST), 1, 1, [[2, "k", 5, 1, 0, 1]]),
    "op-slot-float": pack(T(MsgType.REQUEST), 1, 1, [[1, "k", None, 1.0, 0, 1]]),
    "one-bad-op-among-good": pack(T(MsgType.REQUEST), 1, 1, [OP, OP, [1, "k", None, 1, 0, "1"]]),
    "result-wrong-arity": pack(T(MsgType.REPLY), 1, 1, [[0]]),
    "result-status-none": pack(T(MsgType.REPLY), 1, 1, [[None, None]]),
    "write-wrong-type": pack(T(MsgType.REPLICATE), 1, 1, 0, [[1, 0, "k", 5, 1, 1, 1]]),
    "scan-limit-zero": pack(T(MsgType.SCAN), 1, "", "", 0, [1]),
    "scan-limit-above-page": pack(T(MsgType.SCAN), 1, "", "", MAX_SCAN_KEYS + 1, [1]),
    "scan-slot-negative": pack(T(MsgType.SCAN), 1, "", "", 10, [-1]),
    "scan-prefix-none": pack(T(MsgType.SCAN), 1, None, "", 10, [1]),
    "scan-page-node-zero": pack(T(MsgType.SCAN_PAGE), 1, 0, 0, []),
    "scan-page-key-none": pack(T(MsgType.SCAN_PAGE), 1, 1, 0, [None]),
    "write-negative-slot": pack(T(MsgType.REPLICATE), 1, 1, 0, [[-1, 0, "k", "v", 1, 1, 1]]),
    "replicate-committed-str": pack(T(MsgType.REPLICATE), 1, 1, "0", []),
    "replicate-committed-below-none": pack(T(MsgType.REPLICATE), 1, 1, -2, []),
    "tail-wrong-arity": pack(T(MsgType.RECONCILE), 1, 1, [[1, 0, []]]),
    "tail-write-wrong-arity": pack(T(MsgType.RECONCILE), 1, 1, [[1, 0, 0, [["k", "v"]]]]),
    "tail-high-str": pack(T(MsgType.RECONCILE), 1, 1, [[1, 0, "0", []]]),
    "commit-wrong-arity": pack(T(MsgType.COMMIT), 1),
    "commit-below-none": pack(T(MsgType.COMMIT), 1, -2),
    "rejected-slot-str": pack(T(MsgType.REPLICATE_ACK), 1, 1, ["17"]),
    "rejected-slot-negative": pack(T(MsgType.REPLICATE_ACK), 1, 1, [-1]),
    "table-wrong-arity": pack(T(MsgType.TABLE), TABLE_WIRE[:4]),
    "table-endpoints-pairs": pack(T(MsgType.TABLE), table_wire(1, 1, 2, [[1, "tcp://a:1"]], [])),
    "table-endpoint-id-str": pack(T(MsgType.TABLE), table_wire(1, 1, 2, {"1": "tcp://a:1"}, [])),
    "table-endpoint-not-str": pack(T(MsgType.TABLE), table_wire(1, 1, 2, {1: 5}, [])),
    "table-dead-str": pack(T(MsgType.TABLE), table_wire(1, 1, 2, ENDPOINTS, ["server1"])),
    "table-version-zero": pack(T(MsgType.TABLE), table_wire(0, 1, 2, ENDPOINTS, [])),
    "table-node-ids-not-dense": pack(T(MsgType.TABLE), table_wire(1, 1, 2, {1: "tcp://a:1", 3: "tcp://a:3"}, [])),
    "table-no-nodes": pack(T(MsgType.TABLE), table_wire(1, 1, 2, {}, [])),
    "table-rep-over-nodes": pack(T(MsgType.TABLE), table_wire(1, 2, 2, ENDPOINTS, [])),
    "table-rep-zero": pack(T(MsgType.TABLE), table_wire(1, 0, 2, ENDPOINTS, [])),
    "table-no-slots": pack(T(MsgType.TABLE), table_wire(1, 1, 0, ENDPOINTS, [])),
    "table-dead-unknown-node": pack(T(MsgType.TABLE), table_wire(1, 1, 2, ENDPOINTS, [2])),
    "status-table-wrong-type": pack(T(MsgType.STATUS), 1, "table", [], [], 0, 0, 0.0, []),
    "status-bad-table": pack(T(MsgType.STATUS), 1, table_wire(1, 1, 0, ENDPOINTS, []), [], [], 0, 0, 0.0, []),
    "table-replicas-short": pack(T(MsgType.TABLE), table_wire(1, 1, 2, ENDPOINTS, [], replicas=[[1]])),
    "table-epochs-short": pack(T(MsgType.TABLE), table_wire(1, 1, 2, ENDPOINTS, [], epochs=[0])),
    "table-epoch-negative": pack(T(MsgType.TABLE), table_wire(1, 1, 2, ENDPOINTS, [], epochs=[0, -1])),
    "table-replica-unknown": pack(T(MsgType.TABLE), table_wire(1, 1, 2, ENDPOINTS, [], replicas=[[1], [2]])),
    "table-replica-twice": pack(T(MsgType.TABLE), table_wire(1, 1, 2, ENDPOINTS, [], replicas=[[1], [1, 1]])),
    "table-replica-empty": pack(T(MsgType.TABLE), table_wire(1, 1, 2, ENDPOINTS, [], replicas=[[1], []])),
    "status-moving-short": pack(T(MsgType.STATUS), 1, None, [], [[17, 1]], 0, 0, 0.0, []),
    "status-healed-negative": pack(T(MsgType.STATUS), 1, None, [], [], -1, 0, 0.0, []),
    "status-draining-node-zero": pack(T(MsgType.STATUS), 1, None, [], [], 0, 0, 0.0, [0]),
    "status-old-arity-healing": pack(T(MsgType.STATUS), 1, None, [], [], 0, 0, 0.0),
    "drain-node-zero": pack(T(MsgType.DRAIN), 0),
    "drain-node-str": pack(T(MsgType.DRAIN), "server3"),
    "status-old-arity": pack(T(MsgType.STATUS), 1, None, []),
    "copy-slot-target-zero": pack(T(MsgType.COPY_SLOT), 17, 2, 0),
    "slot-copy-entry-short": pack(T(MsgType.SLOT_COPY), 9, 1, 17, 2, 5, [["k"]], []),
    "slot-copy-entry-long": pack(T(MsgType.SLOT_COPY), 9, 1, 17, 2, 5, [["k", "v", "x"]], []),
    "slot-copy-value-none": pack(T(MsgType.SLOT_COPY), 9, 1, 17, 2, 5, [["k", None]], []),
    "slot-copy-old-arity": pack(T(MsgType.SLOT_COPY), 9, 1, 17, 2, 5, []),
    "slot-copy-window-unaligned": pack(T(MsgType.SLOT_COPY), 9, 1, 17, 2, 5, [], [[1, 3, b"\x01"]]),
    "slot-copy-window-too-long": pack(
        T(MsgType.SLOT_COPY), 9, 1, 17, 2, 5, [], [[1, 0, bytes(APPLIED_WINDOW_BYTES + 1)]]
    ),
    "slot-copy-window-bits-str": pack(T(MsgType.SLOT_COPY), 9, 1, 17, 2, 5, [], [[1, 0, "01"]]),
    "slot-copy-window-client-negative": pack(T(MsgType.SLOT_COPY), 9, 1, 17, 2, 5, [], [[-1, 0, b"\x01"]]),
    "copy-done-wrong-arity": pack(T(MsgType.COPY_DONE), 1, 17, 2, 3),
    "non-str-map-key": b"\x81\x01\x01",
    "deep-nesting-as-tag": b"\x91" * DEEP + b"\x00",
    "deep-nesting-in-ops": b"\x94"
    + msgspec.msgpack.encode(T(MsgType.REQUEST))
    + b"\x01\x01"
    + b"\x91" * DEEP
    + b"\xc0",
    "deep-nesting-in-value": b"\x94"
    + msgspec.msgpack.encode(T(MsgType.REQUEST))
    + b"\x01\x01\x91\x96\x01\xa1k"
    + b"\x91" * DEEP,
    "huge-declared-array": b"\xdd\xff\xff\xff\xff" + msgspec.msgpack.encode(T(MsgType.FENCED)) + b"\x01",
    "huge-declared-str": b"\x94" + msgspec.msgpack.encode(T(MsgType.HELLO)) + b"\x01\xdb\xff\xff\xff\xff",
}


@pytest.mark.parametrize("frame", MALFORMED.values(), ids=MALFORMED.keys())
def test_decode_rejects_malformed_frames(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(frame)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong-version", f"unsupported protocol version {PROTOCOL_VERSION + 1}"),
        ("version-2-layout", "unsupported protocol version 2"),
        ("version-2-tag", "unsupported protocol version 2"),
        ("unknown-type", "unknown message type 200"),
        ("too-many-fields", "FENCED: "),
        ("op-too-long", "REQUEST: .*\\$\\[3\\]\\[0\\]"),
        ("table-rep-over-nodes", "TABLE: table: inconsistent shape"),
        ("trailing-bytes", "malformed"),
        ("garbage", "malformed frame \\(4 bytes\\)"),
    ],
)
def test_protocol_error_says_what_is_wrong(case: str, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode(MALFORMED[case])


# --- properties: decode never lets anything but a message or ProtocolError out, batches round-trip ---

MESSAGE_TYPES = tuple(type(m) for _, m in SAMPLES)
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
COUNT = st.integers(min_value=0, max_value=2**64 - 1)
NODE_ID = st.integers(min_value=1, max_value=2**64 - 1)
TAGS = st.sampled_from([T(t) for t in MsgType]) | st.integers(min_value=-(2**63), max_value=2**64 - 1)
MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | INT64 | COUNT | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=7) | st.dictionaries(INT64 | st.text(max_size=4), inner, max_size=3),
    max_leaves=24,
)


def decodes_or_refuses(frame: bytes) -> None:
    try:
        message = decode(frame)
    except ProtocolError:
        return
    assert isinstance(message, MESSAGE_TYPES)
    assert type(decode(encode(message))) is type(message)  # whatever is accepted can be sent on


@settings(max_examples=1000, deadline=None)
@given(st.binary())
def test_decode_of_any_bytes_is_a_message_or_protocol_error(frame: bytes) -> None:
    decodes_or_refuses(frame)


@settings(max_examples=1000, deadline=None)
@given(TAGS, st.lists(MSGPACK_VALUES, max_size=6))
def test_decode_of_any_msgpack_array_is_a_message_or_protocol_error(tag: int, fields: list[Any]) -> None:
    decodes_or_refuses(pack(tag, *fields))


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([encode(m) for _, m in SAMPLES]), st.data())
def test_decode_of_damaged_frames_is_a_message_or_protocol_error(frame: bytes, data: st.DataObject) -> None:
    at = data.draw(st.integers(min_value=0, max_value=len(frame)))
    cut = data.draw(st.integers(min_value=0, max_value=3))
    decodes_or_refuses(frame[:at] + data.draw(st.binary(max_size=4)) + frame[at + cut :])


OPS = st.builds(Op, INT64, st.text(), st.none() | st.text(), INT64, INT64, INT64)
WRITES = st.builds(Write, COUNT, COUNT, st.text(), st.text(), COUNT, COUNT, INT64)
WINDOWS = st.builds(
    AppliedWindow, COUNT, st.integers(min_value=-(2**60), max_value=2**60).map(lambda i: i * 8), st.binary(max_size=64)
)
BATCHES = st.one_of(
    st.builds(Request, COUNT, COUNT, st.lists(OPS, max_size=70)),
    st.builds(Reply, COUNT, NODE_ID, st.lists(st.builds(Result, INT64, st.none() | st.text()), max_size=70)),
    st.builds(Replicate, COUNT, NODE_ID, st.integers(min_value=-1, max_value=2**64 - 1), st.lists(WRITES, max_size=70)),
    st.builds(
        Reconcile, COUNT, NODE_ID, st.lists(st.builds(SlotTail, COUNT, COUNT, COUNT, st.lists(WRITES, max_size=5)))
    ),
    st.builds(
        SlotCopy,
        COUNT,
        NODE_ID,
        COUNT,
        COUNT,
        COUNT,
        st.lists(st.tuples(st.text(), st.text()), max_size=70),
        st.lists(WINDOWS, max_size=5),
    ),
)


@settings(max_examples=300, deadline=None)
@given(BATCHES)
def test_batches_round_trip(message: Message) -> None:
    assert decode(encode(message)) == message


# --- keys and values ---


@pytest.mark.parametrize(
    "key",
    ["k", "key1", "k" * MAX_KEY_BYTES, "é" * 128, "€" * 85 + "a", "日本語", "a,b", "'quoted'", "-dash"],
    ids=["one-char", "plain", "256-ascii", "256-utf8", "256-mixed", "cjk", "comma", "quotes", "dash"],
)
def test_valid_keys(key: str) -> None:
    assert len(key.encode()) <= MAX_KEY_BYTES
    assert check_key(key) is None


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "empty"),
        ("k" * (MAX_KEY_BYTES + 1), "256 bytes"),
        ("é" * 128 + "a", "256 bytes"),
        ("€" * 86, "256 bytes"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
        ("a\nb", "whitespace"),
        ("trailing ", "whitespace"),
        ("a\u00a0b", "whitespace"),
        ("a\u2003b", "whitespace"),
    ],
    ids=["empty", "257-ascii", "257-utf8", "258-utf8", "space", "tab", "newline", "trailing-space", "nbsp", "em-space"],
)
def test_invalid_keys(key: str, reason: str) -> None:
    problem = check_key(key)
    assert problem is not None
    assert reason in problem


@pytest.mark.parametrize(
    "value",
    ["v", "", "x" * MAX_VALUE_BYTES, "é" * (MAX_VALUE_BYTES // 2), "a,b,c"],
    ids=["plain", "empty", "1MiB-ascii", "1MiB-utf8", "commas"],
)
def test_valid_values(value: str) -> None:
    assert check_value(value) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("x" * (MAX_VALUE_BYTES + 1), "1 MiB"),
        ("é" * (MAX_VALUE_BYTES // 2) + "x", "1 MiB"),
        ("a b", "whitespace"),
        ("a\r\nb", "whitespace"),
        ("a\u00a0b", "whitespace"),
    ],
    ids=["1MiB+1-ascii", "1MiB+1-utf8", "space", "crlf", "nbsp"],
)
def test_invalid_values(value: str, reason: str) -> None:
    problem = check_value(value)
    assert problem is not None
    assert reason in problem


# --- timing ---


def test_default_timing_keeps_the_lease_inside_failure_detection() -> None:
    timing = Timing()
    assert 0 < timing.heartbeat < timing.lease < timing.dead_after


@pytest.mark.parametrize(
    ("heartbeat", "lease", "dead_after"), [(0, 0.5, 0.7), (0.1, 0.7, 0.7), (0.1, 0.8, 0.7), (0.5, 0.5, 0.7)]
)
def test_timing_refuses_a_lease_that_could_outlive_detection(heartbeat: float, lease: float, dead_after: float) -> None:
    with pytest.raises(ValueError):
        Timing(heartbeat, lease, dead_after)
