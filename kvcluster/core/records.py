"""What a storage node's write-ahead log and snapshots hold: one record per change to its replica.

Every record states the *result* of a change, never a delta: a key set to a
value, a key put back to what it held, a slot replaced whole or dropped. So
replaying a record twice, or replaying records over a snapshot that already
contains some of them, ends in the same state; that is what lets a snapshot
be taken while the node keeps serving (see ``runtime/snapshots.py``).

A snapshot is written in the same records: an ``Installed`` per slot, the op
ids the node remembers, the last routing table it installed, and an ``End``
that proves the file is whole. Recovery reads both kinds of file with the
same code.

Nothing here touches a file.
"""

from __future__ import annotations

import msgspec
from msgspec import Struct

from kvcluster.core.wire import AppliedWindow, Count, TableData, Write

FORMAT = 1  # bumped whenever a record changes shape; part of every tag


class _Entry(Struct, array_like=True, frozen=True, forbid_unknown_fields=True, gc=False):
    """A fixed-length array whose first item is the record's tag."""


def _tag(kind: int) -> int:
    return FORMAT << 8 | kind


class Written(_Entry, frozen=True, tag=_tag(1)):
    """A write applied to the store: its slot, epoch, key, value (``None`` deletes), version and op id."""

    write: Write


class Restored(_Entry, frozen=True, tag=_tag(2)):
    """A key put back to what it held before an uncommitted write (``None``: absent); the write's op is forgotten."""

    slot: Count
    key: str
    value: str | None
    client: Count
    op_id: int


class Raised(_Entry, frozen=True, tag=_tag(3)):
    """A slot's highest version set outright (a reconcile with a new primary decides it)."""

    slot: Count
    high: Count


class Installed(_Entry, frozen=True, tag=_tag(4)):
    """A slot replaced whole: by a copy from its primary, or by a snapshot."""

    slot: Count
    high: Count
    entries: list[tuple[str, str]]
    applied: list[AppliedWindow]


class Dropped(_Entry, frozen=True, tag=_tag(5)):
    """A slot forgotten: it moved to other nodes."""

    slot: Count


class Noted(_Entry, frozen=True, tag=_tag(6)):
    """An op counted as applied without changing the store (a newer write to its key was already there)."""

    client: Count
    op_id: int


class TableSeen(_Entry, frozen=True, tag=_tag(7)):
    """The routing table the node installed; after a whole-cluster stop it tells the masters who held what."""

    table: TableData


class Patched(_Entry, frozen=True, tag=_tag(9)):
    """A slot brought up to date by the writes its copy's source made since this node last held it."""

    slot: Count
    high: Count
    writes: list[tuple[str, str | None]]
    applied: list[AppliedWindow]


class End(_Entry, frozen=True, tag=_tag(8)):
    """The last record of a snapshot, which proves it whole: its slot count and the op ids the node remembers."""

    slots: Count
    applied: list[AppliedWindow]


Record = Written | Restored | Raised | Installed | Dropped | Noted | TableSeen | End | Patched

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Record)


def encode_record(record: Record) -> bytes:
    return _ENCODER.encode(record)


def decode_record(payload: bytes) -> Record:
    """Parse one record; ``msgspec.DecodeError`` if it is not one (the frame's CRC matched, so it is a bug)."""
    return _DECODER.decode(payload)
