"""Starting a whole cluster again from what its nodes kept on disk, with no I/O.

After every process stopped (``down``, a crash of all of them, a reboot),
the masters start with no table. Each node that recovered data says hello
with its ``Holdings``: the last table it installed, and per slot its highest
version and a digest of its contents. The master waits until every node that
table lists as live has said hello (or ``RECOVERY_WAIT`` has passed since the
first one did), then publishes the next table:

- per slot, the primary is the replica whose data is newest (the highest
  version: Raft's "up-to-date log" rule, by epoch and then counter);
- the other replicas stay only if they hold exactly the same data (same
  version and digest); the rest are dropped from the slot and healing copies
  it to them again, so no replica ever serves or is promoted with older data;
- every epoch grows, so anything sent under the old table is refused;
- a node of the old table that never said hello is dead; one that said hello
  without data is live and holds nothing, until rebalancing gives it slots.

A slot none of whose replicas came back keeps its replicas, all dead: its
keys are reported unavailable, never answered as missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvcluster.core.protocol import Hello
from kvcluster.core.wire import Holdings, TableData

RECOVERY_WAIT = 20.0  # seconds after the first node with data said hello: then the missing are declared dead


@dataclass
class Recovery:
    """The hellos heard while no table exists, and when the first one that carried data came."""

    hellos: dict[int, Hello] = field(default_factory=dict)
    since: float | None = None
    gone: set[int] = field(default_factory=set)  # nodes whose process exited before saying hello

    def hear(self, now: float, hello: Hello) -> None:
        self.hellos[hello.node_id] = hello
        if hello.held is not None and self.since is None:
            self.since = now

    def newest_table(self) -> TableData | None:
        tables = [h.held.table for h in self.hellos.values() if h.held is not None]
        return max(tables, key=lambda t: t.version, default=None)

    def ready(self, now: float) -> TableData | None:
        """The table to start from, once every node it lists as live has said hello or the wait is over."""
        table = self.newest_table()
        if table is None or self.since is None:
            return None
        expected = set(table.endpoints) - set(table.dead) - self.gone
        if expected <= self.hellos.keys() or now - self.since >= RECOVERY_WAIT:
            return table
        return None


def recovered_table(old: TableData, hellos: dict[int, Hello]) -> tuple[TableData, int]:
    """The table that starts the cluster again from ``old``, and how many stale replicas it dropped."""
    held = {
        n: h.held
        for n, h in hellos.items()
        if h.held is not None and len(h.held.highs) == old.slots and n in old.endpoints
    }
    dead = set(old.dead)
    replicas: list[list[int]] = []
    dropped = 0
    for slot, nodes in enumerate(old.replicas):
        keep = _current_replicas(slot, [n for n in nodes if n not in dead and n in held], held)
        dropped += len([n for n in nodes if n not in dead]) - len(keep)
        replicas.append(keep or list(nodes))
    missing = [n for n in sorted(old.endpoints) if n not in dead and n not in hellos]
    endpoints = {n: (hellos[n].endpoint if n in hellos else e) for n, e in old.endpoints.items()}
    table = TableData(
        version=old.version + 1,
        rep=old.rep,
        slots=old.slots,
        endpoints=endpoints,
        dead=[*old.dead, *missing],
        replicas=replicas,
        epochs=[e + 1 for e in old.epochs],
    )
    return table, dropped


def _current_replicas(slot: int, candidates: list[int], held: dict[int, Holdings]) -> list[int]:
    """The newest replica of ``slot`` first, then those holding exactly what it holds; ties keep the old order."""
    if not candidates:
        return []
    best = max(candidates, key=lambda n: held[n].highs[slot])  # max keeps the first of equals: the old primary
    mark = (held[best].highs[slot], held[best].digests[slot])
    return [best, *(n for n in candidates if n != best and (held[n].highs[slot], held[n].digests[slot]) == mark)]
