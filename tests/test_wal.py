"""The write-ahead log on disk: framing, cut tails, corruption, snapshots and recovery, without a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvcluster.core.placement import initial_table
from kvcluster.core.records import TableSeen
from kvcluster.core.replica import Replica, make_version
from kvcluster.core.wire import Write
from kvcluster.errors import DataCorrupt
from kvcluster.runtime.recovery import recover
from kvcluster.runtime.snapshots import Snapshot
from kvcluster.runtime.wal import HEADER, FsyncPolicy, WriteAheadLog, numbered

SLOTS = 16
TABLE = initial_table({1: "tcp://a:1", 2: "tcp://b:2"}, 2, SLOTS)


def logged_replica() -> Replica:
    replica = Replica(SLOTS)
    replica.journal = [TableSeen(TABLE)]
    return replica


def put(replica: Replica, slot: int, key: str, value: str, counter: int) -> None:
    replica.apply(Write(slot, 1, key, value, make_version(1, counter), 7, counter))


def flush(replica: Replica, wal: WriteAheadLog) -> None:
    assert replica.journal is not None
    wal.append(replica.journal)
    replica.journal.clear()
    assert wal.write_out()


def write_keys(directory: Path, count: int, policy: FsyncPolicy = FsyncPolicy.NO) -> Replica:
    replica = logged_replica()
    wal = WriteAheadLog(directory, policy, 1)
    for i in range(count):
        put(replica, i % SLOTS, f"k{i}", f"v{i}", i + 1)
    flush(replica, wal)
    wal.close()
    return replica


def segment(directory: Path) -> Path:
    return numbered(directory, ".wal")[-1][1]


def test_recovery_replays_every_write_with_its_op_ids(tmp_path: Path) -> None:
    written = write_keys(tmp_path, 500, FsyncPolicy.ALWAYS)
    recovered = recover(tmp_path)
    assert recovered.replica is not None
    assert [s.blobs for s in recovered.replica.data] == [s.blobs for s in written.data]
    assert recovered.replica.keys == 500
    assert recovered.replica.high == written.high
    assert recovered.replica.seen_op(7, 499)
    assert recovered.table == TABLE
    assert recovered.next_seq == 2


def test_a_cut_tail_is_cut_at_the_last_whole_record(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_keys(tmp_path, 100)
    path = segment(tmp_path)
    size = path.stat().st_size
    with path.open("r+b") as file:
        file.truncate(size - 5)
    recovered = recover(tmp_path)
    assert recovered.replica is not None
    assert recovered.replica.keys == 99  # the last put lost its tail, every earlier one survives
    assert "cut at byte" in caplog.text
    assert path.stat().st_size < size - 5  # the half record is gone from the file too


def test_a_flipped_byte_inside_a_segment_is_refused(tmp_path: Path) -> None:
    write_keys(tmp_path, 100)
    path = segment(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataCorrupt, match="corrupt at byte"):
        recover(tmp_path)


def test_a_damaged_length_is_corruption_not_a_cut_tail(tmp_path: Path) -> None:
    """A length that runs past the end looks like a record cut short; the whole records after it say it is not."""
    write_keys(tmp_path, 100)
    path = segment(tmp_path)
    data = bytearray(path.read_bytes())
    offset = 0
    for _ in range(50):  # the header of the 51st record, with 50 whole ones after it
        length, _crc = HEADER.unpack_from(data, offset)
        offset += HEADER.size + length
    data[offset + 3] ^= 0x7F  # the length's high byte: now it points far past the end of the file
    path.write_bytes(bytes(data))
    with pytest.raises(DataCorrupt, match="whole records follow"):
        recover(tmp_path)


def test_a_whole_last_record_with_a_bad_crc_is_damage_not_a_cut_tail(tmp_path: Path) -> None:
    write_keys(tmp_path, 10)
    path = segment(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataCorrupt, match="CRC mismatch"):
        recover(tmp_path)


def take_snapshot(directory: Path, replica: Replica, wal: WriteAheadLog) -> Snapshot:
    snapshot = Snapshot(directory, wal.rotate(), replica, TableSeen(TABLE))
    while not snapshot.done():
        snapshot.step()
    assert snapshot.failed is None
    return snapshot


def test_a_snapshot_replaces_the_segments_before_it(tmp_path: Path) -> None:
    replica = logged_replica()
    wal = WriteAheadLog(tmp_path, FsyncPolicy.EVERYSEC, 1)
    for i in range(300):
        put(replica, i % SLOTS, f"k{i}", f"v{i}", i + 1)
    flush(replica, wal)
    take_snapshot(tmp_path, replica, wal)
    for i in range(300, 400):  # after the snapshot: only in the new segment
        put(replica, i % SLOTS, f"k{i % 50}", f"w{i}", i + 1)
    replica.drop_slot(3)
    flush(replica, wal)
    wal.close()
    assert [seq for seq, _ in numbered(tmp_path, ".wal")] == [2]
    assert [seq for seq, _ in numbered(tmp_path, ".snap")] == [2]
    recovered = recover(tmp_path)
    assert recovered.replica is not None
    assert [s.blobs for s in recovered.replica.data] == [s.blobs for s in replica.data]
    assert recovered.replica.keys == replica.keys


def test_a_snapshot_that_lost_its_end_is_refused(tmp_path: Path) -> None:
    replica = logged_replica()
    wal = WriteAheadLog(tmp_path, FsyncPolicy.NO, 1)
    put(replica, 1, "a", "b", 1)
    flush(replica, wal)
    take_snapshot(tmp_path, replica, wal)
    wal.close()
    snap = numbered(tmp_path, ".snap")[-1][1]
    data = bytearray(snap.read_bytes())
    data[20] ^= 0x01
    snap.write_bytes(bytes(data))
    with pytest.raises(DataCorrupt):
        recover(tmp_path)


def test_an_unsealed_snapshot_is_ignored(tmp_path: Path) -> None:
    write_keys(tmp_path, 20)
    (tmp_path / "0000000000000002.snap.tmp").write_bytes(b"half a snapshot")
    recovered = recover(tmp_path)
    assert recovered.replica is not None
    assert recovered.replica.keys == 20
    assert not list(tmp_path.glob("*.tmp"))


def test_undone_writes_stay_undone_after_recovery(tmp_path: Path) -> None:
    replica = logged_replica()
    wal = WriteAheadLog(tmp_path, FsyncPolicy.NO, 1)
    put(replica, 2, "kept", "old", 1)
    replica.apply_replicated(1, Write(2, 1, "kept", "new", make_version(1, 2), 8, 1))
    replica.apply_replicated(1, Write(2, 1, "gone", "x", make_version(1, 3), 8, 2))
    replica.reconcile(2, 2, make_version(1, 1), [])  # the new primary never had them: both are undone
    flush(replica, wal)
    wal.close()
    recovered = recover(tmp_path)
    assert recovered.replica is not None
    assert dict(recovered.replica.items(2)) == {"kept": "old"}
    assert not recovered.replica.seen_op(8, 1)


def test_an_empty_directory_recovers_nothing(tmp_path: Path) -> None:
    recovered = recover(tmp_path / "new")
    assert recovered.replica is None
    assert recovered.table is None


def test_a_simulated_power_cut_keeps_the_synced_records_and_a_prefix_of_the_rest() -> None:
    import random  # noqa: PLC0415

    from kvcluster.sim.disk import SimDisk  # noqa: PLC0415

    replica = logged_replica()
    for i in range(10):
        put(replica, 1, f"k{i}", "v", i + 1)
    assert replica.journal is not None
    disk = SimDisk()
    disk.write(replica.journal[:6])
    disk.synced = 6
    disk.write(replica.journal[6:])
    kept = [len(disk.records)]
    for seed in range(20):
        copy = SimDisk()
        copy.write(disk.records)
        copy.synced = disk.synced
        copy.power_cut(random.Random(seed))
        assert copy.records == disk.records[: len(copy.records)]
        kept.append(len(copy.records))
        recovered = copy.recover()
        assert recovered is not None
        assert recovered[0].keys == len(copy.records) - 1  # the table, then one put per record
    assert min(kept) >= 6
    assert len(set(kept)) > 1
