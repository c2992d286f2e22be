"""The ``kvcluster bench`` commands: throughput, balance, failover, the report that gathers them, and chaos.

One module per benchmark, each owning its run, its results, its tables and
its charts: ``throughput`` (with ``redis_compare`` for Redis beside it),
``balance``, ``failover`` (figures in ``failover_analysis``, tables and charts
in ``failover_views``), ``failover_sweep`` (failover against the data size),
``master_failover`` (faults of the leading master), ``recovery`` and
``rebalance`` (healing under load, sharing ``healing_load`` and ``healing_views``),
``restart`` (a whole cluster, and one node, started again from their data),
``report``. The chaos run is a tester, not a benchmark: it lives in
``kvcluster.chaos`` and is only wired in here as ``bench chaos``.
``bulk`` loads and reads back a large data set for failover and chaos runs.
``common`` and ``output`` hold what they share; nothing there imports a
benchmark module. Only ``kvcluster bench ...`` imports this package, and
``register`` imports the modules only when it is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer


def register(app: typer.Typer) -> None:
    """Add every benchmark command, and the chaos run, to ``app``."""
    from kvcluster.bench import (  # noqa: PLC0415
        balance,
        failover,
        failover_sweep,
        master_failover,
        rebalance,
        recovery,
        report,
        restart,
        throughput,
    )
    from kvcluster.chaos import command as chaos  # noqa: PLC0415

    app.command("throughput")(throughput.throughput_command)
    app.command("balance")(balance.balance_command)
    app.command("failover")(failover.failover_command)
    app.command("failover-sweep")(failover_sweep.sweep_command)
    app.command("master-failover")(master_failover.master_failover_command)
    app.command("recovery")(recovery.recovery_command)
    app.command("rebalance")(rebalance.rebalance_command)
    app.command("restart")(restart.restart_command)
    app.command("report")(report.report_command)
    chaos.register(app)
