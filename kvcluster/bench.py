"""Benchmarks: throughput, load balance and failover, with terminal and PNG charts."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the benchmark commands to ``app``."""
