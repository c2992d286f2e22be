"""The verdict on a recorded history, shared by the simulator and the chaos runs.

``judge`` runs the linearizability checker and says, in one of three words,
what it found; ``lost_writes`` reads the final reads of a run against the
acknowledged writes before them. A simulated run and a run on real processes
are held to the same two rules.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from kvcluster.check.history import Operation, OpKind, Outcome
from kvcluster.check.linearizability import CheckTooExpensive, check


class Verdict(enum.StrEnum):
    LINEARIZABLE = "linearizable"
    VIOLATION = "violation"
    INCONCLUSIVE = "inconclusive"  # the checker ran out of its budget of states


@dataclass(frozen=True)
class Judgement:
    """What the checker decided: ``checked`` operations constrained it; ``detail`` explains a non-linearizable one."""

    verdict: Verdict
    checked: int
    detail: str | None = None
    ended: float | None = None
    """When the last operation of a violation completed: where a failure report should look."""


def judge(history: Sequence[Operation]) -> Judgement:
    """Check ``history`` for linearizability."""
    try:
        result = check(list(history))
    except CheckTooExpensive as exc:
        return Judgement(Verdict.INCONCLUSIVE, 0, str(exc))
    if result.violation is None:
        return Judgement(Verdict.LINEARIZABLE, result.operations)
    ended = max(op.complete for op in result.violation.operations)
    return Judgement(Verdict.VIOLATION, result.operations, result.violation.describe(), ended)


def lost_writes(history: Sequence[Operation], final: Sequence[Operation], unavailable: Collection[str]) -> list[str]:
    """Final reads that miss an acknowledged write: what they read was overwritten (or deleted) after it.

    ``final`` are reads made once the faults are over; keys in ``unavailable`` (no live replica) are exempt.
    """
    found: list[str] = []
    writes: dict[str, list[Operation]] = {}
    for op in history:
        if op.kind in (OpKind.PUT, OpKind.DELETE):
            writes.setdefault(op.key, []).append(op)
    by_value = {op.value: op for ops in writes.values() for op in ops if op.kind == OpKind.PUT}
    for read in final:
        acked = [w for w in writes.get(read.key, []) if w.outcome == Outcome.OK]
        if read.key in unavailable:
            continue
        if read.outcome == Outcome.FAILED:
            found.append(f"final read of {read.key!r} failed although its slot has a live replica")
            continue
        if not acked:
            continue
        if read.outcome == Outcome.NOT_FOUND:
            sources = [w for w in writes[read.key] if w.kind == OpKind.DELETE]
            if not sources:
                found.append(f"lost write: {read.key!r} reads absent, but {len(acked)} puts were acknowledged")
                continue
            shown = "absent"
        else:
            source = by_value.get(read.value)
            if source is None:
                found.append(f"final read of {read.key!r} returned {read.value!r}, which no client wrote")
                continue
            sources, shown = [source], repr(read.value)
        if any(s.outcome != Outcome.OK for s in sources):
            continue  # an undecided write may take effect after every acknowledged one
        latest_source = max(sources, key=lambda s: s.complete)
        newer = [w for w in acked if w.invoke > latest_source.complete]
        if newer:
            latest = max(newer, key=lambda w: w.complete)
            written = "a delete" if latest.kind == OpKind.DELETE else repr(latest.value)
            found.append(
                f"lost write: {read.key!r} reads {shown} (acknowledged at {latest_source.complete:.4f}), "
                f"but {written} was acknowledged at {latest.complete:.4f}, after it"
            )
    return found
