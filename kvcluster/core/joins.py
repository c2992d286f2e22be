"""Which node id a node started by hand (``kvcluster node``) may take: the master's answer to ``JOIN``.

``kvcluster up`` numbers its nodes itself. A node started on another host
does not know which ids are taken, so before its first hello it asks the
acting master. Without a name it gets the lowest id the first table still
waits for, or, once the table exists, the id after the highest ever used;
the id stays reserved for that process for ``RESERVE`` seconds, so nodes
started together get different ids. With a name (``--name serverN``) it may
take that id only if no live incarnation holds it: the master would not take
in a second ``serverN`` before the first is declared dead (it may still hold
a lease), so it says so and the node can give up with a clear message.

Reservations are not part of the group's log: a new leader starts without
them. At worst two nodes then ask for the same id; the second is told the
first holds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvcluster.core.placement import node_name
from kvcluster.core.protocol import Join, JoinAnswer
from kvcluster.core.wire import TableData

RESERVE = 10.0  # seconds an id given to a starting node stays its own before its hello arrives


@dataclass(slots=True)
class Holder:
    """A registered incarnation of a node id, as the join check needs it."""

    pid: int
    endpoint: str
    last_seen: float


@dataclass
class Reservations:
    """Ids given out to starting nodes: id -> (pid, until)."""

    held: dict[int, tuple[int, float]] = field(default_factory=dict)

    def answer(
        self,
        now: float,
        join: Join,
        table: TableData | None,
        holders: dict[int, Holder],
        expected: int,
        dead_after: float,
    ) -> JoinAnswer:
        self.held = {n: (pid, until) for n, (pid, until) in self.held.items() if until > now}
        mine = next((n for n, (pid, _) in self.held.items() if pid == join.pid), None)
        if join.node_id == 0 and mine is not None:
            return JoinAnswer(mine, "")
        used = set(holders) | set(self.held) | (set(table.endpoints) if table is not None else set())
        if join.node_id == 0:
            waiting = [] if table is not None else [n for n in range(1, expected + 1) if n not in used]
            node_id = waiting[0] if waiting else max(used | {expected if table is None else 0}) + 1
            self.held[node_id] = (join.pid, now + RESERVE)
            return JoinAnswer(node_id, "")
        node_id, name = join.node_id, node_name(join.node_id)
        reserved = self.held.get(node_id)
        if reserved is not None and reserved[0] != join.pid:
            return JoinAnswer(node_id, f"another {name} (pid {reserved[0]}) is joining right now")
        holder = holders.get(node_id)
        if holder is not None and holder.pid != join.pid:
            live = node_id not in table.dead if table is not None else now - holder.last_seen < dead_after
            if live:
                return JoinAnswer(
                    node_id,
                    f"{name} is alive at {holder.endpoint} (pid {holder.pid}); the master takes a new {name} only "
                    f"once the old one is declared dead: stop it first, or start this node without --name",
                )
        if table is not None and node_id not in table.endpoints and node_id != max(used) + 1:
            return JoinAnswer(node_id, f"no {name} in this cluster; the next new node is {node_name(max(used) + 1)}")
        self.held[node_id] = (join.pid, now + RESERVE)
        return JoinAnswer(node_id, "")
