"""The figures of a failover run, from what its clients recorded: unavailability, lost writes, a timeline.

Also the results' shapes (``Failover`` for one kill, ``FailoverSeries`` for
several), which the JSON output follows. Pure functions of the operation
records (no cluster, no I/O), so the arithmetic behind every failover figure
can be tested on its own.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kvcluster.bench.common import Memory
from kvcluster.bench.workload import OpRecord

TIMELINE_BIN = 0.1  # seconds per bar of the failover timeline
KILL_AFTER_LOAD = 0.2  # with a bulk load: seconds from its end to the kill (a kill soon after a load is the hard case)
PROBE_PAUSE = 0.05  # seconds between the rounds of an idle run's probes: a few hundred ops/s in all


@dataclass
class Failover:
    """What a SIGKILLed primary cost: unavailability, throughput over time, lost writes, healthy nodes lost."""

    killed: str
    nodes: int
    rep: int
    duration_s: float
    kill_t: float = 0.0
    """Seconds from the start of the measured phase (the end of the bulk load, if any) to the kill."""
    keys: dict[str, int] = field(default_factory=dict)
    unavailable_ms: dict[str, float | None] = field(default_factory=lambda: median_max([]))
    unrecovered_keys: int = 0
    backup_write_unavailable_ms: dict[str, float | None] = field(default_factory=lambda: median_max([]))
    acked_writes: int = 0
    lost_acked_writes: int = 0
    """Acknowledged writes not read back at the end: the clients' puts and the bulk-loaded keys."""
    unverified_keys: int = 0
    failed_ops: int = 0
    timeline: list[dict[str, float]] = field(default_factory=list)
    keys_loaded: int = 0
    load_s: float = 0.0
    idle: bool = False
    """No client load besides light probes of the victim's keys."""
    false_dead: list[str] = field(default_factory=list)
    """Nodes the master declared dead besides the victim: each is fenced and exits, so this should stay empty."""
    loaded_keys_lost: int = 0
    loaded_keys_unreadable: int = 0
    memory: Memory | None = None
    """The storage nodes' resident memory after the bulk load (None without a load)."""
    error: str | None = None
    """Why the run's figures mean nothing (a failed load, a victim already gone); None for a run that went through."""


@dataclass
class FailoverSeries:
    """Several kills of one shape, each on a fresh cluster: the figures over all of them, and each run's."""

    nodes: int
    rep: int
    keys_loaded: int
    idle: bool
    kills: int
    load_s: dict[str, float | None]
    unavailable_ms: dict[str, float | None]
    """Median of the runs' medians; max of their maxes (None when some key never came back)."""
    unrecovered_keys: int
    false_dead: int
    """Nodes declared dead besides the victims, over every run."""
    runs_with_false_dead: int
    lost_acked_writes: int
    unverified_keys: int
    failed_runs: int
    """Runs that did not get to the kill (their false deaths still count); they have no unavailability."""
    runs: list[Failover]


def summarise(runs: Sequence[Failover]) -> FailoverSeries:
    """The figures over several failover runs of one shape."""
    first = runs[0]
    measured = [r for r in runs if r.error is None]
    medians = [m for r in measured if (m := r.unavailable_ms["median"]) is not None]
    maxes = [m for r in measured if (m := r.unavailable_ms["max"]) is not None]
    unrecovered = sum(r.unrecovered_keys for r in runs)
    loads = [r.load_s for r in measured] or [0.0]
    return FailoverSeries(
        nodes=first.nodes,
        rep=first.rep,
        keys_loaded=first.keys_loaded,
        idle=first.idle,
        kills=len(runs),
        load_s={"median": round(statistics.median(loads), 2), "max": round(max(loads), 2)},
        unavailable_ms={
            "median": round(statistics.median(medians), 1) if medians else None,
            "max": round(max(maxes), 1) if maxes and len(maxes) == len(measured) else None,
        },
        unrecovered_keys=unrecovered,
        false_dead=sum(len(r.false_dead) for r in runs),
        runs_with_false_dead=sum(1 for r in runs if r.false_dead),
        lost_acked_writes=sum(r.lost_acked_writes for r in runs),
        unverified_keys=sum(r.unverified_keys for r in runs),
        failed_runs=len(runs) - len(measured),
        runs=list(runs),
    )


def lost_writes(
    records: list[OpRecord], preload: Mapping[str, str], final: Mapping[str, str | None]
) -> tuple[int, int, int]:
    """Count keys whose last acknowledged put is not what a final get returns.

    Each key is written by one client, one put at a time, so its puts are
    ordered. A put that timed out after the last acknowledged one may or may
    not have been applied, so the final value may be either of them.
    """
    acceptable: dict[str, set[str]] = {key: {value} for key, value in preload.items()}
    acked = 0
    for key, put, _start, _end, completion, value, _node in sorted(records, key=lambda r: r[2]):
        if not put or value is None:
            continue
        if completion == "ok":
            acked += 1
            acceptable[key] = {value}
        elif completion == "timed_out":
            acceptable[key].add(value)
    lost = sum(1 for key, values in acceptable.items() if key in final and final[key] not in values)
    unverified = sum(1 for key in acceptable if key not in final)
    return lost, unverified, acked


def unavailability(records: list[OpRecord], victim: int, kill_t: float) -> tuple[list[float], int]:
    """Per key of the victim's primary range: kill time to the first successful op served elsewhere.

    An answer from the victim itself was given before it died, whenever the
    client read it, so only answers from other nodes end the window.
    """
    first_ok: dict[str, float] = {}
    keys = set()
    for key, _put, _start, end, completion, _value, node in records:
        keys.add(key)
        if completion in ("ok", "not_found") and node != victim and end > kill_t:
            first_ok[key] = min(first_ok.get(key, math.inf), end)
    return [(end - kill_t) * 1000 for end in first_ok.values()], len(keys - set(first_ok))


def write_unavailability(records: list[OpRecord], kill_t: float) -> tuple[list[float], int]:
    """Per key the victim backed up: kill time to the acknowledgement of the first put issued after the kill.

    A put in flight at the kill may have been replicated just before it, so
    only puts issued afterwards show how long the primary held writes for
    the dead backup.
    """
    first_ack: dict[str, float] = {}
    keys = set()
    for key, put, start, end, completion, _value, _node in records:
        keys.add(key)
        if put and completion == "ok" and start > kill_t:
            first_ack[key] = min(first_ack.get(key, math.inf), end)
    return [(end - kill_t) * 1000 for end in first_ack.values()], len(keys - set(first_ack))


def median_max(values: Sequence[float | None]) -> dict[str, float | None]:
    """Median and max, rounded; both None when there is no value or one is missing (a key never came back)."""
    known = [v for v in values if v is not None]
    if not known or len(known) < len(values):
        return {"median": None, "max": None}
    return {"median": round(statistics.median(known), 1), "max": round(max(known), 1)}


def timeline(by_group: dict[str, list[OpRecord]], released: float, duration: float) -> list[dict[str, float]]:
    """Successful ops per ``TIMELINE_BIN`` (by the time their answer arrived), in total and per key group."""
    # The last round may end after the load's duration: a partial last bar would look like a dip.
    bins = max(1, int(duration / TIMELINE_BIN))
    timeline: list[dict[str, float]] = [{"t": round(i * TIMELINE_BIN, 3), "ops": 0} for i in range(bins)]
    for group, records in by_group.items():
        for point in timeline:
            point[group] = 0
        for _key, _put, _start, end, completion, _value, _node in records:
            slot = int((end - released) / TIMELINE_BIN)
            if completion in ("ok", "not_found") and 0 <= slot < bins:
                point = timeline[slot]
                point["ops"] += 1
                point[group] += 1
    return timeline
