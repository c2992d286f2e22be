"""One slot's keys and values as a replica holds them: a sorted list of ``key NUL value`` byte strings.

A slot holds a few hundred keys per node at a million keys, so the store is
the bulk of a node's memory. One ``bytes`` object per pair costs its header
(33 bytes) once, where a ``dict[str, str]`` costs two string headers (49
bytes each), a hash-table entry and, for scans, a separate sorted index of the
keys. Keys never contain NUL (``protocol.check_key``), so the pairs sort in
the order of their keys (UTF-8 keeps code-point order) and the list is the
scan index too; a key is found by bisection. An insert moves the pointers
after it, a few hundred per slot at a million keys.

The public faces (``Replica``, the wire, the log) stay ``str``: this module
encodes on the way in and decodes on the way out. Nothing here does I/O.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import islice

SEPARATOR = 0  # the byte between a key and its value: keys may not contain it
_SEP = bytes([SEPARATOR])


def pair_blob(key: str, value: str) -> bytes:
    """The stored form of ``key`` holding ``value``."""
    return key.encode() + _SEP + value.encode()


def blob_key(blob: bytes) -> str:
    return blob[: blob.index(SEPARATOR)].decode()


def blob_pair(blob: bytes) -> tuple[str, str]:
    cut = blob.index(SEPARATOR)
    return blob[:cut].decode(), blob[cut + 1 :].decode()


class SlotStore:
    """A slot's pairs, sorted by key."""

    __slots__ = ("blobs",)

    def __init__(self, entries: Iterable[tuple[str, str]] = ()) -> None:
        # Through a dict, so that of a key given twice only the last value stays.
        self.blobs = sorted(pair_blob(key, value) for key, value in dict(entries).items())

    def __len__(self) -> int:
        return len(self.blobs)

    def get(self, key: str) -> str | None:
        head = key.encode() + _SEP
        blobs = self.blobs
        at = bisect_left(blobs, head)
        if at < len(blobs) and blobs[at].startswith(head):
            return blobs[at][len(head) :].decode()
        return None

    def put(self, key: str, value: str | None) -> tuple[bytes | None, bytes | None]:
        """Make ``key`` hold ``value`` (``None``: absent); return its stored pair before and after."""
        head = key.encode() + _SEP
        blobs = self.blobs
        at = bisect_left(blobs, head)
        before = blobs[at] if at < len(blobs) and blobs[at].startswith(head) else None
        if value is None:
            if before is not None:
                del blobs[at]
            return before, None
        after = head + value.encode()
        if before is None:
            blobs.insert(at, after)
        else:
            blobs[at] = after
        return before, after

    def items(self) -> Iterator[tuple[str, str]]:
        return map(blob_pair, self.blobs)

    def keys_from(self, start: str, inclusive: bool) -> Iterator[str]:
        """The keys from ``start`` on (``start`` itself only if ``inclusive``), in order.

        Every key after ``start`` either continues it with a byte above NUL or differs from it earlier by a
        greater byte, so its pair sorts at or after ``start`` followed by byte 1; ``start``'s own pair sorts
        before that and at or after ``start`` NUL. A ``start`` holding a NUL is no key: the keys after it are
        those after what precedes its NUL.
        """
        cut = start.find("\0")
        if cut >= 0:
            start, inclusive = start[:cut], False
        head = start.encode() + (_SEP if inclusive else b"\x01")
        return map(blob_key, islice(self.blobs, bisect_left(self.blobs, head), None))
