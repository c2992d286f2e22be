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
one (add before remove), at its rank (the slots a restarted node still holds
first, since copying those back costs only the writes it missed): replacing a primary makes the new
node primary, and its reconcile stops the old one before it serves.

Once totals are within one, primaries are evened out to within one too,
and with them backups, mostly without copying: a live backup that already
holds a slot is moved to the front of its list (a *switch*), and the
promotion's reconcile makes the old primary stop before the new one serves.
Switches go along chains (A hands a slot to B, B another to C) when no
backup of an over-full node's slots is short of primaries; only when no
chain exists do copies hand a primary over (one, or two that swap places).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvcluster.core.placement import choose_target, rank_load, under_replicated
from kvcluster.core.protocol import CopyDone
from kvcluster.core.wire import TableData

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
    table: TableData,
    repairs: Repairs,
    now: float,
    draining: frozenset[int] = frozenset(),
    held: frozenset[int] = frozenset(),
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
    # Slots a returning node still holds come first: copying one back to it sends only what it missed.
    for slot in sorted(range(len(live_lists)), key=lambda s: s not in held):
        live = live_lists[slot]
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
    shares = primary_shares(live_lists, {n: totals[n] for n in takers})
    switches = _primary_switches(live_lists, shares)
    if not switches:
        for move in _opening_moves(table, live_lists, shares, totals, now):
            repairs.moves[move.slot] = move
    return switches


def primary_shares(live_lists: list[list[int]], totals: dict[int, int]) -> dict[int, tuple[int, int]]:
    """Per node: (primaries it holds, primaries it should hold) once every node is within one of the others.

    The primaries left over after an even split go to the nodes holding one
    slot more than the others first, so that backups (total less primaries)
    end within one as well; among equals, to the nodes that hold the most
    primaries already, so that as few primaries as possible change hands.
    """
    held = dict.fromkeys(totals, 0)
    for live in live_lists:
        if live and live[0] in held:
            held[live[0]] += 1
    each, extra = divmod(sum(held.values()), len(held))
    order = sorted(held, key=lambda n: (-totals[n], -held[n], n))
    return {n: (held[n], each + (i < extra)) for i, n in enumerate(order)}


def _primary_switches(live_lists: list[list[int]], shares: dict[int, tuple[int, int]]) -> list[tuple[int, int]]:
    """Hand primaries from nodes above their share to nodes below it, along chains of live backups.

    A switch makes a live backup of a slot its primary (no data moves). When
    no backup of an over-full node's slots is short of primaries, the chain
    goes through nodes at their share: each hands one primary on and receives
    one, so only the two ends change. Every chain brings two nodes closer to
    their share, so repeated rounds converge.
    """
    held = {n: have for n, (have, _) in shares.items()}
    lists = [list(live) for live in live_lists]
    switched: dict[int, int] = {}
    while len(switched) < SWITCHES_PER_TABLE:
        chain = _handover_chain(lists, held, shares, switched)
        if not chain or len(switched) + len(chain) > SWITCHES_PER_TABLE:
            break
        for slot, heir in chain:
            held[lists[slot][0]] -= 1
            held[heir] += 1
            lists[slot] = [heir, *(n for n in lists[slot] if n != heir)]
            switched[slot] = heir
    return list(switched.items())


def _handover_chain(
    lists: list[list[int]], held: dict[int, int], shares: dict[int, tuple[int, int]], switched: dict[int, int]
) -> list[tuple[int, int]]:
    """The shortest chain of switches from a node above its share to one below it (breadth first), or []."""
    edges: dict[int, list[tuple[int, int]]] = {n: [] for n in held}
    for slot, live in enumerate(lists):
        if live and live[0] in edges and slot not in switched:
            edges[live[0]].extend((slot, heir) for heir in live[1:] if heir in held)
    came_from: dict[int, tuple[int, int] | None] = {n: None for n in sorted(held) if held[n] > shares[n][1]}
    frontier = list(came_from)
    while frontier:
        following: list[int] = []
        for node in frontier:
            for slot, heir in edges[node]:
                if heir in came_from:
                    continue
                came_from[heir] = (slot, node)
                if held[heir] < shares[heir][1]:
                    return _unwind(came_from, heir)
                following.append(heir)
        frontier = following
    return []


def _unwind(came_from: dict[int, tuple[int, int] | None], end: int) -> list[tuple[int, int]]:
    chain: list[tuple[int, int]] = []
    step = came_from[end]
    node = end
    while step is not None:
        slot, giver = step
        chain.append((slot, node))
        node, step = giver, came_from[giver]
    return chain[::-1]


def _opening_moves(
    table: TableData,
    live_lists: list[list[int]],
    shares: dict[int, tuple[int, int]],
    totals: dict[int, int],
    now: float,
) -> list[Move]:
    """When no chain of switches reaches a node short of primaries: the copies that hand it one directly.

    The node short of primaries takes the place of the primary of a slot led
    by a node holding too many (a copy that replaces a primary makes the new
    replica primary). That costs one copy if the giver holds more slots than
    the taker; otherwise the giver also takes the taker's place as backup of
    another slot, so totals do not change: two copies.
    """
    over = [n for n in sorted(shares) if shares[n][0] > shares[n][1]]
    under = [n for n in sorted(shares) if shares[n][0] < shares[n][1]]
    for taker in under:
        for slot, live in enumerate(live_lists):
            if not live or live[0] not in over or taker in live:
                continue
            giver = live[0]
            handover = Move(slot, giver, taker, table.epochs[slot], now, replaces=giver)
            if totals[giver] > totals[taker]:
                return [handover]
            back = next((s for s, other in enumerate(live_lists) if taker in other[1:] and giver not in other), None)
            if back is not None:
                return [handover, Move(back, live_lists[back][0], giver, table.epochs[back], now, replaces=taker)]
    return []
