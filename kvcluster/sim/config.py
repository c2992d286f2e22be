"""The knobs of a simulated run, and the per-seed draw of everything the knobs leave open.

``SimConfig`` is what a person chooses (``kvcluster sim`` options); a
``Shape`` is what one seed makes of it: the cluster size and replication when
not fixed, the slot count, and the network's weather for the run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kvcluster.sim.network import NetParams

SHAPES = ((3, 2), (3, 3), (4, 2), (5, 2), (5, 3))  # (nodes, rep) drawn when neither is fixed
SLOT_COUNTS = (16, 32, 64)


@dataclass(frozen=True)
class SimConfig:
    """What to simulate; ``None`` means drawn from each seed."""

    nodes: int | None = None
    rep: int | None = None
    clients: int = 3
    duration: float = 3.0  # seconds of workload and faults; the final reads come after
    slots: int | None = None
    keys: int = 6
    max_faults: int = 4
    codec_rate: float = 0.02  # share of messages sent through encode/decode
    think: float = 0.04  # mean pause of a client between two operations, in seconds
    put_ratio: float = 0.5

    def problem(self) -> str | None:
        """Why this configuration cannot be simulated, or None."""
        if self.nodes is not None and not 2 <= self.nodes <= 9:
            return f"--nodes must be between 2 and 9, got {self.nodes}"
        if self.rep is not None and self.rep < 1:
            return f"--rep must be at least 1, got {self.rep}"
        if self.rep is not None and self.nodes is not None and self.rep > self.nodes:
            return f"--rep {self.rep} needs at least {self.rep} nodes, got --nodes {self.nodes}"
        if self.rep is not None and self.nodes is None and self.rep > max(n for n, _ in SHAPES):
            return f"--rep {self.rep} needs --nodes"
        if not 1 <= self.clients <= 50:
            return f"--clients must be between 1 and 50, got {self.clients}"
        if not 1 <= self.keys <= 1000:
            return f"--keys must be between 1 and 1000, got {self.keys}"
        if not 0.5 <= self.duration <= 600:
            return f"--duration must be between 0.5 and 600 seconds, got {self.duration:g}"
        return None


@dataclass(frozen=True)
class Shape:
    """What one seed makes of a ``SimConfig``."""

    nodes: int
    rep: int
    slots: int
    net: NetParams


def draw_shape(seed: int, config: SimConfig) -> Shape:
    rng = random.Random(f"{seed}/shape")
    nodes, rep = rng.choice(SHAPES)
    if config.nodes is not None:
        nodes = config.nodes
        rep = min(rep, nodes)
    if config.rep is not None:
        rep = config.rep
        if config.nodes is None:
            nodes = max(nodes, rep)
    slots = config.slots if config.slots is not None else rng.choice(SLOT_COUNTS)
    net = NetParams(
        spike_rate=rng.choice((0.0, 0.001, 0.01)),
        lossy_drop=rng.choice((0.0, 0.0, 0.002, 0.02)),
        lossy_delay=rng.choice((0.0, 0.0, 0.005, 0.03)),
        master_hwm=rng.choice((10, 1000, 1000)),
        codec_rate=config.codec_rate,
    )
    return Shape(nodes, rep, slots, net)
