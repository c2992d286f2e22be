"""The verdict on a run: linearizability of the whole history, no lost acknowledged write, and no surprises.

- The workload's history and the final reads are checked together with
  ``linearizability.check``.
- Every key with an acknowledged put must read back, once the faults are
  healed, a value at least as new as the latest put acknowledged before the
  read: not absent, and not the value of an acknowledged put that another
  acknowledged put followed in real time. Keys whose every replica died are
  exempt (the design promises nothing for them; the fault planner keeps that
  from happening).
- Healing must be over within ``SETTLE_LIMIT`` of the workload's end (a
  ``COPY_DONE`` that the master's full queue dropped is sent again a second
  later), final reads of available keys must succeed, nodes must refuse no
  well-formed operation, no core may raise, the run must finish, and the
  master must declare dead only nodes whose faults could silence them.
"""

from __future__ import annotations

from kvcluster.check.history import Operation, OpKind, Outcome
from kvcluster.check.linearizability import CheckTooExpensive, check
from kvcluster.sim.world import SETTLE_LIMIT, RunResult


def focus(result: RunResult) -> float | None:
    """When the first problem showed: the end of a linearizability violation, or the final read of a lost write."""
    try:
        verdict = check([*result.history, *result.final])
    except CheckTooExpensive:
        return None
    if verdict.violation is not None:
        return max(op.complete for op in verdict.violation.operations)
    keys = [line.split("'")[1] for line in lost_writes(result) if "'" in line]
    reads = [read.complete for read in result.final if read.key in keys]
    return min(reads) if reads else None


def problems(result: RunResult) -> list[str]:
    """Everything wrong with a run, most fundamental first; empty if it passed."""
    if result.error is not None:
        return [f"exception in the simulation: {result.error.strip().splitlines()[-1]}"]
    found = [f"a node refused a well-formed operation: {text}" for text in result.invalid]
    try:
        verdict = check([*result.history, *result.final])
    except CheckTooExpensive as exc:
        verdict = None
        found.append(f"linearizability not decided: {exc}")
    if verdict is not None and verdict.violation is not None:
        found.append(f"linearizability violation: {verdict.violation.describe()}")
    found += lost_writes(result)
    if not result.finished:
        found.append(f"the run did not finish: stuck at t={result.sim_time:.3f} after {result.events} events")
    if not result.healed and result.finished:
        found.append(f"healing did not restore every slot's replicas within {SETTLE_LIMIT:g} s of the workload")
    allowed = {n for f in result.faults for n in f.victims()}
    for node_id in result.declared_dead:
        if node_id not in allowed:
            found.append(f"server{node_id} was declared dead although no fault could silence it for long")
    return found


def lost_writes(result: RunResult) -> list[str]:
    """Final reads that miss an acknowledged write: what they read was overwritten (or deleted) after it."""
    found: list[str] = []
    writes: dict[str, list[Operation]] = {}
    for op in result.history:
        if op.kind in (OpKind.PUT, OpKind.DELETE):
            writes.setdefault(op.key, []).append(op)
    by_value = {op.value: op for ops in writes.values() for op in ops if op.kind == OpKind.PUT}
    for read in result.final:
        acked = [w for w in writes.get(read.key, []) if w.outcome == Outcome.OK]
        if read.key in result.unavailable:
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
