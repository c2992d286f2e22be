"""A simulated node's disk: the records its log holds, which of them are synced, and what a power cut keeps.

A simulated node logs like ``runtime/node.py`` under ``--fsync always``: at
the end of each pass it writes the pass's records and syncs them, and only
then lets the pass's answers go (``SimNode._log``). A kill of the process loses nothing written (the
page cache survives it); a power cut keeps every synced record and, as the
seed decides, any prefix of the rest, cut at a record boundary. A node
started again rebuilds its replica from what the disk kept.
"""

from __future__ import annotations

import random

from kvcluster.core.records import Record
from kvcluster.core.replica import Rebuild, Replica
from kvcluster.core.wire import TableData


class SimDisk:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.synced = 0

    def write(self, records: list[Record]) -> None:
        self.records.extend(records)

    def power_cut(self, rng: random.Random) -> int:
        """Lose an unsynced suffix, as the seed decides; return how many records were lost."""
        keep = rng.randint(self.synced, len(self.records))
        lost = len(self.records) - keep
        del self.records[keep:]
        self.synced = keep
        return lost

    def recover(self) -> tuple[Replica, TableData] | None:
        rebuild = Rebuild()
        for record in self.records:
            if not rebuild.feed(record):
                raise AssertionError("a simulated node logged data before any table")
        return rebuild.result()
