"""Where keys live: hashing keys to slots, slots to replica lists, and the routing table.

The first table places slot ``s`` with ``p = s % n`` and ``q = s // n`` on
``p`` followed by ``p + 1 + ((q + j) % (n - 1))`` for ``j = 0 .. k-2``: each
block of ``n`` consecutive slots is a bijection onto the nodes at every rank,
so every node holds the same number of slots within one as primary and as
each backup rank, and a dead node's primary slots are promoted evenly across
all the others.

From then on the master owns the table explicitly: each slot has a replica
list (primary first) and an epoch that only grows, bumped whenever the list
changes, so two views with the same epoch agree on the list. A death marks
the node dead; the lists keep it, and the first live replica of each is the
primary, so the next replica of a dead primary takes over. A repair appends
a caught-up replica (``with_replicas``). A slot whose replicas are all dead
still names the nodes it needed.
"""

from __future__ import annotations

# hashlib.blake2b is this very function, but importing hashlib also loads OpenSSL: 1.6 ms of a one-off get.
from _blake2 import blake2b
from collections.abc import Iterable

from msgspec.structs import replace

from kvcluster.core.wire import TableData

NUM_SLOTS = 4096


def slot_of(key: str, slots: int = NUM_SLOTS) -> int:
    """Map a key to its slot with a hash that is stable across processes (unlike ``hash()``).

    blake2b rather than crc32: crc32 is linear, so keys that differ only in
    their last character (key1, key2, key3) land in slots with a common residue
    and can all map to the same node.
    """
    return int.from_bytes(blake2b(key.encode(), digest_size=8).digest(), "big") % slots


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
    """The master's published table, with each slot's views computed once, when first asked for.

    ``replicas(slot)`` is the slot's list as published; ``live(slot)`` drops
    the dead nodes, so ``live(slot)[0]`` is the primary and the rest are the
    backups. A one-off ``kvcluster get`` asks for one slot of thousands, so
    nothing is computed ahead.
    """

    def __init__(self, data: TableData) -> None:
        self.data = data
        self.nodes = len(data.endpoints)
        self._dead = frozenset(data.dead)
        self._replicas: list[tuple[int, ...] | None] = [None] * len(data.replicas)
        self._live: list[tuple[int, ...] | None] = [None] * len(data.replicas)
        self._epochs = data.epochs

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
        replicas = self._replicas[slot]
        if replicas is None:
            replicas = self._replicas[slot] = tuple(self.data.replicas[slot])
        return replicas

    def live(self, slot: int) -> tuple[int, ...]:
        live = self._live[slot]
        if live is None:
            replicas = self.replicas(slot)
            dead = self._dead
            live = replicas if dead.isdisjoint(replicas) else tuple(n for n in replicas if n not in dead)
            self._live[slot] = live
        return live

    def primary(self, slot: int) -> int | None:
        live = self.live(slot)
        return live[0] if live else None

    def epoch(self, slot: int) -> int:
        return self._epochs[slot]

    def slot_of(self, key: str) -> int:
        return slot_of(key, self.data.slots)

    def slots_of(self, node_id: int) -> tuple[int, int]:
        """How many slots the node holds as (primary, backup) in this table."""
        primary = backup = 0
        for slot in range(len(self._live)):
            live = self.live(slot)
            if live and live[0] == node_id:
                primary += 1
            elif node_id in live:
                backup += 1
        return primary, backup


def initial_table(endpoints: dict[int, str], rep: int, slots: int = NUM_SLOTS) -> TableData:
    """The first table of a cluster: every node alive, the balanced placement, every epoch 0."""
    nodes = len(endpoints)
    return TableData(
        version=1,
        rep=rep,
        slots=slots,
        endpoints=dict(endpoints),
        dead=[],
        replicas=[list(replicas_for(s, nodes, rep)) for s in range(slots)],
        epochs=[0] * slots,
    )


def with_dead(data: TableData, dead_nodes: Iterable[int]) -> TableData:
    """The next table after ``dead_nodes`` died: the slots they held change their live list, so their epochs grow.

    Dead nodes stay in the replica lists (``live`` skips them), so a slot that
    lost every replica still names the nodes it needed.
    """
    new = [n for n in dead_nodes if n not in data.dead]
    if not new:
        return data
    gone = set(new)
    epochs = [e + 1 if not gone.isdisjoint(nodes) else e for e, nodes in zip(data.epochs, data.replicas, strict=True)]
    return replace(data, version=data.version + 1, dead=[*data.dead, *new], epochs=epochs)


def with_replicas(data: TableData, added: Iterable[tuple[int, int]]) -> TableData:
    """The next table with each ``(slot, node)`` appended as the slot's last backup, its epoch bumped."""
    replicas = list(data.replicas)
    epochs = list(data.epochs)
    for slot, node in added:
        replicas[slot] = [*replicas[slot], node]
        epochs[slot] += 1
    return replace(data, version=data.version + 1, replicas=replicas, epochs=epochs)


def under_replicated(data: TableData) -> list[int]:
    """Slots with fewer live replicas than ``rep`` but at least one: the ones a repair can restore."""
    dead = set(data.dead)
    short = []
    for slot, nodes in enumerate(data.replicas):
        live = sum(n not in dead for n in nodes)
        if 0 < live < data.rep:
            short.append(slot)
    return short


def choose_target(data: TableData, slot: int, load: dict[int, list[int]], exclude: Iterable[int] = ()) -> int | None:
    """The live node to hold a new replica of ``slot``: the least loaded overall, then at the rank it joins.

    ``load[node][rank]`` counts the slots a node holds at each rank (primary
    is rank 0), including copies under way. Choosing by the total keeps every
    node within one slot of the others; the ranks themselves stay as the
    promotions left them (evening those out takes role switches, not copies).
    """
    dead = set(data.dead)
    holding = set(data.replicas[slot]) | set(exclude)
    rank = sum(n not in dead for n in data.replicas[slot])
    candidates = [n for n in sorted(data.endpoints) if n not in dead and n not in holding]
    if not candidates:
        return None
    return min(candidates, key=lambda n: (sum(load[n]), load[n][rank], n))


def rank_load(data: TableData) -> dict[int, list[int]]:
    """How many slots each live node holds at each rank in ``data``."""
    dead = set(data.dead)
    load = {n: [0] * data.rep for n in data.endpoints if n not in dead}
    for nodes in data.replicas:
        for rank, node in enumerate(n for n in nodes if n not in dead):
            if rank < data.rep:
                load[node][rank] += 1
    return load


def with_member(data: TableData, node_id: int, endpoint: str) -> TableData:
    """The next table with ``node_id`` live at ``endpoint`` and holding nothing: a new node or a new incarnation.

    A restarted node keeps its id but none of its data, so it leaves every
    replica list it was in (it was dead there, so no live list changes).
    """
    replicas = [[n for n in nodes if n != node_id] or nodes for nodes in data.replicas]
    return replace(
        data,
        version=data.version + 1,
        endpoints={**data.endpoints, node_id: endpoint},
        dead=[n for n in data.dead if n != node_id],
        replicas=replicas,
    )


def with_moves(
    data: TableData, replaced: Iterable[tuple[int, int, int]], promoted: Iterable[tuple[int, int]]
) -> TableData:
    """The next table after rebalancing: each ``(slot, old, new)`` puts ``new`` in ``old``'s place, and each
    ``(slot, node)`` makes that live backup the primary; the slots touched get a new epoch."""
    replicas = list(data.replicas)
    epochs = list(data.epochs)
    for slot, old, new in replaced:
        replicas[slot] = [new if n == old else n for n in replicas[slot]]
        epochs[slot] += 1
    for slot, node in promoted:
        replicas[slot] = [node, *(n for n in replicas[slot] if n != node)]
        epochs[slot] += 1
    return replace(data, version=data.version + 1, replicas=replicas, epochs=epochs)
