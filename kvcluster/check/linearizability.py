"""Check histories of a key-value store for linearizability.

Linearizability is local (Herlihy & Wing): a history is linearizable if and
only if the sub-history of every object is.  So :func:`check` splits the
history by key and checks each key on its own as a read/write register whose
initial state is "absent" (None).

Each key is searched (``search.py``) with the Wing & Gong algorithm plus Lowe's memoisation,
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

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kvcluster.check.history import Operation, OpKind, Outcome
from kvcluster.check.search import CheckTooExpensive, Role, Search, observed, role

__all__ = ["CheckResult", "CheckTooExpensive", "Violation", "check"]

DEFAULT_MAX_STATES = 2_000_000
"""Memoised configurations explored per key before giving up."""

DEFAULT_SHRINK_BUDGET = 1_000_000
"""Configurations explored, in total, while shrinking a violation (or as many
as finding it took, if that is more)."""


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
        search = Search(ops, max_states)
        if not search.run():
            # Shrinking may take as much effort as finding the violation did.
            budget = max(shrink_budget, search.states)
            violation = _violation(key, by_key[key], _Shrinker(ops, budget, search.reached()))
            return CheckResult(ok=False, operations=total, keys=len(by_key), violation=violation)
    return CheckResult(ok=True, operations=total, keys=len(by_key))


def _constraining(ops: Iterable[Operation]) -> list[Operation]:
    """The operations that constrain linearizability, validated."""
    kept = []
    for op in ops:
        kind = role(op)
        if kind is Role.IGNORED:
            continue
        if kind is not Role.MAYBE_WRITE and op.complete < op.invoke:
            raise ValueError(f"operation completes before it was invoked: {op}")
        kept.append(op)
    return kept


def _without_unread_unknown_puts(ops: list[Operation]) -> list[Operation]:
    """Drop UNKNOWN puts whose value nobody read.

    Never applying such a put is always at least as consistent as applying
    it: no read depends on it, and any read after it would need another
    write anyway.  Dropping them keeps the search space small when many
    requests time out.
    """
    read = {observed(op) for op in ops if op.kind is OpKind.GET}
    return [op for op in ops if role(op) is not Role.MAYBE_WRITE or observed(op) in read]


def _violation(key: str, all_ops: list[Operation], shrinker: _Shrinker) -> Violation:
    shrunk = shrinker.shrink()
    written = {observed(op) for op in shrunk if op.kind is not OpKind.GET}
    read = {observed(op) for op in shrunk if op.kind is OpKind.GET}
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
        self.total_writes = Counter(observed(op) for op in ops if op.kind is not OpKind.GET)
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
        kept_writes = Counter(observed(ops[i]) for i in indices if ops[i].kind is not OpKind.GET)
        return [
            i
            for i in indices
            if ops[i].kind is not OpKind.GET or kept_writes[observed(ops[i])] == self.total_writes[observed(ops[i])]
        ]

    def _fails(self, indices: list[int]) -> bool:
        search = Search([self.ops[i] for i in indices], max(self.budget, 0))
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
    value = observed(op)
    shown = "(absent)" if value is None else repr(value)
    return f"{op.kind} {op.key} = {shown}"


def _time_decimals(times: list[float]) -> int:
    """Enough decimals (3 or 6) that distinct finite times print distinctly."""
    distinct = sorted({t for t in times if math.isfinite(t)})
    gaps = [b - a for a, b in itertools.pairwise(distinct)]
    return 6 if any(gap < 0.001 for gap in gaps) else 3
