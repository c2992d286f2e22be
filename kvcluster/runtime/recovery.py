"""Reading a storage node's data directory back at start: the newest whole snapshot, then the log after it.

A cut tail (a crash in the middle of a write) is normal: the last segment is
cut at its last whole record, with one log line. Anything else that fails
its length or CRC check (a damaged frame with more data after it, damage in
an older segment, a snapshot without its ``End``) is corruption: the node
refuses to start, naming the file and the byte, rather than serve what it
cannot trust. Its peers hold the same slots; moving the directory aside lets
it rejoin with no data and receive them again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import msgspec

from kvcluster.core.records import End, Record, decode_record
from kvcluster.core.replica import Rebuild, Replica
from kvcluster.core.wire import TableData
from kvcluster.errors import DataCorrupt
from kvcluster.runtime.snapshots import TEMPORARY
from kvcluster.runtime.wal import SEGMENT_SUFFIX, SNAPSHOT_SUFFIX, Damage, numbered, read_frames

log = logging.getLogger(__name__)


@dataclass
class Recovered:
    """What a data directory held: the replica (``None`` when empty), its last table, and the next segment."""

    replica: Replica | None
    table: TableData | None
    next_seq: int
    records: int
    log_bytes: int  # of the segments replayed: what a snapshot would spare the next start


def _replay(rebuild: Rebuild, path: Path, payloads: list[bytes]) -> Record | None:
    """Feed a file's records to ``rebuild``; return the last one."""
    last: Record | None = None
    for payload in payloads:
        try:
            last = decode_record(payload)
        except msgspec.DecodeError as exc:
            raise DataCorrupt(f"{path}: a record that passed its CRC does not decode ({exc})") from None
        if not rebuild.feed(last):
            raise DataCorrupt(f"{path}: data before any routing table")
    return last


def recover(directory: Path) -> Recovered:
    """Rebuild a replica from ``directory`` (created if missing); ``DataCorrupt`` if it cannot be trusted."""
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in directory.glob(f"*{TEMPORARY}"):
        leftover.unlink()  # a snapshot that was never sealed: the log still holds everything it would have
    rebuild = Rebuild()
    first = 0
    snapshots = numbered(directory, SNAPSHOT_SUFFIX)
    if snapshots:
        first, path = snapshots[-1]
        payloads, damage = read_frames(path.read_bytes())
        if damage is not None:
            raise _corrupt(directory, path, damage)
        if not isinstance(_replay(rebuild, path, payloads), End):
            raise DataCorrupt(f"{path} has no end record; move {directory} aside to rejoin with no data")
    segments = [(seq, path) for seq, path in numbered(directory, SEGMENT_SUFFIX) if seq >= first]
    log_bytes = 0
    for index, (_, path) in enumerate(segments):
        data = path.read_bytes()
        log_bytes += len(data)
        payloads, damage = read_frames(data)
        _replay(rebuild, path, payloads)
        if damage is None:
            continue
        if not damage.torn or index != len(segments) - 1:
            raise _corrupt(directory, path, damage)
        log.warning("%s: cut at byte %d (%s): a write interrupted by a crash", path, damage.offset, damage.problem)
        with path.open("r+b") as file:
            file.truncate(damage.offset)
            os.fsync(file.fileno())
    last = max([first, *(seq for seq, _ in segments)])
    rebuilt = rebuild.result()
    replica, table = rebuilt if rebuilt is not None else (None, None)
    return Recovered(replica, table, last + 1, rebuild.records, log_bytes)


def _corrupt(directory: Path, path: Path, damage: Damage) -> DataCorrupt:
    return DataCorrupt(
        f"{path} is corrupt at byte {damage.offset} ({damage.problem}); "
        f"refusing to serve it: move {directory} aside to rejoin with no data"
    )
