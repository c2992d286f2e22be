"""Check histories of a key-value store for linearizability.

Linearizability is local (Herlihy & Wing): a history is linearizable if and
only if the sub-history of every object is.  So :func:`check` splits the
history by key and checks each key on its own as a read/write register whose
initial state is "absent" (None).

Each key is searched with the Wing & Gong algorithm plus Lowe's memoisation,
the same "just-in-time linearization" search that Knossos and Porcupine use:
walk the call/return events in time order, try to linearize any operation
whose call has been seen, backtrack when an operation returns without having
been linearized, and never revisit a (set of linearized operations, register
state) configuration.

How outcomes are interpreted:

* PUT OK took effect exactly once between its invoke and complete.
* PUT FAILED never took effect, so it is ignored.
* PUT UNKNOWN may take effect at any time after its invoke (with no upper
  bound, since it may still be in flight when the client gives up) or never.
* GET OK with value v returned v between its invoke and complete.
* GET NOT_FOUND returned "absent".
* GET FAILED and GET UNKNOWN carry no information, so they are ignored.
* DELETE is a put of "absent", with the same outcomes.  Whether the key
  existed, which a delete also reports, is not checked: a resend of an
  applied delete is answered as if it had existed.

Operations whose intervals touch (one's invoke equals another's complete) are
treated as concurrent, so coarse clocks can never cause a false alarm.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from kvcluster.check.history import Operation, OpKind, Outcome

DEFAULT_MAX_STATES = 2_000_000
"""Memoised configurations explored per key before giving up."""

DEFAULT_SHRINK_BUDGET = 1_000_000
"""Configurations explored, in total, while shrinking a violation (or as many
as finding it took, if that is more)."""

_State: TypeAlias = str | None
"""Register contents; None means the key is absent."""

# Event kinds.  Sorting calls before returns at equal timestamps makes
# touching intervals concurrent, which only ever admits more linearizations.
_CALL = 0
_RETURN = 1


class CheckTooExpensive(Exception):
    """The search for a linearization exceeded its state budget.

    The history is neither accepted nor rejected: it has too much
    concurrency (or too many UNKNOWN puts) to be checked within the budget.
    """

    def __init__(self, key: str, operations: int, max_states: int) -> None:
        super().__init__(
            f"checking key {key!r} ({operations} operations) explored more than "
            f"{max_states} states without a verdict; split the history or "
            "raise max_states"
        )
        self.key = key
        self.operations = operations
        self.max_states = max_states


@dataclass(frozen=True)
class Violation:
    """A small sub-history of one key that has no linearization."""

    key: str
    operations: list[Operation]

    def describe(self) -> str:
        """Render the operations one per line, times relative to the first invoke."""
        heading = (
            f"key {self.key!r}: no linearization exists for these "
            f"{len(self.operations)} operations (seconds since the first invoke):"
        )
        return "\n".join([heading, *_describe_operations(self.operations)])


@dataclass(frozen=True)
class CheckResult:
    """The verdict on a whole history.

    ``operations`` counts the operations that constrain the verdict (ignored
    ones, such as FAILED puts, are not counted); ``keys`` counts distinct
    keys in the history.  ``violation`` is set exactly when ``ok`` is false.
    """

    ok: bool
    operations: int
    keys: int
    violation: Violation | None = None


class _Role(enum.Enum):
    WRITE = enum.auto()
    MAYBE_WRITE = enum.auto()
    READ = enum.auto()
    IGNORED = enum.auto()


def check(
    history: Iterable[Operation],
    *,
    max_states: int = DEFAULT_MAX_STATES,
    shrink_budget: int = DEFAULT_SHRINK_BUDGET,
) -> CheckResult:
    """Decide whether ``history`` is linearizable.

    Keys are checked in sorted order and the first violating key is
    reported, shrunk to a small offending sub-history.  Raises
    :class:`CheckTooExpensive` if a key needs more than ``max_states``
    configurations, and ValueError for malformed operations.
    """
    by_key: dict[str, list[Operation]] = defaultdict(list)
    for op in history:
        by_key[op.key].append(op)
    constraining = {key: _constraining(ops) for key, ops in by_key.items()}
    total = sum(len(ops) for ops in constraining.values())

    for key in sorted(constraining):
        ops = _without_unread_unknown_puts(constraining[key])
        search = _Search(ops, max_states)
        if not search.run():
            # Shrinking may take as much effort as finding the violation did.
            budget = max(shrink_budget, search.states)
            violation = _violation(key, by_key[key], _Shrinker(ops, budget, search.reached()))
            return CheckResult(ok=False, operations=total, keys=len(by_key), violation=violation)
    return CheckResult(ok=True, operations=total, keys=len(by_key))


def _role(op: Operation) -> _Role:
    match op.kind, op.outcome:
        case OpKind.PUT, Outcome.OK:
            return _Role.WRITE
        case OpKind.DELETE, Outcome.OK | Outcome.NOT_FOUND:
            return _Role.WRITE
        case OpKind.PUT | OpKind.DELETE, Outcome.UNKNOWN:
            return _Role.MAYBE_WRITE
        case OpKind.PUT | OpKind.DELETE, Outcome.FAILED:
            return _Role.IGNORED
        case OpKind.GET, Outcome.OK | Outcome.NOT_FOUND:
            return _Role.READ
        case OpKind.GET, Outcome.FAILED | Outcome.UNKNOWN:
            return _Role.IGNORED
    raise ValueError(f"a {op.kind} cannot have outcome {op.outcome}: {op}")


def _constraining(ops: Iterable[Operation]) -> list[Operation]:
    """The operations that constrain linearizability, validated."""
    kept = []
    for op in ops:
        role = _role(op)
        if role is _Role.IGNORED:
            continue
        if role is not _Role.MAYBE_WRITE and op.complete < op.invoke:
            raise ValueError(f"operation completes before it was invoked: {op}")
        kept.append(op)
    return kept


def _observed(op: Operation) -> _State:
    """The register state a read saw, or the state a write produces."""
    return None if op.outcome is Outcome.NOT_FOUND or op.kind is OpKind.DELETE else op.value


def _without_unread_unknown_puts(ops: list[Operation]) -> list[Operation]:
    """Drop UNKNOWN puts whose value nobody read.

    Never applying such a put is always at least as consistent as applying
    it: no read depends on it, and any read after it would need another
    write anyway.  Dropping them keeps the search space small when many
    requests time out.
    """
    read = {_observed(op) for op in ops if op.kind is OpKind.GET}
    return [op for op in ops if _role(op) is not _Role.MAYBE_WRITE or _observed(op) in read]


# Register states inside the search are small ints: one per distinct value,
# with "absent" fixed, plus DEAD for any value no remaining read can observe.
# Those are indistinguishable from then on, so merging them keeps the
# memoisation table small when many writes are never read.
_ABSENT = 0
_DEAD = -1

# Signals between the steps of the search.
_BACKTRACK = -1


class _Search:
    """Lowe's just-in-time linearization search over one key's operations.

    Beyond plain Wing & Gong with memoisation, one exchange argument prunes
    the search: a read that could be linearized now (its call precedes every
    pending return) and matches the current state might as well be
    linearized now, since any linearization of the rest can be reordered to
    put it first.  Such "forced" reads are never tried in other positions.
    """

    def __init__(self, ops: Sequence[Operation], max_states: int) -> None:
        self.ops = ops
        self.max_states = max_states
        self.optional = [_role(op) is _Role.MAYBE_WRITE for op in ops]
        self.writes = [op.kind is not OpKind.GET for op in ops]
        ids: dict[_State, int] = {None: _ABSENT}
        self.values = [ids.setdefault(_observed(op), len(ids)) for op in ops]
        # Per value, how many reads of it are not linearized yet.
        self.unread = [0] * len(ids)
        for i, value in enumerate(self.values):
            if not self.writes[i]:
                self.unread[value] += 1
        self.remaining = self.optional.count(False)
        self._build_event_list()

        self.state = self._settled(_ABSENT)
        self.linearized = 0
        self.run_bits = len(ops).bit_length()
        self.state_bits = len(ids).bit_length()
        self.seen: set[int] = {self._memo_key((self.linearized, self.state))}
        # (operation, state before it, whether it was a forced read)
        self.stack: list[tuple[int, int, bool]] = []
        # The latest return event any branch of the search got stuck at.
        self.frontier = self.head

    def _build_event_list(self) -> None:
        # A doubly linked list of events (Knuth's dancing links), so an
        # operation can be lifted out when linearized and put back in O(1)
        # when backtracking.  UNKNOWN puts never return: nothing forces them
        # to be linearized.
        returns = [math.inf if optional else op.complete for op, optional in zip(self.ops, self.optional, strict=True)]
        events = sorted(
            [(op.invoke, _CALL, i) for i, op in enumerate(self.ops)]
            + [(time, _RETURN, i) for i, time in enumerate(returns)]
        )
        self.head = 0
        tail = len(events) + 1
        self.is_call = [False] * (tail + 1)
        self.event_op = [0] * (tail + 1)
        self.call_node = [0] * len(self.ops)
        self.return_node = [0] * len(self.ops)
        for node, (_, kind, i) in enumerate(events, start=1):
            self.event_op[node] = i
            self.is_call[node] = kind == _CALL
            if kind == _CALL:
                self.call_node[i] = node
            else:
                self.return_node[i] = node
        self.next = list(range(1, tail + 2))
        self.prev = list(range(-1, tail))
        # Bit k of a linearized set stands for the k-th operation to return,
        # so the set is mostly a run of low ones, which _memo_key compresses.
        self.bits = [0] * len(self.ops)
        returns_in_order = (i for _, kind, i in events if kind == _RETURN)
        for rank, i in enumerate(returns_in_order):
            self.bits[i] = 1 << rank

    def run(self) -> bool:
        """Whether a linearization exists."""
        resume = self._linearize_forced_reads()
        while self.remaining:
            if resume == _BACKTRACK:
                backtracked_to = self._backtrack()
                if backtracked_to is None:
                    return False
                resume = backtracked_to
            else:
                resume = self._linearize_next_write(resume)
        return True

    def reached(self) -> list[int]:
        """The operations invoked before the search got stuck for good."""
        return [i for i, node in enumerate(self.call_node) if node < self.frontier]

    def _memo_key(self, configuration: tuple[int, int]) -> int:
        """A compact, lossless encoding of (linearized set, state).

        Memory, not time, is what limits the search, and most of a set is a
        run of low one bits (see ``bits``): store that run as a count.
        """
        linearized, state = configuration
        run = ((linearized + 1) & ~linearized).bit_length() - 1
        packed = (linearized >> run) << self.run_bits | run
        # States start at _DEAD = -1.
        return packed << self.state_bits | (state + 1)

    @property
    def states(self) -> int:
        """Configurations memoised so far."""
        return len(self.seen) - 1

    def _settled(self, value: int) -> int:
        return value if self.unread[value] else _DEAD

    def _linearize_forced_reads(self) -> int:
        """Linearize every read that matches the state right now.

        Returns the node to scan for writes from, or _BACKTRACK.
        """
        next_node, is_call, event_op = self.next, self.is_call, self.event_op
        while self.remaining:
            node = next_node[self.head]
            while is_call[node]:
                i = event_op[node]
                if not self.writes[i] and self.values[i] == self.state:
                    break
                node = next_node[node]
            else:
                return next_node[self.head]
            self.unread[self.state] -= 1
            configuration = (self.linearized | self.bits[i], self._settled(self.state))
            self.unread[self.state] += 1
            key = self._memo_key(configuration)
            # Equivalent to the current configuration, which therefore fails.
            if key in self.seen:
                return _BACKTRACK
            self._push(i, configuration, key, forced=True)
        return self.head

    def _linearize_next_write(self, node: int) -> int:
        """Linearize the first untried write at or after ``node``.

        Returns the node to scan for writes from next, or _BACKTRACK if an
        operation returns before any untried write can be linearized.
        """
        next_node, is_call, event_op = self.next, self.is_call, self.event_op
        while is_call[node]:
            i = event_op[node]
            value = self.values[i]
            # An UNKNOWN put nobody will read may as well never happen.
            if self.writes[i] and (self.unread[value] or not self.optional[i]):
                configuration = (self.linearized | self.bits[i], self._settled(value))
                key = self._memo_key(configuration)
                if key not in self.seen:
                    self._push(i, configuration, key, forced=False)
                    return self._linearize_forced_reads()
            node = next_node[node]
        self.frontier = max(self.frontier, node)
        return _BACKTRACK

    def _backtrack(self) -> int | None:
        """Undo up to the last write tried; return the node after its call.

        None means every alternative has failed.
        """
        while self.stack:
            i, forced = self._pop()
            if not forced:
                return self.next[self.call_node[i]]
        return None

    def _push(self, i: int, configuration: tuple[int, int], key: int, *, forced: bool) -> None:
        if len(self.seen) > self.max_states:
            raise CheckTooExpensive(self.ops[i].key, len(self.ops), self.max_states)
        self.seen.add(key)
        self.stack.append((i, self.state, forced))
        self.linearized, self.state = configuration
        if not self.optional[i]:
            self.remaining -= 1
        if not self.writes[i]:
            self.unread[self.values[i]] -= 1
        self._lift(i)

    def _pop(self) -> tuple[int, bool]:
        i, self.state, forced = self.stack.pop()
        self.linearized &= ~self.bits[i]
        if not self.optional[i]:
            self.remaining += 1
        if not self.writes[i]:
            self.unread[self.values[i]] += 1
        self._unlift(i)
        return i, forced

    def _lift(self, i: int) -> None:
        next_node, prev_node = self.next, self.prev
        for node in (self.call_node[i], self.return_node[i]):
            next_node[prev_node[node]] = next_node[node]
            prev_node[next_node[node]] = prev_node[node]

    def _unlift(self, i: int) -> None:
        # Dancing links: restore in the reverse order of removal.
        next_node, prev_node = self.next, self.prev
        for node in (self.return_node[i], self.call_node[i]):
            next_node[prev_node[node]] = node
            prev_node[next_node[node]] = node


def _violation(key: str, all_ops: list[Operation], shrinker: _Shrinker) -> Violation:
    shrunk = shrinker.shrink()
    written = {_observed(op) for op in shrunk if op.kind is not OpKind.GET}
    read = {_observed(op) for op in shrunk if op.kind is OpKind.GET}
    # A read of a value only a FAILED put wrote is self-evidently wrong on its
    # own, but showing that put explains where the value came from.
    context = [
        op for op in all_ops if op.kind is OpKind.PUT and op.outcome is Outcome.FAILED and op.value in read - written
    ]
    operations = sorted(shrunk + context, key=lambda op: (op.invoke, op.complete))
    return Violation(key, operations)


class _Shrinker:
    """Shrinks a non-linearizable history to a small non-linearizable part.

    Only "closed" sub-histories are considered: whenever a put is dropped,
    so are the reads of its value (with duplicate values: of any value not
    all of whose puts are kept).  A linearization of the whole history then
    restricts to one of the part, so a non-linearizable part proves the
    whole non-linearizable; without the rule, dropping a put would make its
    reads impossible and "find" violations that shrinking itself created.
    Closed parts are also monotone (a closed superset of a failing part
    fails too), which lets the first phases binary-search.

    ``hint`` names the operations invoked before the latest point where the
    search got stuck; the violation usually ends there.
    """

    def __init__(self, ops: list[Operation], budget: int, hint: list[int]) -> None:
        self.ops = ops
        self.budget = budget
        self.hint = hint
        self.total_writes = Counter(_observed(op) for op in ops if op.kind is not OpKind.GET)
        self.current = list(range(len(ops)))

    def shrink(self) -> list[Operation]:
        """The smallest failing part found within the budget."""
        # Proving a part non-linearizable costs about as much as searching
        # all of it before the violation, so the first phase looks at small
        # parts first, and later phases work on what is left.
        try:
            self._keep_window_before_frontier()
            self._drop_longest_passing_beginning()
            self._keep_shortest_failing_prefix()
            self._drop_chunks()
        except CheckTooExpensive:
            pass  # out of budget: settle for the best part so far
        return [self.ops[i] for i in self.current]

    def _closed(self, indices: Iterable[int]) -> list[int]:
        indices = list(indices)
        ops = self.ops
        kept_writes = Counter(_observed(ops[i]) for i in indices if ops[i].kind is not OpKind.GET)
        return [
            i
            for i in indices
            if ops[i].kind is not OpKind.GET or kept_writes[_observed(ops[i])] == self.total_writes[_observed(ops[i])]
        ]

    def _fails(self, indices: list[int]) -> bool:
        search = _Search([self.ops[i] for i in indices], max(self.budget, 0))
        try:
            return not search.run()
        finally:
            self.budget -= search.states

    def _keep_window_before_frontier(self) -> None:
        """Keep the fewest last-completing hinted operations that still fail.

        Windows grow geometrically, so the cheap small ones come first.
        """
        by_complete = sorted(self.hint, key=lambda i: self.ops[i].complete, reverse=True)
        size = 4
        while True:
            size = min(size, len(by_complete))
            candidate = sorted(self._closed(by_complete[:size]))
            if len(candidate) < len(self.current) and self._fails(candidate):
                self.current = candidate
                return
            if size == len(by_complete):
                return
            size *= 2

    def _keep_shortest_failing_prefix(self) -> None:
        """Cut everything invoked after the violation is already certain."""
        by_invoke = sorted(self.current, key=lambda i: self.ops[i].invoke)
        passing, failing = 0, len(by_invoke)
        while failing - passing > 1:
            middle = (passing + failing) // 2
            if self._fails(self._closed(by_invoke[:middle])):
                failing = middle
            else:
                passing = middle
        self.current = sorted(self._closed(by_invoke[:failing]))

    def _drop_longest_passing_beginning(self) -> None:
        """Cut everything that completed before the violation began."""
        by_complete = sorted(self.current, key=lambda i: self.ops[i].complete)
        failing, passing = 0, len(by_complete)
        while passing - failing > 1:
            middle = (failing + passing) // 2
            if self._fails(self._closed(by_complete[middle:])):
                failing = middle
            else:
                passing = middle
        self.current = sorted(self._closed(by_complete[failing:]))

    def _drop_chunks(self) -> None:
        """Delta debugging: drop chunks of halving size while the rest fails."""
        chunk_size = max(1, len(self.current) // 2)
        while True:
            starts = range(0, len(self.current), chunk_size)
            for chunk in [self.current[j : j + chunk_size] for j in starts]:
                dropped = set(chunk)
                candidate = self._closed(i for i in self.current if i not in dropped)
                if len(candidate) < len(self.current) and self._fails(candidate):
                    self.current = candidate
            if chunk_size == 1:
                return
            chunk_size = max(1, min(chunk_size // 2, len(self.current) // 2))


def _describe_operations(ops: Sequence[Operation]) -> list[str]:
    if not ops:
        return []
    origin = min(op.invoke for op in ops)
    times = [t - origin for op in ops for t in (op.invoke, op.complete)]
    decimals = _time_decimals(times)
    clients = [f"client {op.client}" for op in ops]
    actions = [_describe_action(op) for op in ops]
    client_width = max(map(len, clients))
    action_width = max(map(len, actions))
    return [
        f"  {client.ljust(client_width)}  {action.ljust(action_width)}   "
        f"[{op.invoke - origin:.{decimals}f} → {op.complete - origin:.{decimals}f}] "
        f"{op.outcome}"
        for op, client, action in zip(ops, clients, actions, strict=True)
    ]


def _describe_action(op: Operation) -> str:
    value = _observed(op)
    shown = "(absent)" if value is None else repr(value)
    return f"{op.kind} {op.key} = {shown}"


def _time_decimals(times: list[float]) -> int:
    """Enough decimals (3 or 6) that distinct finite times print distinctly."""
    distinct = sorted({t for t in times if math.isfinite(t)})
    gaps = [b - a for a, b in itertools.pairwise(distinct)]
    return 6 if any(gap < 0.001 for gap in gaps) else 3
