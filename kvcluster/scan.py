"""Scans from the client's side: the keys of every primary, merged in order, fetched a page at a time.

The client splits the slots among their primaries in its table and pages
through each node with a key cursor: a stream per node. It yields the
smallest key at the head of any stream, and fetches a stream's next page only
once every key it returned has been yielded, so at most one page per node is
held at a time.

When a node cannot serve a page (it is not the primary of every slot asked
for any more, it is catching up, or it does not answer), the client refreshes
its table and splits that stream's slots among their current primaries, each
new stream starting at the old one's cursor. Every key already yielded sorts
at or before that cursor, so no key is yielded twice or out of order, and
every key that exists throughout the scan is yielded.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import zmq

from kvcluster.client import DEFAULT_PAGE, NOBLOCK, REFRESH_INTERVAL, RETRIES_BEFORE_REFRESH, RETRY_DELAY, Connection
from kvcluster.core.placement import RoutingTable, node_name
from kvcluster.core.protocol import MAX_SCAN_KEYS, Scan, ScanPage, encode
from kvcluster.core.wire import Status
from kvcluster.errors import NoLiveReplica, OperationTimedOut, ProtocolError


@dataclass(eq=False)
class _Stream:
    """The keys of some slots, all primary at one node, after a cursor."""

    node_id: int
    slots: list[int]
    after: str
    keys: deque[str] = field(default_factory=deque)
    done: bool = False
    asked: int = 0  # the limit of the page last asked for
    queued: bool = False  # in the merge's heap
    attempts: int = 0


def scan(connection: Connection, prefix: str, limit: int | None, page: int = DEFAULT_PAGE) -> Iterator[str]:
    """Every key that starts with ``prefix``, in order, at most ``limit`` of them; pages are fetched lazily."""
    return _Scanner(connection, prefix, page).keys(limit)


class _Scanner:
    def __init__(self, connection: Connection, prefix: str, page: int) -> None:
        self.connection = connection
        self.prefix = prefix
        self.page = max(1, min(page, MAX_SCAN_KEYS))
        self.streams: list[_Stream] = []
        self.flights: dict[int, tuple[_Stream, float]] = {}  # request id -> stream, when the try expires
        self.delayed: list[tuple[float, _Stream]] = []

    def keys(self, limit: int | None) -> Iterator[str]:
        left = limit if limit is not None else -1  # -1: no limit
        want = self.page if left < 0 else min(self.page, left)
        table = self.connection._ensure_table(time.monotonic() + self.connection.deadline)
        self.streams = self._split(list(range(table.slots)), "", table)
        heap: list[tuple[str, int, _Stream]] = []  # (head key, tie-breaker, stream) of every stream holding keys
        order = itertools.count()
        while left:
            self._fill(want)
            for stream in self.streams:
                if stream.keys and not stream.queued:
                    stream.queued = True
                    heapq.heappush(heap, (stream.keys[0], next(order), stream))
            if not heap:
                return
            # Yield until a stream runs out of keys: it must fetch its next page before any later key is yielded.
            while left and heap:
                key, _, stream = heap[0]
                stream.keys.popleft()
                yield key
                left -= 1
                if stream.keys:
                    heapq.heapreplace(heap, (stream.keys[0], next(order), stream))
                    continue
                heapq.heappop(heap)
                stream.queued = False
                if not stream.done:
                    break
            want = self.page if left < 0 else min(self.page, left)
            self.streams = [s for s in self.streams if s.keys or not s.done]

    def _split(self, slots: list[int], after: str, table: RoutingTable) -> list[_Stream]:
        """Streams of ``slots`` by their primary in ``table``, each starting after ``after``."""
        by_node: dict[int, list[int]] = {}
        for slot in slots:
            primary = table.primary(slot)
            if primary is None:
                dead = [node_name(n) for n in table.replicas(slot)]
                raise NoLiveReplica(f"slot {slot}, so a scan cannot cover every key", dead)
            by_node.setdefault(primary, []).append(slot)
        return [_Stream(node_id, node_slots, after) for node_id, node_slots in by_node.items()]

    def _fill(self, want: int) -> None:
        """Fetch the next page of every stream that has yielded all it holds and may hold more."""
        with self.connection.exclusive():
            self._fill_streams(want)

    def _fill_streams(self, want: int) -> None:
        connection = self.connection
        deadline = time.monotonic() + connection.deadline
        for stream in [s for s in self.streams if not s.keys and not s.done]:
            self._send(stream, want)
        while self.flights or self.delayed:
            now = time.monotonic()
            if now >= deadline:
                waiting = sorted({node_name(s.node_id) for s, _ in self.flights.values()} or {"a retry"})
                raise OperationTimedOut(
                    f"scan: no page from {', '.join(waiting)} within {connection.deadline:g} s; no key was skipped"
                )
            wake = min([deadline, *(e for _, e in self.flights.values()), *(w for w, _ in self.delayed)])
            pages = connection.poll_nodes(max(0, int((wake - now) * 1000)))
            for page in pages:
                if isinstance(page, ScanPage) and page.request_id in self.flights:
                    self._on_page(page)
            now = time.monotonic()
            for request_id in [r for r, (_, expires) in self.flights.items() if expires <= now]:
                stream, _ = self.flights.pop(request_id)
                connection._event(f"scan: {node_name(stream.node_id)} did not answer in time")
                self._reroute(stream)
            due = [s for when, s in self.delayed if when <= now]
            self.delayed = [(when, s) for when, s in self.delayed if when > now]
            for stream in due:
                self._send(stream, want)

    def _send(self, stream: _Stream, want: int) -> None:
        connection = self.connection
        table = connection._ensure_table(time.monotonic() + connection.deadline)
        request_id = connection.core.new_request_id()
        stream.asked = want
        timeout = connection.try_timeouts[min(stream.attempts, len(connection.try_timeouts) - 1)]
        stream.attempts += 1
        message = Scan(request_id, self.prefix, stream.after, want, stream.slots)
        with contextlib.suppress(zmq.Again):  # a full queue means the node is not reading: the try times out
            connection.nodes.get(stream.node_id, table.endpoint(stream.node_id)).send(encode(message), NOBLOCK)
        self.flights[request_id] = (stream, time.monotonic() + timeout)

    def _on_page(self, page: ScanPage) -> None:
        stream, _ = self.flights.pop(page.request_id)
        match page.status:
            case Status.OK:
                stream.keys.extend(page.keys)
                if page.keys:
                    stream.after = page.keys[-1]
                stream.done = len(page.keys) < stream.asked
                stream.attempts = 0
            case Status.RETRY if stream.attempts < RETRIES_BEFORE_REFRESH:
                self.delayed.append((time.monotonic() + RETRY_DELAY, stream))
            case Status.RETRY | Status.NOT_PRIMARY:
                self.connection._event(f"scan: {node_name(stream.node_id)} cannot serve now; refreshing table")
                self._reroute(stream)
            case _:
                raise ProtocolError(f"{node_name(page.node_id)} refused a scan as malformed")

    def _reroute(self, stream: _Stream) -> None:
        """Split ``stream`` among the current primaries of its slots and ask each of them from its cursor."""
        connection = self.connection
        if time.monotonic() - connection.last_refresh >= REFRESH_INTERVAL:
            connection.refresh_table(time.monotonic() + connection.deadline)
        table = connection._ensure_table(time.monotonic() + connection.deadline)
        replacements = self._split(stream.slots, stream.after, table)
        self.streams.remove(stream)
        for new in replacements:
            new.attempts = stream.attempts
            self.streams.append(new)
            self.delayed.append((time.monotonic(), new))
