"""A storage node's write-ahead log on disk: framing, segments, the fsync policy and reading it back.

The log is a series of segments, ``<seq>.wal``, each a run of frames::

    length (4 bytes, little endian) | CRC32 of the payload (4 bytes) | payload (one encoded record)

The node appends every change of a pass (``core/records.py``) to one buffer
and writes it with one ``write`` before it sends any acknowledgement that
depends on it; under ``always`` it also calls ``fdatasync`` before those
acknowledgements leave (a group commit: one sync per pass, whatever the
number of writes in it). Under ``everysec`` a thread syncs once a second, off
the loop; under ``no`` the kernel decides. A ``write`` that lands in the page
cache survives a kill of the process; only a sync survives a power cut.

A write that fails (the disk is full, the directory unwritable) is cut back
to the last whole frame and kept in the buffer to try again, so a segment
never holds half a record followed by more records.
"""

from __future__ import annotations

import enum
import logging
import os
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kvcluster.core.records import Record, encode_record

log = logging.getLogger(__name__)

HEADER = struct.Struct("<II")
SEGMENT_SUFFIX = ".wal"
SNAPSHOT_SUFFIX = ".snap"
SLOW_SYNC = 1.0  # seconds: a sync slower than this is logged, as etcd does
SYNC_SAMPLES = 512  # recent sync durations kept for the p99


class FsyncPolicy(enum.StrEnum):
    """When the log is synced to the disk, as Redis's ``appendfsync``."""

    ALWAYS = "always"  # before every acknowledgement, once per pass of the loop
    EVERYSEC = "everysec"  # once a second, by a thread
    NO = "no"  # when the kernel writes it back


def file_name(seq: int, suffix: str) -> str:
    return f"{seq:016d}{suffix}"


def numbered(directory: Path, suffix: str) -> list[tuple[int, Path]]:
    """The files of ``directory`` named ``<seq><suffix>``, oldest first."""
    found = []
    for path in directory.glob(f"*{suffix}"):
        stem = path.name.removesuffix(suffix)
        if stem.isdigit():
            found.append((int(stem), path))
    return sorted(found)


def frame(record: Record) -> bytes:
    payload = encode_record(record)
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True, slots=True)
class Damage:
    """Where a file stops holding whole frames, and why; ``torn`` when nothing whole follows (a cut tail)."""

    offset: int
    problem: str
    torn: bool


def read_frames(data: bytes) -> tuple[list[bytes], Damage | None]:
    """The payloads of the whole frames at the start of ``data``, and what is wrong after them, if anything."""
    payloads: list[bytes] = []
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < HEADER.size:
            return payloads, Damage(offset, "a frame header cut short", torn=True)
        length, crc = HEADER.unpack_from(data, offset)
        start = offset + HEADER.size
        if start + length > end:
            if _whole_frame_after(data, offset + 1):
                # A crash cuts only the last record short: whole records after this one mean its length was damaged.
                return payloads, Damage(offset, "a record's length runs past the end, yet whole records follow", False)
            return payloads, Damage(offset, "a record cut short", torn=True)
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            # Whole but wrong is damage wherever it lies: a crash cuts a record short, it does not rewrite one.
            return payloads, Damage(offset, "CRC mismatch", torn=False)
        payloads.append(payload)
        offset = start + length
    return payloads, None


def _whole_frame_after(data: bytes, offset: int) -> bool:
    """Whether a whole frame with a matching CRC starts anywhere from ``offset`` on.

    After a real tear only the rest of one record follows, so this looks at a few bytes; after a damaged
    length, the next record is found within one record's size.
    """
    end = len(data)
    for position in range(offset, end - HEADER.size + 1):
        length, crc = HEADER.unpack_from(data, position)
        start = position + HEADER.size
        if 0 < length <= end - start and zlib.crc32(data[start : start + length]) == crc:
            return True
    return False


def sync_directory(directory: Path) -> None:
    """Make a file created or renamed in ``directory`` durable: the entry lives in the directory."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SyncTimes:
    """Recent sync durations: the last one, the p99, and a warning for a slow one."""

    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=SYNC_SAMPLES)
        self.lock = threading.Lock()

    def timed_sync(self, fd: int) -> None:
        started = time.monotonic()
        os.fdatasync(fd)
        took = time.monotonic() - started
        with self.lock:
            self.samples.append(took)
        if took > SLOW_SYNC:
            log.warning("log sync took %.2f s, expected less than %.0f s", took, SLOW_SYNC)

    def last_ms(self) -> float:
        with self.lock:
            return self.samples[-1] * 1000 if self.samples else 0.0

    def p99_ms(self) -> float:
        with self.lock:
            ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000 if ordered else 0.0


class WriteAheadLog:
    """The open segment of a node's log, and the buffer of records not yet written to it."""

    def __init__(self, directory: Path, policy: FsyncPolicy, seq: int) -> None:
        self.directory = directory
        self.policy = policy
        self.buffer = bytearray()
        self.written = 0  # bytes written since the last snapshot began
        self.syncs = SyncTimes()
        self.error: str | None = None  # why the last write failed, until one succeeds
        self.seq = seq
        self.fd = self._open(seq)
        self.dirty = threading.Event()  # written since the last sync (``everysec``)
        self.closed = threading.Event()
        self.sync_lock = threading.Lock()  # the sync thread and rotate never use a closed descriptor
        if policy == FsyncPolicy.EVERYSEC:
            threading.Thread(target=self._sync_every_second, name="wal-sync", daemon=True).start()

    def _open(self, seq: int) -> int:
        path = self.directory / file_name(seq, SEGMENT_SUFFIX)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        sync_directory(self.directory)
        return fd

    def append(self, records: list[Record]) -> None:
        buffer = self.buffer
        for record in records:
            buffer += frame(record)

    def pending(self) -> bool:
        return bool(self.buffer)

    def write_out(self) -> bool:
        """Write the buffer (and sync it under ``always``); False, keeping it, if the disk refused."""
        if not self.buffer:
            return True
        start = os.lseek(self.fd, 0, os.SEEK_END)
        data = bytes(self.buffer)
        try:
            done = os.write(self.fd, data)
            while done < len(data):
                done += os.write(self.fd, data[done:])
            if self.policy == FsyncPolicy.ALWAYS:
                self.syncs.timed_sync(self.fd)
        except OSError as exc:
            self._fail(exc, start)
            return False
        self.written += len(self.buffer)
        self.buffer.clear()
        if self.error is not None:
            log.warning("the log is writable again")
            self.error = None
        self.dirty.set()
        return True

    def _fail(self, exc: OSError, start: int) -> None:
        reason = exc.strerror or str(exc)
        if self.error != reason:
            log.error("cannot write the log in %s: %s; writes are refused until it can", self.directory, reason)
        self.error = reason
        try:
            os.ftruncate(self.fd, start)  # never leave half a frame that later frames would follow
        except OSError as cut:
            log.error("cannot cut the log back to its last whole record: %s", cut)  # noqa: TRY400

    def rotate(self) -> int:
        """Start the next segment (the records before it go into a snapshot); return its number."""
        with self.sync_lock:
            os.fdatasync(self.fd)
            os.close(self.fd)
            self.seq += 1
            self.fd = self._open(self.seq)
        self.written = 0
        return self.seq

    def close(self) -> None:
        self.closed.set()
        with self.sync_lock:
            if self.policy != FsyncPolicy.NO:
                os.fdatasync(self.fd)
            os.close(self.fd)
            self.fd = -1

    def _sync_every_second(self) -> None:
        while not self.closed.wait(1.0):
            if not self.dirty.is_set():
                continue
            self.dirty.clear()
            with self.sync_lock:
                if self.fd >= 0:
                    try:
                        self.syncs.timed_sync(self.fd)
                    except OSError as exc:
                        log.error("log sync failed: %s", exc)  # noqa: TRY400 - the reason is all there is to say


def segments_from(directory: Path, first: int) -> Iterator[tuple[int, Path]]:
    return ((seq, path) for seq, path in numbered(directory, SEGMENT_SUFFIX) if seq >= first)
