"""Restoring every slot to ``rep`` replicas and evening out the nodes: the master's record of copies, no I/O.

A *move* copies one slot from its primary to a new replica chosen by
``placement.choose_target``. It is a record in the master's state from the
moment it is started until the new replica is in a published table, so a
death of its source or target cancels it cleanly (the target drops its
partial copy when the next table shows the copy abandoned) and the slot is
planned again from the survivors. Copies are throttled per node, since
each costs its source and target a share of their loop, but many run at
once.

Rebalancing (after a node joins) uses the same moves: a copy to the least
loaded node that, once caught up, *replaces* a replica of the most loaded
one (add before remove), at its rank: replacing a primary makes the new
node primary, and its reconcile stops the old one before it serves. Primaries are evened out without copying: a live
backup that already holds the slot is moved to the front of its list, and
the promotion's reconcile makes the old primary stop before the new one
serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvcluster.core.placement import choose_target, rank_load, under_replicated
from kvcluster.core.protocol import CopyDone, TableData

COPIES_PER_NODE = 32  # copies a node may be the source or the target of at once
SWITCHES_PER_TABLE = 64  # primaries moved per table: each makes its new primary reconcile before serving
COPY_TIMEOUT = 10.0  # seconds after which a move that has not finished is planned again


@dataclass(slots=True)
class Move:
    """One slot being copied by its primary ``source`` to ``target``, which then joins or takes ``replaces``' place."""

    slot: int
    source: int
    target: int
    epoch: int
    started: float
    replaces: int | None = None


@dataclass(frozen=True, slots=True)
class Finished:
    """A copy that caught up, waiting for the next table."""

    slot: int
    target: int
    replaces: int | None


@dataclass
class Repairs:
    """The moves under way and what healing has achieved since the last death."""

    moves: dict[int, Move] = field(default_factory=dict)  # by slot: at most one move per slot at a time
    finished: list[Finished] = field(default_factory=list)  # caught up, not yet published
    slots_done: int = 0
    keys_done: int = 0
    started: float | None = None  # when the current round of repairs began

    def plan(self, now: float, table: TableData, excluded: frozenset[int] = frozenset()) -> list[Move]:
        """Start a move for every slot short of replicas that has none, within the per-node limits.

        No copy goes to an ``excluded`` node (being drained, or holding no table yet).
        """
        short = [slot for slot in under_replicated(table) if slot not in self.moves and not self.finishing(slot)]
        if not short:
            return []
        if self.started is None:
            self.started, self.slots_done, self.keys_done = now, 0, 0
        busy: dict[int, int] = {}
        for move in self.moves.values():
            busy[move.source] = busy.get(move.source, 0) + 1
            busy[move.target] = busy.get(move.target, 0) + 1
        load = rank_load(table)
        for joining in [m.target for m in self.moves.values()] + [f.target for f in self.finished]:
            if joining in load:
                load[joining][-1] += 1
        started = []
        dead = set(table.dead)
        for slot in short:
            source = next(n for n in table.replicas[slot] if n not in dead)
            if busy.get(source, 0) >= COPIES_PER_NODE:
                continue
            target = choose_target(table, slot, load, excluded)
            if target is None or busy.get(target, 0) >= COPIES_PER_NODE:
                continue  # the best target is busy: wait for it rather than unbalance the nodes
            move = Move(slot, source, target, table.epochs[slot], now)
            self.moves[slot] = move
            started.append(move)
            busy[source] = busy.get(source, 0) + 1
            busy[target] = busy.get(target, 0) + 1
            load[target][-1] += 1
        return started

    def finishing(self, slot: int) -> bool:
        return any(f.slot == slot for f in self.finished)

    def on_done(self, done: CopyDone, table: TableData) -> bool:
        """Record a finished copy if it is the move we asked for and its target can still join."""
        move = self.moves.get(done.slot)
        if move is None or (move.source, move.target) != (done.node_id, done.target):
            return False
        del self.moves[done.slot]
        dead = set(table.dead)
        live = [n for n in table.replicas[done.slot] if n not in dead]
        if done.target in dead or not live or live[0] != done.node_id or done.target in live:
            return False
        self.finished.append(Finished(done.slot, done.target, move.replaces))
        self.slots_done += 1
        self.keys_done += done.keys
        return True

    def take_finished(self) -> list[Finished]:
        finished, self.finished = self.finished, []
        return finished

    def cancel_broken(self, table: TableData, now: float) -> list[Move]:
        """Drop moves whose source or target died or whose source is no longer primary, and stale ones.

        A move whose slot changed epoch (another of its replicas died) is
        dropped too: its source refuses a copy asked for at an older epoch, so
        it is planned again at once rather than after ``COPY_TIMEOUT``.
        """
        dead = set(table.dead)
        cancelled = []
        for slot, move in list(self.moves.items()):
            live = [n for n in table.replicas[slot] if n not in dead]
            broken = move.target in dead or not live or live[0] != move.source or table.epochs[slot] != move.epoch
            if broken or now - move.started > COPY_TIMEOUT:
                del self.moves[slot]
                cancelled.append(move)
        self.finished = [f for f in self.finished if f.target not in dead]
        return cancelled

    def idle(self) -> bool:
        return not self.moves and not self.finished


def plan_rebalance(
    table: TableData, repairs: Repairs, now: float, draining: frozenset[int] = frozenset()
) -> list[tuple[int, int]]:
    """Start replica moves from the most to the least loaded nodes; return primary switches to publish at once.

    Called only when no slot is short of replicas. A node being drained is
    the most loaded of all until it holds nothing. Replica moves come first:
    primaries are evened out only among nodes already balanced in total.
    """
    dead = set(table.dead)
    live_lists = [[n for n in nodes if n not in dead] for nodes in table.replicas]
    totals = {n: sum(ranks) for n, ranks in rank_load(table).items()}
    for n in draining & totals.keys():
        if totals[n]:
            totals[n] += 2 * len(live_lists)  # the heaviest, whatever the others hold
    if not totals:
        return []
    pending = [(m.target, m.replaces) for m in repairs.moves.values()] + [
        (f.target, f.replaces) for f in repairs.finished
    ]
    for target, replaces in pending:
        totals[target] = totals.get(target, 0) + 1
        if replaces in totals:
            totals[replaces] -= 1
    busy = dict.fromkeys(totals, 0)
    for move in repairs.moves.values():
        for n in (move.source, move.target):
            busy[n] = busy.get(n, 0) + 1
    started = False
    takers = [n for n in totals if n not in draining]
    if not takers:
        return []
    for slot, live in enumerate(live_lists):
        heavy, lightest = max(totals, key=lambda n: (totals[n], n)), min(takers, key=lambda n: (totals[n], n))
        if totals[heavy] - totals[lightest] <= 1:
            break
        if slot in repairs.moves or repairs.finishing(slot) or heavy not in live:
            continue
        # The least loaded node that does not hold the slot yet (for a drain, any node may be the only way out).
        light = min((n for n in takers if n not in live), key=lambda n: (totals[n], n), default=None)
        if light is None or totals[heavy] - totals[light] <= 1:
            continue
        if busy[live[0]] >= COPIES_PER_NODE or busy[light] >= COPIES_PER_NODE:
            continue
        repairs.moves[slot] = Move(slot, live[0], light, table.epochs[slot], now, replaces=heavy)
        busy[live[0]] += 1
        busy[light] += 1
        totals[light] += 1
        totals[heavy] -= 1
        started = True
    if (
        started
        or not repairs.idle()
        or max(totals[n] for n in totals if n not in draining or totals[n]) - min(totals[n] for n in takers) > 1
    ):
        return []
    return _primary_switches(live_lists, takers)


def _primary_switches(live_lists: list[list[int]], nodes: list[int]) -> list[tuple[int, int]]:
    """Hand primaries from nodes above the mean to live backups of the same slots below it.

    Each switch narrows a gap of at least two, so repeated rounds converge on
    every node within one primary of the others.
    """
    primaries = dict.fromkeys(nodes, 0)
    for live in live_lists:
        if live and live[0] in primaries:
            primaries[live[0]] += 1
    mean = sum(primaries.values()) / len(primaries)
    switches: list[tuple[int, int]] = []
    for slot, live in enumerate(live_lists):
        if len(switches) >= SWITCHES_PER_TABLE:
            break
        if not live or live[0] not in primaries or primaries[live[0]] <= mean:
            continue
        heir = min((n for n in live[1:] if n in primaries), key=lambda n: (primaries[n], n), default=None)
        if heir is not None and primaries[live[0]] - primaries[heir] >= 2:
            switches.append((slot, heir))
            primaries[live[0]] -= 1
            primaries[heir] += 1
    return switches
