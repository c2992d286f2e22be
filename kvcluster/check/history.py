"""Operation histories recorded by clients, for checking linearizability."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kvcluster.core.client_ops import Completion, OpResult
from kvcluster.core.wire import OpKind as WireKind


class OpKind(enum.StrEnum):
    """What a client asked the store to do."""

    GET = "get"
    PUT = "put"
    DELETE = "delete"  # a write of "absent"


class Outcome(enum.StrEnum):
    """What the client learned about its operation."""

    OK = "ok"
    NOT_FOUND = "not_found"
    """A get found no value for the key."""
    FAILED = "failed"
    """The operation was definitely not applied."""
    UNKNOWN = "unknown"
    """The client timed out: the operation may or may not have been applied."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on one key, with the interval in which it ran.

    ``value`` is the value written by a put, the value read by an OK get,
    and None otherwise (a delete writes "absent").  ``invoke`` and ``complete`` are monotonic seconds;
    for an UNKNOWN outcome ``complete`` is when the client gave up waiting.
    """

    client: int
    kind: OpKind
    key: str
    value: str | None
    invoke: float
    complete: float
    outcome: Outcome

    def to_json(self) -> dict[str, object]:
        """Return a JSON-serialisable dict; the inverse of :meth:`from_json`."""
        return {
            "client": self.client,
            "kind": self.kind.value,
            "key": self.key,
            "value": self.value,
            "invoke": self.invoke,
            "complete": self.complete,
            "outcome": self.outcome.value,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, object]) -> Operation:
        """Build an operation from a dict produced by :meth:`to_json`.

        Raises ValueError if a field is missing or has the wrong type.
        """
        return cls(
            client=_int_field(d, "client"),
            kind=OpKind(_str_field(d, "kind")),
            key=_str_field(d, "key"),
            value=_optional_str_field(d, "value"),
            invoke=_float_field(d, "invoke"),
            complete=_float_field(d, "complete"),
            outcome=Outcome(_str_field(d, "outcome")),
        )


def _field(d: Mapping[str, object], name: str) -> object:
    try:
        return d[name]
    except KeyError:
        raise ValueError(f"operation record lacks field {name!r}: {d!r}") from None


def _wrong_type(name: str, expected: str, got: object) -> ValueError:
    return ValueError(f"operation field {name!r} must be {expected}, got {got!r}")


def _int_field(d: Mapping[str, object], name: str) -> int:
    value = _field(d, name)
    # bool is a subclass of int, but true/false is never a valid client id.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(name, "an integer", value)
    return value


def _float_field(d: Mapping[str, object], name: str) -> float:
    value = _field(d, name)
    # JSON writers may render a whole number of seconds without a fraction.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type(name, "a number", value)
    return float(value)


def _str_field(d: Mapping[str, object], name: str) -> str:
    value = _field(d, name)
    if not isinstance(value, str):
        raise _wrong_type(name, "a string", value)
    return value


def _optional_str_field(d: Mapping[str, object], name: str) -> str | None:
    value = _field(d, name)
    if value is not None and not isinstance(value, str):
        raise _wrong_type(name, "a string or null", value)
    return value


class HistoryRecorder:
    """Collects the operations a client performed, in the order recorded.

    Not thread-safe: give each client thread its own recorder and merge
    them with :meth:`extend`.
    """

    def __init__(self) -> None:
        self._operations: list[Operation] = []

    def record(self, op: Operation) -> None:
        """Append one completed (or abandoned) operation."""
        self._operations.append(op)

    def extend(self, ops: Iterable[Operation]) -> None:
        """Append several operations, e.g. another recorder's."""
        self._operations.extend(ops)

    @property
    def operations(self) -> list[Operation]:
        """A copy of the operations recorded so far."""
        return list(self._operations)

    def save(self, path: Path) -> None:
        """Write the history to ``path`` as JSON lines, one operation each."""
        with path.open("w", encoding="utf-8") as f:
            for op in self._operations:
                f.write(json.dumps(op.to_json()) + "\n")

    @staticmethod
    def load(path: Path) -> list[Operation]:
        """Read a history written by :meth:`save`."""
        ops: list[Operation] = []
        with path.open(encoding="utf-8") as f:
            for line_number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"{path}:{line_number}: expected a JSON object")  # noqa: TRY004 - bad data, like json's own errors
                ops.append(Operation.from_json(record))
        return ops


def history_operation(
    client: int, kind: WireKind, key: str, value: str | None, invoked: float, completed: float, result: OpResult
) -> Operation:
    """The history record of one finished operation, as the linearizability checker reads it."""
    # A write that failed in any way may still have reached a primary before it died.
    outcome = Outcome.FAILED if kind == WireKind.GET else Outcome.UNKNOWN
    if result.completion in (Completion.OK, Completion.NOT_FOUND):
        found = result.completion == Completion.OK
        outcome = Outcome.OK if found or kind != WireKind.GET else Outcome.NOT_FOUND
        value = result.value if kind == WireKind.GET else value
    elif kind == WireKind.GET:
        value = None
    return Operation(client, OpKind[kind.name], key, value, invoked, completed, outcome)
