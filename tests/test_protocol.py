"""The wire protocol: every message round-trips, anything malformed raises ProtocolError, key and value limits."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from kvcluster.errors import ProtocolError
from kvcluster.protocol import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    PROTOCOL_VERSION,
    Commit,
    CopyDone,
    CopySlot,
    Drain,
    Fenced,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Message,
    MsgType,
    NodeReport,
    NotReady,
    Op,
    OpKind,
    Reconcile,
    Replicate,
    ReplicateAck,
    Reply,
    Request,
    Result,
    SlotCopy,
    SlotTail,
    Status,
    StatusReport,
    StatusRequest,
    Table,
    TableData,
    TableRequest,
    Timing,
    Write,
    check_key,
    check_value,
    decode,
    encode,
)

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
    (MsgType.HEARTBEAT, Heartbeat(3, 12345.678, 7, 100)),
    (MsgType.HEARTBEAT_ACK, HeartbeatAck(12345.678, 7)),
    (MsgType.TABLE_REQUEST, TableRequest()),
    (MsgType.TABLE, Table(TABLE)),
    (MsgType.STATUS_REQUEST, StatusRequest()),
    (
        MsgType.STATUS,
        StatusReport(
            99, TABLE, [NodeReport(1, "tcp://127.0.0.1:5001", 11, True, 5, 12.5)], [[2, 1, 3]], 4, 900, 1.5, [2]
        ),
    ),
    (MsgType.STATUS, StatusReport(99, None, [], [], 0, 0, 0.0, [])),
    (MsgType.DRAIN, Drain(3)),
    (MsgType.COPY_SLOT, CopySlot(17, 2, 3)),
    (MsgType.SLOT_COPY, SlotCopy(9, 1, 17, 2, (2 << 40) | 5, [("k", "v"), ("k2", "")])),
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
    (MsgType.FENCED, Fenced(4)),
    (MsgType.NOT_READY, NotReady(2, 5)),
]


@pytest.mark.parametrize(("msg_type", "message"), SAMPLES, ids=[f"{t.name}-{i}" for i, (t, _) in enumerate(SAMPLES)])
def test_round_trip(msg_type: MsgType, message: Message) -> None:
    frame = encode(message)
    raw = msgpack.unpackb(frame)
    assert raw[:2] == [PROTOCOL_VERSION, int(msg_type)]
    assert decode(frame) == message


def test_every_message_type_is_sampled() -> None:
    assert {t for t, _ in SAMPLES} == set(MsgType)


def test_decoded_batches_keep_their_named_fields() -> None:
    request = decode(encode(next(m for t, m in SAMPLES if t == MsgType.REQUEST)))
    assert isinstance(request, Request)
    assert request.ops[0].key == "k"
    assert request.ops[0].value == "v"
    reply = decode(encode(next(m for t, m in SAMPLES if t == MsgType.REPLY)))
    assert isinstance(reply, Reply)
    assert reply.results[1].status == Status.NOT_FOUND


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(TypeError):
        encode("hello")  # type: ignore[arg-type]


def pack(*items: Any) -> bytes:
    packed: bytes = msgpack.packb(list(items), use_bin_type=True)
    return packed


V = PROTOCOL_VERSION
OP = [int(OpKind.GET), "k", None, 1, 0, 1]
TABLE_WIRE = [1, 1, 2, [[1, "tcp://a:1"]], [], [[1], [1]], [0, 0]]


def table_wire(*fields: Any, replicas: Any = None, epochs: Any = None) -> list[Any]:
    """A table on the wire with two slots: the given leading fields, then replica lists and epochs."""
    return [*fields, [[1], [1]] if replicas is None else replicas, [0, 0] if epochs is None else epochs]


MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "garbage": b"\xc1\xc1\xc1\xc1",
    "text": b"definitely not msgpack",
    "truncated": encode(SAMPLES[8][1])[:-3],
    "truncated-header": encode(Hello(1, "tcp://x:1", 1))[:1],
    "trailing-bytes": encode(Fenced(1)) + b"\x00",
    "not-an-array": msgpack.packb({"v": 1, "t": 1}),
    "scalar": msgpack.packb(7),
    "only-version": pack(V),
    "wrong-version": pack(V + 1, int(MsgType.FENCED), 1),
    "version-zero": pack(0, int(MsgType.FENCED), 1),
    "version-as-string": pack("1", int(MsgType.FENCED), 1),
    "version-as-bool": pack(True, int(MsgType.FENCED), 1),
    "version-as-float": pack(float(V), int(MsgType.FENCED), 1),
    "unknown-type": pack(V, 200),
    "type-as-bool": pack(V, True, 1, "tcp://x:1", 1),
    "type-as-float": pack(V, float(MsgType.FENCED), 1),
    "type-as-string": pack(V, "FENCED", 1),
    "too-few-fields": pack(V, int(MsgType.HELLO), 1, "tcp://x:1"),
    "too-many-fields": pack(V, int(MsgType.FENCED), 1, 2),
    "fields-on-empty-message": pack(V, int(MsgType.TABLE_REQUEST), 1),
    "str-for-int": pack(V, int(MsgType.FENCED), "1"),
    "float-for-int": pack(V, int(MsgType.FENCED), 1.0),
    "bool-for-int": pack(V, int(MsgType.FENCED), True),
    "none-for-int": pack(V, int(MsgType.FENCED), None),
    "int-for-str": pack(V, int(MsgType.HELLO), 1, 5, 1),
    "bytes-for-str": pack(V, int(MsgType.HELLO), 1, b"tcp://x:1", 1),
    "str-for-float": pack(V, int(MsgType.HEARTBEAT_ACK), "now", 1),
    "int-for-bool": pack(V, int(MsgType.STATUS), 1, None, [[1, "e", 2, 1, 0, 0.0]], [], 0, 0, 0.0, []),
    "ops-not-a-list": pack(V, int(MsgType.REQUEST), 1, 1, {"op": 1}),
    "op-too-short": pack(V, int(MsgType.REQUEST), 1, 1, [OP[:5]]),
    "op-too-long": pack(V, int(MsgType.REQUEST), 1, 1, [[*OP, 0]]),
    "op-not-a-list": pack(V, int(MsgType.REQUEST), 1, 1, ["op"]),
    "op-key-none": pack(V, int(MsgType.REQUEST), 1, 1, [[1, None, None, 1, 0, 1]]),
    "op-value-int": pack(V, int(MsgType.REQUEST), 1, 1, [[2, "k", 5, 1, 0, 1]]),
    "result-wrong-arity": pack(V, int(MsgType.REPLY), 1, 1, [[0]]),
    "write-wrong-type": pack(V, int(MsgType.REPLICATE), 1, 1, 0, [[1, 0, "k", None, 1, 1, 1]]),
    "replicate-committed-str": pack(V, int(MsgType.REPLICATE), 1, 1, "0", []),
    "tail-wrong-arity": pack(V, int(MsgType.RECONCILE), 1, 1, [[1, 0, []]]),
    "tail-write-wrong-arity": pack(V, int(MsgType.RECONCILE), 1, 1, [[1, 0, 0, [["k", "v"]]]]),
    "tail-high-str": pack(V, int(MsgType.RECONCILE), 1, 1, [[1, 0, "0", []]]),
    "commit-wrong-arity": pack(V, int(MsgType.COMMIT), 1),
    "rejected-slot-str": pack(V, int(MsgType.REPLICATE_ACK), 1, 1, ["17"]),
    "table-wrong-arity": pack(V, int(MsgType.TABLE), TABLE_WIRE[:4]),
    "table-endpoints-map": pack(V, int(MsgType.TABLE), table_wire(1, 1, 2, {1: "tcp://a:1"}, [])),
    "table-endpoint-pair-short": pack(V, int(MsgType.TABLE), table_wire(1, 1, 2, [[1]], [])),
    "table-endpoint-id-str": pack(V, int(MsgType.TABLE), table_wire(1, 1, 2, [["1", "tcp://a:1"]], [])),
    "table-dead-str": pack(V, int(MsgType.TABLE), table_wire(1, 1, 2, [[1, "tcp://a:1"]], ["server1"])),
    "table-node-ids-not-dense": pack(
        V, int(MsgType.TABLE), table_wire(1, 1, 2, [[1, "tcp://a:1"], [3, "tcp://a:3"]], [])
    ),
    "table-rep-over-nodes": pack(V, int(MsgType.TABLE), table_wire(1, 2, 2, [[1, "tcp://a:1"]], [])),
    "table-rep-zero": pack(V, int(MsgType.TABLE), table_wire(1, 0, 2, [[1, "tcp://a:1"]], [])),
    "table-no-slots": pack(V, int(MsgType.TABLE), table_wire(1, 1, 0, [[1, "tcp://a:1"]], [])),
    "table-dead-unknown-node": pack(V, int(MsgType.TABLE), table_wire(1, 1, 2, [[1, "tcp://a:1"]], [2])),
    "table-replicas-short": pack(V, int(MsgType.TABLE), table_wire(1, 1, 2, [[1, "tcp://a:1"]], [], replicas=[[1]])),
    "table-epochs-short": pack(V, int(MsgType.TABLE), table_wire(1, 1, 2, [[1, "tcp://a:1"]], [], epochs=[0])),
    "table-replica-unknown": pack(
        V, int(MsgType.TABLE), table_wire(1, 1, 2, [[1, "tcp://a:1"]], [], replicas=[[1], [2]])
    ),
    "table-replica-twice": pack(
        V, int(MsgType.TABLE), table_wire(1, 1, 2, [[1, "tcp://a:1"]], [], replicas=[[1], [1, 1]])
    ),
    "table-replica-empty": pack(V, int(MsgType.TABLE), table_wire(1, 1, 2, [[1, "tcp://a:1"]], [], replicas=[[1], []])),
    "status-table-wrong-type": pack(V, int(MsgType.STATUS), 1, "table", []),
    "non-str-map-key": b"\x81\x01\x01",
}


@pytest.mark.parametrize("frame", MALFORMED.values(), ids=MALFORMED.keys())
def test_decode_rejects_malformed_frames(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(frame)


def test_protocol_error_is_a_kvcluster_error_with_a_message() -> None:
    with pytest.raises(ProtocolError, match="version"):
        decode(MALFORMED["wrong-version"])
    with pytest.raises(ProtocolError, match="FENCED"):
        decode(MALFORMED["too-many-fields"])


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
