"""What a replica remembers of each slot's recent writes: enough to bring a returning replica up to date
with only the writes it missed, and to prove that what it still holds is what the source held.

Per slot a replica keeps a digest of its contents (an XOR of a 64-bit hash per
stored key and value, kept up to date write by write, so equal contents give equal
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
from array import array
from collections.abc import Iterable

from kvcluster.core.store import blob_key, blob_pair

BACKLOG = 48  # writes remembered per slot: a few seconds of a busy cluster, about 5 bytes per key-replica at 1M keys


def pair_hash(blob: bytes | None) -> int:
    """A 64-bit hash of one stored pair (``store.pair_blob``); 0 for an absent key, so a delete removes it."""
    if blob is None:
        return 0
    return zlib.crc32(blob) << 32 | zlib.adler32(blob)


class SlotHistory:
    """Every slot's digest and backlog, and the version from which each backlog is complete (its floor).

    A backlog is kept flat, not as an object per write: its versions in an ``array`` (8 bytes each instead of
    a 32-byte int) and, two items per write, the stored pair before and after it (``None``: absent), which are
    the very objects the store holds or held.
    """

    def __init__(self, slots: int) -> None:
        self.digests = [0] * slots
        self.versions = [array("q") for _ in range(slots)]
        self.pairs: list[list[bytes | None]] = [[] for _ in range(slots)]
        self.floors = [0] * slots  # the backlog holds every write applied above this version

    def change(self, slot: int, before: bytes | None, after: bytes | None, version: int | None) -> None:
        """A key's stored pair went from ``before`` to ``after`` (``None``: absent), by the write of ``version``
        (``None``: an undo or a catch-up, which restart the backlog instead)."""
        if before is None and after is None:
            return  # a delete of an absent key: nothing changed, and replaying it would change nothing
        self.digests[slot] ^= pair_hash(before) ^ pair_hash(after)
        if version is None:
            return
        versions, pairs = self.versions[slot], self.pairs[slot]
        if len(versions) == BACKLOG:
            self.floors[slot] = max(self.floors[slot], versions.pop(0))
            del pairs[:2]
        versions.append(version)
        pairs += (before, after)

    def restart(self, slot: int, high: int) -> None:
        """The slot's history before ``high`` is gone (an undo, a copy, a drop): the backlog starts again there."""
        del self.versions[slot][:]
        self.pairs[slot].clear()
        self.floors[slot] = high

    def rehash_all(self, slot: int, blobs: Iterable[bytes]) -> None:
        digest = 0
        for blob in blobs:
            digest ^= pair_hash(blob)
        self.digests[slot] = digest

    def since(self, slot: int, base: int, digest: int) -> list[tuple[str, str | None]] | None:
        """The writes that take a replica holding ``digest`` at ``base`` to this one's contents, or ``None``."""
        if base < self.floors[slot]:
            return None
        then = self.digests[slot]
        writes: list[tuple[str, str | None]] = []
        pairs = self.pairs[slot]
        for at, version in enumerate(self.versions[slot]):
            if version > base:
                before, after = pairs[2 * at], pairs[2 * at + 1]
                then ^= pair_hash(after) ^ pair_hash(before)
                if after is not None:
                    writes.append(blob_pair(after))
                elif before is not None:
                    writes.append((blob_key(before), None))
        return writes if then == digest else None
