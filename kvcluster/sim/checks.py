"""The verdict on a run: linearizability of the whole history, no lost acknowledged write, and no surprises.

- The workload's history and the final reads are judged together, and the
  final reads read against the acknowledged writes, by ``check/verdict.py``,
  as chaos runs on real processes are. Every key with an acknowledged put
  must read back, once the faults are healed, a value at least as new as the
  latest put acknowledged before the read. Keys whose every replica died are
  exempt (the design promises nothing for them; the fault planner keeps that
  from happening).
- Healing must be over within ``SETTLE_LIMIT`` of the workload's end (a
  ``COPY_DONE`` that the master's full queue dropped is sent again a second
  later), final reads of available keys must succeed, nodes must refuse no
  well-formed operation, no core may raise, the run must finish, and the
  master must declare dead only nodes whose faults could silence them.
"""

from __future__ import annotations

from kvcluster.check.verdict import Verdict, judge, lost_writes
from kvcluster.sim.world import SETTLE_LIMIT, RunResult


def focus(result: RunResult) -> float | None:
    """When the first problem showed: the end of a linearizability violation, or the final read of a lost write."""
    judgement = judge([*result.history, *result.final])
    if judgement.ended is not None:
        return judgement.ended
    keys = [line.split("'")[1] for line in _lost(result) if "'" in line]
    reads = [read.complete for read in result.final if read.key in keys]
    return min(reads) if reads else None


def problems(result: RunResult) -> list[str]:
    """Everything wrong with a run, most fundamental first; empty if it passed."""
    if result.error is not None:
        return [f"exception in the simulation: {result.error.strip().splitlines()[-1]}"]
    found = [f"a node refused a well-formed operation: {text}" for text in result.invalid]
    judgement = judge([*result.history, *result.final])
    if judgement.verdict == Verdict.INCONCLUSIVE:
        found.append(f"linearizability not decided: {judgement.detail}")
    elif judgement.verdict == Verdict.VIOLATION:
        found.append(f"linearizability violation: {judgement.detail}")
    found += _lost(result)
    if not result.finished:
        found.append(f"the run did not finish: stuck at t={result.sim_time:.3f} after {result.events} events")
    if not result.healed and result.finished:
        found.append(f"healing did not restore every slot's replicas within {SETTLE_LIMIT:g} s of the workload")
    allowed = {n for f in result.faults for n in f.victims()}
    for node_id in result.declared_dead:
        if node_id not in allowed:
            found.append(f"server{node_id} was declared dead although no fault could silence it for long")
    return found


def _lost(result: RunResult) -> list[str]:
    return lost_writes(result.history, result.final, result.unavailable)
