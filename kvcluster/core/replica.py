"""A node's copy of its slots: the store, the uncommitted tail and duplicate detection, with no I/O.

The store keeps one sorted list of key-value pairs per slot (``store.SlotStore``, which
is also the scan index) and no per-key version:
a backup receives a slot's writes from one primary over one FIFO channel, in
the order of their versions, so the latest write to arrive is the latest
write. What a backup must be able to undo is only the *tail*: writes applied
here that the primary has not yet reported as held by every replica (its
commit watermark). Each tail entry remembers the value it overwrote.

When a backup is promoted it already holds every acknowledged write, so a
failover copies no data. The replicas of a slot may differ only in their
tails, and every tail is a prefix of the same stream of writes (the old
primary sent it to all of them in order). So the new primary sends each
backup its own tail for the slot and the highest version it holds
(``reconcile``): the backup undoes what it holds beyond that version and
applies what it lacks. That costs the writes that were in flight at the
failure, whatever the size of the data.

Nothing here reads a clock, a socket or a random source.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from kvcluster.core.history import SlotHistory
from kvcluster.core.records import (
    Dropped,
    End,
    Installed,
    Noted,
    Patched,
    Raised,
    Record,
    Restored,
    TableSeen,
    Written,
)
from kvcluster.core.store import SlotStore, blob_pair
from kvcluster.core.wire import APPLIED_WINDOW_BYTES, AppliedWindow, TableData, Write

VERSION_EPOCH_SHIFT = 40
COUNTER_MASK = (1 << VERSION_EPOCH_SHIFT) - 1
DEDUP_SPAN = APPLIED_WINDOW_BYTES * 8  # per client: how many of its latest op ids are remembered
DEDUP_CLIENTS = 50_000  # clients remembered; the least recently active is forgotten first
NO_COMMIT = -1  # a watermark that says nothing (the primary is still reconciling a slot)


def make_version(epoch: int, counter: int) -> int:
    """Versions order writes within a slot: by epoch first, then by the primary's counter."""
    return (epoch << VERSION_EPOCH_SHIFT) | counter


class AppliedOps:
    """Which puts were applied, by client and op id, so a resent put is not applied twice.

    A client numbers its operations 0, 1, 2, ..., so each client's applied ids
    are kept as a bitmap over its latest ``DEDUP_SPAN`` ids: a bit per id
    instead of a hundred bytes per remembered put, and exact within the span.
    """

    def __init__(self) -> None:
        self.clients: dict[int, list[Any]] = {}  # client -> [first id of the bitmap, bitmap], least recent first

    def __contains__(self, op: tuple[int, int]) -> bool:
        client, op_id = op
        window = self.clients.get(client)
        if window is None:
            return False
        offset = op_id - window[0]
        bits: bytearray = window[1]
        return 0 <= offset < len(bits) * 8 and bool(bits[offset >> 3] & (1 << (offset & 7)))

    def add(self, client: int, op_id: int) -> None:
        window = self.clients.pop(client, None)
        if window is None:
            window = [op_id & ~7, bytearray()]
            if len(self.clients) >= DEDUP_CLIENTS:
                del self.clients[next(iter(self.clients))]
        self.clients[client] = window
        offset = op_id - window[0]
        bits: bytearray = window[1]
        if offset < 0:
            # A client's requests run concurrently, so an op can be applied after a later one of the same client:
            # reach back for it, unless that would stretch the window beyond the latest DEDUP_SPAN ids.
            grow = (7 - offset) >> 3
            if len(bits) + grow > DEDUP_SPAN // 8:
                return  # older than anything remembered for this client: its resends are long over
            bits[:0] = bytes(grow)
            window[0] -= grow * 8
            offset += grow * 8
        if offset >= len(bits) * 8:
            bits.extend(bytes((offset >> 3) + 1 - len(bits)))
            excess = len(bits) - DEDUP_SPAN // 8
            if excess > 0:
                del bits[:excess]
                window[0] += excess * 8
                offset -= excess * 8
        bits[offset >> 3] |= 1 << (offset & 7)

    def export(self, excluding: Iterable[tuple[int, int]]) -> list[AppliedWindow]:
        """Every client's bitmap, less the ops in ``excluding``."""
        bitmaps = {client: bytearray(window[1]) for client, window in self.clients.items()}
        for client, op_id in excluding:
            bits = bitmaps.get(client)
            if bits is not None:
                _clear(bits, op_id - self.clients[client][0])
        return [AppliedWindow(client, self.clients[client][0], bytes(bits)) for client, bits in bitmaps.items() if bits]

    def merge(self, windows: Iterable[AppliedWindow]) -> None:
        """Remember the ops of ``windows`` as applied too, keeping each client's latest ``DEDUP_SPAN`` ids."""
        for window in windows:
            own = self.clients.pop(window.client, None)
            if own is None:
                if len(self.clients) >= DEDUP_CLIENTS:
                    del self.clients[next(iter(self.clients))]
                first, bits = window.first, bytearray(window.bits)
            else:
                # Both windows start on a byte, so their union is a plain OR of the two bitmaps aligned on its start.
                first = min(own[0], window.first)
                end = max(own[0] + len(own[1]) * 8, window.first + len(window.bits) * 8)
                union = int.from_bytes(own[1], "little") << (own[0] - first)
                union |= int.from_bytes(window.bits, "little") << (window.first - first)
                bits = bytearray(union.to_bytes((end - first) >> 3, "little"))
            excess = len(bits) - DEDUP_SPAN // 8
            if excess > 0:
                del bits[:excess]
                first += excess * 8
            self.clients[window.client] = [first, bits]

    def discard(self, client: int, op_id: int) -> None:
        window = self.clients.get(client)
        if window is not None:
            _clear(window[1], op_id - window[0])


def _clear(bits: bytearray, offset: int) -> None:
    if 0 <= offset < len(bits) * 8:
        bits[offset >> 3] &= ~(1 << (offset & 7)) & 0xFF


class TailEntry(NamedTuple):
    """An applied write that its primary has not yet reported as held by every replica."""

    write: Write
    previous: bytes | None  # the stored pair it replaced (``None``: the key was absent), to undo it


class Replica:
    """The slots of one node and everything needed to bring them in line with a new primary."""

    def __init__(self, slots: int) -> None:
        self.data = [SlotStore() for _ in range(slots)]
        self.history = SlotHistory(slots)
        self.high = [0] * slots  # per slot: the highest version applied here
        self.tails: dict[int, deque[TailEntry]] = {}  # per sender, in the order received
        self.applied = AppliedOps()
        self.keys = 0
        # Every change, as the records a write-ahead log keeps; None when nothing is logged (the simulator).
        # The driver empties it each pass and must log what it held before it sends any acknowledgement.
        self.journal: list[Record] | None = None
        self.rebuilding = False  # replaying a log: what can be derived from the data is derived once, after

    # --- applying ---

    def apply(self, write: Write) -> bytes | None:
        """Apply a write (a delete when its value is None) and remember its op; return the stored pair it replaced."""
        if self.journal is not None:
            self.journal.append(Written(write))
        return self._apply(write)

    def _apply(self, write: Write) -> bytes | None:
        slot, version = write.slot, write.version
        previous = self._set_key(slot, write.key, write.value, version)
        self.high[slot] = max(self.high[slot], version)
        self.applied.add(write.client, write.op_id)
        return previous

    def apply_replicated(self, sender: int, write: Write) -> None:
        """Apply a write from the slot's primary, keeping what it replaced until the primary commits it."""
        previous = self.apply(write)
        tail = self.tails.get(sender)
        if tail is None:
            tail = self.tails[sender] = deque()
        tail.append(TailEntry(write, previous))

    def commit(self, sender: int, watermark: int, known: list[tuple[int, int]]) -> None:
        """Forget the undo of ``sender``'s writes up to its counter ``watermark``: every replica holds them.

        ``known`` is the newest ``(epoch, primary)`` of each slot. A late
        watermark from a primary that has since been replaced must not commit
        what its successor may still undo, so trimming stops at the first
        entry of a slot that ``sender`` no longer leads.
        """
        tail = self.tails.get(sender)
        if tail is None or watermark == NO_COMMIT:
            return
        while tail:
            write = tail[0].write
            epoch, primary = known[write.slot]
            if primary != sender or write.version > make_version(epoch, watermark):
                break
            tail.popleft()

    # --- failover ---

    def take_tails(self, slots: list[int]) -> dict[int, list[Write]]:
        """Remove and return this node's uncommitted writes to ``slots``, oldest first per slot."""
        pulled = self._pull_tails(set(slots))
        return {slot: [entry.write for entry in pulled.get(slot, [])] for slot in slots}

    def reconcile_all(self, sender: int, tails: list[tuple[int, int, list[Write]]]) -> None:
        """``reconcile`` for several ``(slot, high, writes)`` at once, with one pass over the tails."""
        pulled = self._pull_tails({slot for slot, _, _ in tails})
        for slot, high, writes in tails:
            self._reconcile(sender, slot, high, writes, pulled.get(slot, []))

    def reconcile(self, sender: int, slot: int, high: int, writes: list[Write]) -> None:
        """Make ``slot`` what the new primary ``sender`` holds: undo beyond ``high``, apply what is missing.

        ``writes`` is the new primary's tail for the slot; its writes stay in
        this node's tail (now under ``sender``) until ``sender`` commits them,
        because ``sender`` may die before every backup has reconciled.
        """
        self._reconcile(sender, slot, high, writes, self._pull_tails({slot}).get(slot, []))

    def _reconcile(self, sender: int, slot: int, high: int, writes: list[Write], entries: list[TailEntry]) -> None:
        kept = [e for e in entries if e.write.version <= high]
        for entry in reversed([e for e in entries if e.write.version > high]):
            self._undo(entry)
        self.high[slot] = max((e.write.version for e in kept), default=min(self.high[slot], high))
        tail = self.tails.setdefault(sender, deque())
        tail.extend(kept)
        for write in writes:
            if write.version > self.high[slot]:
                tail.append(TailEntry(write, self.apply(write)))
        self.high[slot] = max(self.high[slot], high)
        if self.journal is not None:
            self.journal.append(Raised(slot, self.high[slot]))
        self.history.restart(slot, self.high[slot])  # what was undone is no longer this slot's history

    def install_copy(
        self, slot: int, high: int, entries: list[tuple[str, str]], applied: Iterable[AppliedWindow]
    ) -> None:
        """Make ``slot`` a copy of a primary's committed contents, forgetting anything held of it before.

        ``applied`` are the primary's committed op ids: each is held by every replica of its slot, so
        remembering one here never answers ``OK`` for a put that a replica of its slot could lack.
        """
        if self.journal is not None:
            self.journal.append(Installed(slot, high, entries, list(applied)))
        self._install(slot, high, entries, applied)

    def _install(self, slot: int, high: int, entries: list[tuple[str, str]], applied: Iterable[AppliedWindow]) -> None:
        self._drop(slot)
        self.data[slot] = SlotStore(entries)
        self.keys += len(self.data[slot])
        self.high[slot] = high
        if not self.rebuilding:
            self.history.rehash_all(slot, self.data[slot].blobs)
            self.history.restart(slot, high)
        self.applied.merge(applied)

    def committed_ops(self) -> list[AppliedWindow]:
        """The op ids applied here whose writes every replica of their slot holds: all but the tails'."""
        return self.applied.export(
            (entry.write.client, entry.write.op_id) for tail in self.tails.values() for entry in tail
        )

    def remember(self, write: Write) -> None:
        """Count ``write`` as applied without applying it: a newer write to its key is already in the store."""
        if self.journal is not None:
            self.journal.append(Noted(write.client, write.op_id))
        self.applied.add(write.client, write.op_id)

    def drop_slot(self, slot: int) -> None:
        """Forget a slot entirely: its data, its uncommitted tail and the op ids of that tail.

        Those writes may still be undone elsewhere; a later copy of the slot brings back the op ids
        of the ones that were committed.
        """
        if self.journal is not None:
            self.journal.append(Dropped(slot))
        self._drop(slot)

    def _drop(self, slot: int) -> None:
        for entries in self._pull_tails({slot}).values():
            for entry in entries:
                self.applied.discard(entry.write.client, entry.write.op_id)
        self.keys -= len(self.data[slot])
        self.data[slot] = SlotStore()
        self.high[slot] = 0
        self.history.rehash_all(slot, ())
        self.history.restart(slot, 0)

    def _pull_tails(self, slots: set[int]) -> dict[int, list[TailEntry]]:
        """Take the tail entries of ``slots`` out of every sender's tail, sorted by version per slot."""
        pulled: dict[int, list[TailEntry]] = {}
        for sender, tail in list(self.tails.items()):
            rest: deque[TailEntry] = deque()
            for entry in tail:
                if entry.write.slot in slots:
                    pulled.setdefault(entry.write.slot, []).append(entry)
                else:
                    rest.append(entry)
            self.tails[sender] = rest
        for entries in pulled.values():
            entries.sort(key=lambda entry: entry.write.version)
        return pulled

    def _undo(self, entry: TailEntry) -> None:
        write = entry.write
        previous = None if entry.previous is None else blob_pair(entry.previous)[1]
        if self.journal is not None:
            self.journal.append(Restored(write.slot, write.key, previous, write.client, write.op_id))
        self._set_key(write.slot, write.key, previous)
        self.applied.discard(write.client, write.op_id)

    def _set_key(self, slot: int, key: str, value: str | None, version: int | None = None) -> bytes | None:
        """Make ``key`` hold ``value`` (``None``: absent), keeping the count, digest and backlog right (the
        backlog only for a write, given its ``version``); return the pair it replaced."""
        before, after = self.data[slot].put(key, value)
        if not self.rebuilding:  # when rebuilding, the count and digest are made once at the end (``reindex``)
            self.history.change(slot, before, after, version)
            self.keys += (after is not None) - (before is not None)
        return before

    # --- recovery ---

    def replay(self, record: Record) -> TableData | None:
        """Redo one logged change, logging nothing; return the table of a ``TableSeen``.

        Tails are not rebuilt: after a restart, which replicas of a slot still
        agree is decided by the masters from each replica's high version and
        digest, not by undoing anything (see ``docs/durability.md``).
        """
        match record:
            case Written(write):
                self._apply(write)
            case Restored(slot, key, value, client, op_id):
                self._set_key(slot, key, value)
                self.applied.discard(client, op_id)
            case Raised(slot, high):
                self.high[slot] = high
                self.history.restart(slot, high)
            case Installed(slot, high, entries, applied):
                self._install(slot, high, entries, applied)
            case Dropped(slot):
                self._drop(slot)
            case Noted(client, op_id):
                self.applied.add(client, op_id)
            case TableSeen(table):
                return table
            case End(_, applied):
                self.applied.merge(applied)
            case Patched(slot, high, writes, applied):
                self._patch(slot, high, writes, applied)
        return None

    def reindex(self) -> None:
        """After a replay: count the keys, hash each slot; its backlog starts here."""
        self.rebuilding = False
        self.keys = sum(len(store) for store in self.data)
        for slot, store in enumerate(self.data):
            self.history.rehash_all(slot, store.blobs)
            self.history.restart(slot, self.high[slot])

    def digest(self, slot: int) -> int:
        """A 64-bit digest of a slot's contents, the same on every replica holding the same pairs in any order."""
        return self.history.digests[slot]

    def catch_up(
        self, slot: int, high: int, writes: list[tuple[str, str | None]], applied: Iterable[AppliedWindow]
    ) -> None:
        """Apply the writes a copy's source made after this replica's data (``history.since``), in its order."""
        if self.journal is not None:
            self.journal.append(Patched(slot, high, writes, list(applied)))
        self._patch(slot, high, writes, applied)

    def _patch(
        self, slot: int, high: int, writes: list[tuple[str, str | None]], applied: Iterable[AppliedWindow]
    ) -> None:
        for key, value in writes:
            self._set_key(slot, key, value)
        self.high[slot] = high
        self.history.restart(slot, high)
        self.applied.merge(applied)

    def seen_op(self, client: int, op_id: int) -> bool:
        return (client, op_id) in self.applied

    def tail_length(self) -> int:
        return sum(len(tail) for tail in self.tails.values())

    def get(self, slot: int, key: str) -> str | None:
        return self.data[slot].get(key)

    def items(self, slot: int) -> Iterator[tuple[str, str]]:
        return self.data[slot].items()


class Rebuild:
    """A replica rebuilt from logged records, fed in the order they were logged (a snapshot's first)."""

    def __init__(self) -> None:
        self.replica: Replica | None = None
        self.table: TableData | None = None
        self.records = 0

    def feed(self, record: Record) -> bool:
        """Redo ``record``; False if it is data logged before any table, which no node ever writes."""
        if isinstance(record, TableSeen):
            if self.replica is None:
                self.replica = Replica(record.table.slots)
                self.replica.rebuilding = True
            self.table = record.table
        elif self.replica is None:
            return False
        self.replica.replay(record)
        self.records += 1
        return True

    def result(self) -> tuple[Replica, TableData] | None:
        if self.replica is None or self.table is None:
            return None
        if self.replica.rebuilding:
            self.replica.reindex()
        return self.replica, self.table
