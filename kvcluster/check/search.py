"""The search at the heart of the checker: Wing & Gong with Lowe's memoisation, over one key's operations.

``linearizability.py`` decides which operations constrain a key and what to report;
this module only answers whether a list of them has a linearization, within a budget
of explored configurations.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import TypeAlias

from kvcluster.check.history import Operation, OpKind, Outcome


class Role(enum.Enum):
    """What an operation tells the search: a write, a write that may or may not have happened, a read, nothing."""

    WRITE = enum.auto()
    MAYBE_WRITE = enum.auto()
    READ = enum.auto()
    IGNORED = enum.auto()


def role(op: Operation) -> Role:
    """The role of ``op`` by its kind and outcome; ValueError for a combination no client produces."""
    match op.kind, op.outcome:
        case OpKind.PUT, Outcome.OK:
            return Role.WRITE
        case OpKind.DELETE, Outcome.OK | Outcome.NOT_FOUND:
            return Role.WRITE
        case OpKind.PUT | OpKind.DELETE, Outcome.UNKNOWN:
            return Role.MAYBE_WRITE
        case OpKind.PUT | OpKind.DELETE, Outcome.FAILED:
            return Role.IGNORED
        case OpKind.GET, Outcome.OK | Outcome.NOT_FOUND:
            return Role.READ
        case OpKind.GET, Outcome.FAILED | Outcome.UNKNOWN:
            return Role.IGNORED
    raise ValueError(f"a {op.kind} cannot have outcome {op.outcome}: {op}")


State: TypeAlias = str | None
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


def observed(op: Operation) -> State:
    """The register state a read saw, or the state a write produces."""
    return None if op.outcome is Outcome.NOT_FOUND or op.kind is OpKind.DELETE else op.value


# Register states inside the search are small ints: one per distinct value,
# with "absent" fixed, plus DEAD for any value no remaining read can observe.
# Those are indistinguishable from then on, so merging them keeps the
# memoisation table small when many writes are never read.
_ABSENT = 0
_DEAD = -1

# Signals between the steps of the search.
_BACKTRACK = -1


class Search:
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
        self.optional = [role(op) is Role.MAYBE_WRITE for op in ops]
        self.writes = [op.kind is not OpKind.GET for op in ops]
        ids: dict[State, int] = {None: _ABSENT}
        self.values = [ids.setdefault(observed(op), len(ids)) for op in ops]
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
