"""Snapshots of a storage node's replica, written a few slots per pass while the node serves.

A snapshot starts by rotating the log to a new segment ``S`` and becomes
``<S>.snap``: it covers every record before segment ``S`` and perhaps some
after it, which recovery replays again harmlessly (records are results, not
deltas: ``core/records.py``). No pass of the loop encodes more than
``STEP_BUDGET`` of it, and no process is forked (a ZeroMQ context does not
survive a fork). The file becomes visible only once whole: it is written
under a temporary name, synced, renamed, and its directory synced, by a
thread (a sync releases the interpreter), which then deletes the segments
and the older snapshot it replaces.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from kvcluster.core.records import End, Installed, Record
from kvcluster.core.replica import Replica
from kvcluster.runtime.wal import SEGMENT_SUFFIX, SNAPSHOT_SUFFIX, file_name, frame, numbered, sync_directory

log = logging.getLogger(__name__)

STEP_BUDGET = 0.005  # seconds of encoding per pass: the loop keeps serving while a snapshot is taken
TEMPORARY = ".tmp"


class Snapshot:
    """One snapshot under way: ``step`` it once per pass until ``done``."""

    def __init__(self, directory: Path, seq: int, replica: Replica, table: Record) -> None:
        self.directory = directory
        self.seq = seq
        self.replica = replica
        self.path = directory / (file_name(seq, SNAPSHOT_SUFFIX) + TEMPORARY)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.next_slot = 0
        self.size = 0
        self.sealer: threading.Thread | None = None
        self.failed: str | None = None
        self._write([table])

    def step(self) -> None:
        """Encode and write slots for at most ``STEP_BUDGET``; once all are written, seal the file in a thread."""
        if self.sealer is not None:
            return
        replica, slots = self.replica, len(self.replica.data)
        until = time.monotonic() + STEP_BUDGET
        records: list[Record] = []
        while self.next_slot < slots and time.monotonic() < until:
            slot = self.next_slot
            if replica.data[slot] or replica.high[slot]:
                records.append(Installed(slot, replica.high[slot], list(replica.items(slot)), []))
            self.next_slot += 1
        if self.next_slot == slots:
            records.append(End(slots, replica.applied.export(())))
        self._write(records)
        if self.next_slot == slots and self.failed is None:
            self.sealer = threading.Thread(target=self._seal, name="snapshot-seal", daemon=True)
            self.sealer.start()

    def finish(self) -> None:
        """Write the rest and seal it now, waiting: the node is stopping and serves nobody meanwhile."""
        while self.sealer is None and self.failed is None:
            self.step()
        if self.sealer is not None:
            self.sealer.join()

    def done(self) -> bool:
        return self.failed is not None or (self.sealer is not None and not self.sealer.is_alive())

    def _write(self, records: list[Record]) -> None:
        if self.failed is not None or not records:
            return
        data = b"".join(frame(r) for r in records)
        try:
            done = os.write(self.fd, data)
            while done < len(data):
                done += os.write(self.fd, data[done:])
        except OSError as exc:
            self._abandon(exc)
            return
        self.size += len(data)

    def _abandon(self, exc: OSError) -> None:
        self.failed = exc.strerror or str(exc)
        log.error("snapshot %d abandoned: %s", self.seq, self.failed)
        os.close(self.fd)
        self.path.unlink(missing_ok=True)

    def _seal(self) -> None:
        """Make the snapshot durable and visible, then delete what it replaces."""
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            final = self.path.with_name(file_name(self.seq, SNAPSHOT_SUFFIX))
            self.path.rename(final)
            sync_directory(self.directory)
        except OSError as exc:
            self.failed = exc.strerror or str(exc)
            log.error("snapshot %d could not be sealed: %s", self.seq, self.failed)  # noqa: TRY400
            self.path.unlink(missing_ok=True)
            return
        for suffix in (SEGMENT_SUFFIX, SNAPSHOT_SUFFIX):
            for seq, path in numbered(self.directory, suffix):
                if seq < self.seq:
                    path.unlink(missing_ok=True)
        log.info("snapshot %d written (%.1f MB); older segments deleted", self.seq, self.size / 1e6)
