"""What a replica remembers of each slot's recent writes: enough to bring a returning replica up to date
with only the writes it missed, and to prove that what it still holds is what the source held.

Per slot a replica keeps a digest of its contents (an XOR of a 64-bit hash per
key and value, kept up to date write by write, so equal contents give equal
digests in any order) and a bounded backlog of its latest writes, each with
the value it replaced. From these the source of a copy can compute the digest
its slot had at an earlier version ``base``: undo, on the digest alone, every
backlogged write above ``base``. When that equals the digest a returning
replica reports for ``base``, the two held exactly the same data at ``base``,
and replaying the backlogged writes above ``base``, in the order the source
applied them, turns one into the other. A replica whose data differs (it held
writes that were later undone, or lost some) fails the check and gets a full
copy, as does one that has been away longer than the backlog reaches.

Nothing here reads a clock or a socket.
"""

from __future__ import annotations

import zlib
from collections import deque
from typing import NamedTuple

BACKLOG = 48  # writes remembered per slot: a few seconds of a busy cluster, about 20 bytes per key-replica


def pair_hash(key: str, value: str | None) -> int:
    """A 64-bit hash of one key and its value; 0 for an absent key, so a delete removes its pair from a digest."""
    if value is None:
        return 0
    pair = f"{key} {value}".encode()
    return zlib.crc32(pair) << 32 | zlib.adler32(pair)


class Change(NamedTuple):
    version: int
    key: str
    before: str | None
    after: str | None


class SlotHistory:
    """Every slot's digest and backlog, and the version from which each backlog is complete (its floor)."""

    def __init__(self, slots: int) -> None:
        self.digests = [0] * slots
        self.backlogs: list[deque[Change]] = [deque() for _ in range(slots)]
        self.floors = [0] * slots  # the backlog holds every write applied above this version

    def rehash(self, slot: int, key: str, before: str | None, after: str | None) -> None:
        self.digests[slot] ^= pair_hash(key, before) ^ pair_hash(key, after)

    def record(self, slot: int, change: Change) -> None:
        backlog = self.backlogs[slot]
        if len(backlog) == BACKLOG:
            self.floors[slot] = max(self.floors[slot], backlog.popleft().version)
        backlog.append(change)

    def restart(self, slot: int, high: int) -> None:
        """The slot's history before ``high`` is gone (an undo, a copy, a drop): the backlog starts again there."""
        self.backlogs[slot].clear()
        self.floors[slot] = high

    def rehash_all(self, slot: int, entries: dict[str, str]) -> None:
        digest = 0
        for key, value in entries.items():
            digest ^= pair_hash(key, value)
        self.digests[slot] = digest

    def since(self, slot: int, base: int, digest: int) -> list[tuple[str, str | None]] | None:
        """The writes that take a replica holding ``digest`` at ``base`` to this one's contents, or ``None``."""
        if base < self.floors[slot]:
            return None
        then = self.digests[slot]
        writes: list[tuple[str, str | None]] = []
        for change in self.backlogs[slot]:
            if change.version > base:
                then ^= pair_hash(change.key, change.after) ^ pair_hash(change.key, change.before)
                writes.append((change.key, change.after))
        return writes if then == digest else None
