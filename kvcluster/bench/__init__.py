"""The ``kvcluster bench`` commands: throughput, balance, failover, the report that gathers them, and chaos.

Every benchmark's load comes from one worker (``workload``: client processes
running rounds of gets and puts, recording a tally or every operation), and
every cluster is filled the same way (``bulk``). One module per benchmark
then owns its run, the event it injects and its figures: ``throughput`` (with
``redis_compare`` for Redis beside it), ``balance``, ``failover`` (one kill,
and the sweep over data sizes; figures in ``failover_analysis``, tables,
charts and report sections in ``failover_views``), ``master_failover``
(faults of the leading master), ``healing`` (``recovery`` and ``rebalance``:
a kill or an add under load; commands and views in ``healing_views``), ``restart`` (a
whole cluster, and one node, started again from their data), and
``report`` (with ``durability_report``; prose in ``report_template.md``).
The chaos run is a tester, not a benchmark: it lives in ``kvcluster.chaos``
and is only wired in here as ``bench chaos``.
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
        healing_views,
        master_failover,
        report,
        restart_views,
        throughput,
    )
    from kvcluster.chaos import command as chaos  # noqa: PLC0415

    app.command("throughput")(throughput.throughput_command)
    app.command("balance")(balance.balance_command)
    app.command("failover")(failover.failover_command)
    app.command("failover-sweep")(failover.sweep_command)
    app.command("master-failover")(master_failover.master_failover_command)
    app.command("recovery")(healing_views.recovery_command)
    app.command("rebalance")(healing_views.rebalance_command)
    app.command("restart")(restart_views.restart_command)
    app.command("report")(report.report_command)
    chaos.register(app)
