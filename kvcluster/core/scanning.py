"""Scans at a storage node: a page of the keys of the slots it is primary of, in order.

A page is read in one pass of the loop from the committed store, under the
rules of a get (primary of the newest epoch known, reconciled, lease fresh), so
every key in it was committed and not yet deleted at that moment. Pages are
independent: the client pages through each node with a key cursor, so a scan
is no snapshot across pages or slots. ``NodeCore`` mixes this in.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from itertools import islice, takewhile
from typing import TYPE_CHECKING

from kvcluster.core.actions import Action, Answer, Route
from kvcluster.core.placement import RoutingTable
from kvcluster.core.protocol import Scan, ScanPage
from kvcluster.core.wire import Status

if TYPE_CHECKING:
    from kvcluster.core.replica import Replica


class Scanning:
    """The scan half of a node; the state it reads lives on the node, declared here."""

    node_id: int
    outbox: list[Action]
    table: RoutingTable | None
    replica: Replica
    known: list[tuple[int, int]]
    ready: list[bool]
    lease_until: float
    now: float

    def _on_scan(self, route: Route, scan: Scan) -> None:
        status = self._scan_refusal(scan.slots)
        keys = scan_page(self.replica, scan) if status == Status.OK else []
        self.outbox.append(Answer(route, ScanPage(scan.request_id, self.node_id, status, keys)))

    def _scan_refusal(self, slots: list[int]) -> Status:
        """``OK``, or what a get in the first slot this node must not serve now would be answered."""
        table = self.table
        if table is None:
            return Status.RETRY
        if any(slot >= table.slots for slot in slots):
            return Status.INVALID
        lease_fresh = self.now < self.lease_until
        for slot in slots:
            epoch = table.epoch(slot)
            if table.primary(slot) != self.node_id or self.known[slot] != (epoch, self.node_id):
                return Status.NOT_PRIMARY
            if not self.ready[slot] or not lease_fresh:
                return Status.RETRY
        return Status.OK


def scan_page(replica: Replica, scan: Scan) -> list[str]:
    """The first ``scan.limit`` keys of ``scan.slots`` after ``scan.after`` that start with ``scan.prefix``."""
    runs = [_slot_keys(replica, slot, scan.prefix, scan.after) for slot in scan.slots if replica.data[slot]]
    return list(islice(heapq.merge(*runs), scan.limit))


def _slot_keys(replica: Replica, slot: int, prefix: str, after: str) -> Iterator[str]:
    store = replica.data[slot]
    keys = store.keys_from(prefix, inclusive=True) if after < prefix else store.keys_from(after, inclusive=False)
    return takewhile(lambda key: key.startswith(prefix), keys) if prefix else keys
