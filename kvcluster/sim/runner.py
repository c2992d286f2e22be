"""Running seeded schedules: the verdict per seed, shrinking a failure, its report, and the summary line.

``run_schedule(seed, config)`` is one run and its verdict; the same seed and
configuration always give the same run. ``run_schedules`` runs a range of
seeds and reports each failure in one line; ``report`` explains a failure
in full (shape, faults, the last deliveries and operations, the problems)
and ``shrink`` retries a failing seed with fewer faults to find a short list
that still fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from kvcluster.sim.checks import focus, problems
from kvcluster.sim.config import SimConfig
from kvcluster.sim.faults import Fault
from kvcluster.sim.trace import Trace, format_entry
from kvcluster.sim.world import RunResult, World

RECENT = 60  # trace entries shown in a failure report
FULL = 1_000_000  # trace entries kept to find those before a problem


@dataclass
class Outcome:
    """One run and its verdict."""

    seed: int
    result: RunResult
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        shape = self.result.shape
        first = self.problems[0].splitlines()[0] if self.problems else "ok"
        return (
            f"seed {self.seed} ({shape.nodes} nodes, rep {shape.rep}, {len(self.result.faults)} faults): "
            f"FAILED: {first}"
        )


def run_schedule(
    seed: int, config: SimConfig, *, faults: list[Fault] | None = None, trace: Trace | None = None
) -> Outcome:
    """Run one seed (optionally with a given fault plan instead of the seed's own) and judge it."""
    result = World(seed, config, faults, trace).run()
    return Outcome(seed, result, problems(result))


def shrink(outcome: Outcome, config: SimConfig, attempts: int = 20) -> Outcome:
    """Drop faults one at a time while the seed still fails; return the smallest failing run found."""
    best = outcome
    index = 0
    while index < len(best.result.faults) and attempts > 0:
        attempts -= 1
        fewer = best.result.faults[:index] + best.result.faults[index + 1 :]
        tried = run_schedule(outcome.seed, config, faults=fewer)
        if tried.ok:
            index += 1
        else:
            best = tried
    return best


def replay_command(seed: int, config: SimConfig) -> str:
    parts = ["kvcluster sim", f"--seed {seed}", "--schedules 1"]
    if config.nodes is not None:
        parts.append(f"--nodes {config.nodes}")
    if config.rep is not None:
        parts.append(f"--rep {config.rep}")
    defaults = SimConfig()
    if config.duration != defaults.duration:
        parts.append(f"--duration {config.duration:g}")
    if config.clients != defaults.clients:
        parts.append(f"--clients {config.clients}")
    if config.keys != defaults.keys:
        parts.append(f"--keys {config.keys}")
    return " ".join([*parts, "-v"])


def report(outcome: Outcome, config: SimConfig, shrunk: Outcome | None = None) -> str:
    """A failing run explained: shape, faults, the last events before the end, and every problem."""
    result = outcome.result
    shape = result.shape
    lines = [
        f"seed {outcome.seed}: {shape.nodes} nodes, rep {shape.rep}, {shape.slots} slots, "
        f"{config.clients} clients; network {shape.net}",
        "faults:",
        *(f"  {fault.describe()}" for fault in result.faults),
    ]
    if not result.faults:
        lines.append("  (none)")
    if shrunk is not None and len(shrunk.result.faults) < len(result.faults):
        lines += ["still fails with only:", *(f"  {fault.describe()}" for fault in shrunk.result.faults)]
    at = focus(result)
    entries = [entry for entry in result.trace.recent if at is None or entry[0] <= at]
    heading = "until the run ended" if at is None else f"up to t={at:.6f}, when the problem showed"
    lines += [f"last {min(RECENT, len(entries))} events {heading}:", *map(format_entry, entries[-RECENT:])]
    lines += ["problems:", *(f"  {p}" for p in outcome.problems)]
    if result.error is not None:
        lines += ["traceback:", result.error.rstrip()]
    lines.append(f"replay: {replay_command(outcome.seed, config)}")
    return "\n".join(lines)


def explain(seed: int, config: SimConfig) -> str:
    """Run a failing seed again and report it in full, with its fault list shrunk."""
    outcome = run_schedule(seed, config, trace=Trace(keep=FULL))
    return report(outcome, config, shrink(outcome, config)) if not outcome.ok else f"seed {seed} passed this time"


@dataclass
class Summary:
    """What a series of runs found; ``failed`` lists the failing seeds."""

    schedules: int = 0
    ops: int = 0
    faults: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    failed: list[int] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # one per failure

    def add(self, other: Summary) -> None:
        self.schedules += other.schedules
        self.ops += other.ops
        self.faults += other.faults
        self.cpu += other.cpu
        self.failed += other.failed
        self.lines += other.lines

    def line(self) -> str:
        per_minute = self.schedules / self.cpu * 60 if self.cpu > 0 else 0.0
        return (
            f"{self.schedules} schedules, {len(self.failed)} failed, {self.ops} ops checked, "
            f"{self.faults} faults injected, {self.wall:.1f} s wall, {self.cpu:.1f} s CPU, "
            f"{per_minute:.0f} schedules per CPU minute"
        )


CHUNK = 25  # seeds per task when the runs are spread over processes


def run_schedules(
    first: int,
    count: int,
    config: SimConfig,
    out: Callable[[str], None],
    *,
    verbose: bool = False,
    jobs: int = 1,
) -> Summary:
    """Run seeds ``first .. first + count - 1``; print one line per failure (and everything with ``verbose``)."""
    wall = time.perf_counter()
    if jobs > 1 and count > 1 and not verbose:
        summary = Summary()
        chunks = [(start, min(CHUNK, first + count - start), config) for start in range(first, first + count, CHUNK)]
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for part in pool.map(_run_chunk, chunks):
                for line in part.lines:
                    out(line)
                summary.add(part)
    else:
        summary = _run_range(first, count, config, out, verbose)
    summary.wall = time.perf_counter() - wall
    return summary


def _run_chunk(chunk: tuple[int, int, SimConfig]) -> Summary:
    first, count, config = chunk
    return _run_range(first, count, config, None, verbose=False)


def _run_range(first: int, count: int, config: SimConfig, out: Callable[[str], None] | None, verbose: bool) -> Summary:
    summary = Summary()
    cpu = time.process_time()
    for seed in range(first, first + count):
        trace = Trace(keep=FULL, echo=out, digest=True) if verbose and out is not None else None
        outcome = run_schedule(seed, config, trace=trace)
        result = outcome.result
        summary.schedules += 1
        summary.ops += len(result.history) + len(result.final)
        summary.faults += len(result.faults)
        if verbose and out is not None:
            out(f"seed {seed}: trace digest {result.trace.digest()}, {result.events} events, {summary.ops} ops")
        if outcome.ok:
            continue
        summary.failed.append(seed)
        summary.lines.append(outcome.line())
        if out is not None:
            out(outcome.line())
            if verbose:
                out(report(outcome, config, shrink(outcome, config)))
    summary.cpu = time.process_time() - cpu
    return summary
