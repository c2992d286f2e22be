"""A deterministic simulator of a whole kvcluster: the real master and node cores on a simulated network.

One process, one simulated clock and one seed per run: the cores of
``kvcluster.core`` are driven exactly like their ZeroMQ drivers drive them,
over links that behave like ZeroMQ over TCP on loopback, while faults
(kills, pauses, slow nodes, partitions, a paused master) are injected and
simulated clients record a history that is checked for linearizability and
lost writes. See docs/simulation.md.

Modules: ``clock`` (time and the event queue), ``network`` (links),
``processes`` (master and node drivers), ``clients`` (the simulated client),
``faults`` (fault plans), ``config`` (knobs and per-seed draws), ``world``
(one run), ``checks`` (the verdict), ``trace`` (what happened), ``runner``
(many runs, reports, shrinking).
"""

from __future__ import annotations

from kvcluster.sim.config import SimConfig
from kvcluster.sim.runner import Outcome, Summary, report, run_schedule, run_schedules, shrink

__all__ = ["Outcome", "SimConfig", "Summary", "report", "run_schedule", "run_schedules", "shrink"]
