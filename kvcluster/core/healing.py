"""Restoring every slot to ``rep`` replicas after deaths: the master's record of copies, with no I/O.

A *move* copies one slot from its primary to a new replica chosen by
``placement.choose_target``. It is a record in the master's state from the
moment it is started until the new replica is in a published table, so a
death of its source or target cancels it cleanly (the target drops its
partial copy when the next table shows the copy abandoned) and the slot is
planned again from the survivors. Copies are throttled per node, since
each costs its source and target a share of their loop, but many run at
once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvcluster.placement import choose_target, rank_load, under_replicated
from kvcluster.protocol import CopyDone, TableData

COPIES_PER_NODE = 16  # copies a node may be the source or the target of at once
COPY_TIMEOUT = 10.0  # seconds after which a move that has not finished is planned again


@dataclass(slots=True)
class Move:
    """One slot being copied to a new replica."""

    slot: int
    source: int
    target: int
    epoch: int
    started: float


@dataclass
class Repairs:
    """The moves under way and what healing has achieved since the last death."""

    moves: dict[int, Move] = field(default_factory=dict)  # by slot: at most one move per slot at a time
    finished: list[tuple[int, int]] = field(default_factory=list)  # (slot, target) caught up, not yet published
    slots_done: int = 0
    keys_done: int = 0
    started: float | None = None  # when the current round of repairs began

    def plan(self, now: float, table: TableData) -> list[Move]:
        """Start a move for every slot short of replicas that has none, within the per-node limits."""
        short = [slot for slot in under_replicated(table) if slot not in self.moves and not self._finishing(slot)]
        if not short:
            return []
        if self.started is None:
            self.started, self.slots_done, self.keys_done = now, 0, 0
        busy: dict[int, int] = {}
        for move in self.moves.values():
            busy[move.source] = busy.get(move.source, 0) + 1
            busy[move.target] = busy.get(move.target, 0) + 1
        load = rank_load(table)
        for joining in [m.target for m in self.moves.values()] + [t for _, t in self.finished]:
            if joining in load:
                load[joining][-1] += 1
        started = []
        dead = set(table.dead)
        for slot in short:
            source = next(n for n in table.replicas[slot] if n not in dead)
            if busy.get(source, 0) >= COPIES_PER_NODE:
                continue
            target = choose_target(table, slot, load)
            if target is None or busy.get(target, 0) >= COPIES_PER_NODE:
                continue  # the best target is busy: wait for it rather than unbalance the nodes
            move = Move(slot, source, target, table.epochs[slot], now)
            self.moves[slot] = move
            started.append(move)
            busy[source] = busy.get(source, 0) + 1
            busy[target] = busy.get(target, 0) + 1
            load[target][-1] += 1
        return started

    def _finishing(self, slot: int) -> bool:
        return any(s == slot for s, _ in self.finished)

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
        self.finished.append((done.slot, done.target))
        self.slots_done += 1
        self.keys_done += done.keys
        return True

    def take_finished(self) -> list[tuple[int, int]]:
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
        self.finished = [(s, t) for s, t in self.finished if t not in dead]
        return cancelled

    def idle(self) -> bool:
        return not self.moves and not self.finished
