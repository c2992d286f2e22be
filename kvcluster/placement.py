"""Where keys live: hashing keys to slots, slots to replica lists, and the routing table.

Placement is a pure function of (nodes, replicas, slots), so master, nodes and
clients compute the same replica lists without shipping them. For slot ``s``
with ``p = s % n`` and ``q = s // n`` the replicas are ``p`` followed by
``p + 1 + ((q + j) % (n - 1))`` for ``j = 0 .. k-2``: each block of ``n``
consecutive slots is a bijection onto the nodes at every rank, so every node
holds the same number of slots within one as primary and as each backup rank,
and a dead node's primary slots are promoted evenly across all the others.

Nodes only ever die (a node declared dead is fenced and exits), so the table
is the static placement plus the dead nodes in order of death. A slot's epoch
is the number of its replicas that are dead: it grows whenever the slot's live
replica list changes, and two views with the same epoch agree on that list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from kvcluster.protocol import TableData

NUM_SLOTS = 4096


def slot_of(key: str, slots: int = NUM_SLOTS) -> int:
    """Map a key to its slot with a hash that is stable across processes (unlike ``hash()``).

    blake2b rather than crc32: crc32 is linear, so keys that differ only in
    their last character (key1, key2, key3) land in slots with a common residue
    and can all map to the same node.
    """
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % slots


def node_name(node_id: int) -> str:
    """The user-facing name of a storage node."""
    return f"server{node_id}"


def replicas_for(slot: int, nodes: int, rep: int) -> tuple[int, ...]:
    """The replica list ``[primary, backup1, ...]`` of a slot, as 1-based node ids."""
    if not 1 <= rep <= nodes:
        raise ValueError(f"need 1 <= rep <= nodes, got rep={rep}, nodes={nodes}")
    primary, block = slot % nodes, slot // nodes
    backups = ((primary + 1 + (block + j) % (nodes - 1)) % nodes for j in range(rep - 1))
    return tuple(node + 1 for node in (primary, *backups))


class RoutingTable:
    """The master's published table, with every per-slot view precomputed.

    ``replicas(slot)`` is the static placement; ``live(slot)`` drops the dead
    nodes, so ``live(slot)[0]`` is the primary and the rest are the backups.
    """

    def __init__(self, data: TableData) -> None:
        self.data = data
        self.nodes = len(data.endpoints)
        dead = set(data.dead)
        self._replicas = [replicas_for(s, self.nodes, data.rep) for s in range(data.slots)]
        self._live = [tuple(n for n in r if n not in dead) for r in self._replicas]
        self._epochs = [len(r) - len(live) for r, live in zip(self._replicas, self._live, strict=True)]

    @property
    def version(self) -> int:
        return self.data.version

    @property
    def slots(self) -> int:
        return self.data.slots

    def is_dead(self, node_id: int) -> bool:
        return node_id in self.data.dead

    def endpoint(self, node_id: int) -> str:
        return self.data.endpoints[node_id]

    def replicas(self, slot: int) -> tuple[int, ...]:
        return self._replicas[slot]

    def live(self, slot: int) -> tuple[int, ...]:
        return self._live[slot]

    def primary(self, slot: int) -> int | None:
        live = self._live[slot]
        return live[0] if live else None

    def epoch(self, slot: int) -> int:
        return self._epochs[slot]

    def slot_of(self, key: str) -> int:
        return slot_of(key, self.data.slots)

    def slots_of(self, node_id: int) -> tuple[int, int]:
        """How many slots the node holds as (primary, backup) in this table."""
        primary = backup = 0
        for live in self._live:
            if live and live[0] == node_id:
                primary += 1
            elif node_id in live:
                backup += 1
        return primary, backup


def initial_table(endpoints: dict[int, str], rep: int, slots: int = NUM_SLOTS) -> TableData:
    """The first table of a cluster: every node alive."""
    return TableData(version=1, rep=rep, slots=slots, endpoints=dict(endpoints), dead=[])


def with_dead(data: TableData, dead_nodes: Iterable[int]) -> TableData:
    """The next table after ``dead_nodes`` died, with the version bumped once."""
    new = [n for n in dead_nodes if n not in data.dead]
    if not new:
        return data
    return TableData(
        version=data.version + 1,
        rep=data.rep,
        slots=data.slots,
        endpoints=data.endpoints,
        dead=[*data.dead, *new],
    )
