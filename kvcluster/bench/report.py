"""``kvcluster bench report``: every benchmark, in one run, written up as Markdown with PNG charts.

One run measures every section: throughput, load balance, one failover,
failover against the data size (``--failover-keys``), memory (from the
clusters those runs fill), master failover (``--master-faults``), healing
under load (``--recovery-keys``, ``--rebalance-keys``; ``healing_views``) and
durability (throughput per fsync policy and ``--restart-keys`` restarts;
``durability_report``). The report (``docs/REPORT.md`` by default) gets a JSON
copy of every figure beside it, and the machine and commit the figures were
measured on. Its fixed prose is in ``report_template.md``. ``--only-healing``
and ``--only-durability`` run one of those two sections alone and put it into
an existing report in place of its previous version, keeping the others.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kvcluster.bench.balance import Balance, balance_table, chart_balance, run_balance
from kvcluster.bench.common import Mode, ThroughputRun, int_list, load_average
from kvcluster.bench.durability_report import (
    FULL_DURABILITY,
    QUICK_DURABILITY,
    durability_command,
    print_durability,
    run_durability,
    write_durability,
)
from kvcluster.bench.failover import FailoverShape, run_failover, run_sweep
from kvcluster.bench.failover_analysis import Failover, FailoverSeries
from kvcluster.bench.failover_views import (
    chart_failover,
    chart_sweep,
    failover_markdown,
    failover_table,
    sweep_command_line,
    sweep_markdown,
    sweep_table,
)
from kvcluster.bench.healing_views import (
    FULL_HEALING,
    QUICK_HEALING,
    HealingResults,
    healing_command,
    healing_table,
    run_healing,
    write_healing,
)
from kvcluster.bench.master_failover import (
    MasterFailoverRun,
    master_failover_markdown,
    master_failover_table,
    run_master_failover,
)
from kvcluster.bench.output import markdown_table, progress_bar, require_png, stdout_console, template, to_json
from kvcluster.bench.throughput import (
    THROUGHPUT_HEADER,
    chart_throughput,
    run_throughput,
    throughput_json,
    throughput_problems,
    throughput_rows,
    throughput_table,
)
from kvcluster.client_pool import interrupt_on_sigterm
from kvcluster.errors import UsageError

if TYPE_CHECKING:
    from rich.progress import Progress


def _commit() -> str:
    """The commit the package was installed from (``unknown`` outside a git checkout)."""
    import subprocess  # noqa: PLC0415

    try:
        proc = subprocess.run(  # noqa: S603 - git from PATH, with arguments built here
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def machine() -> dict[str, Any]:
    """What the numbers were measured on: the machine, and the versions of what carries every message."""
    import datetime  # noqa: PLC0415
    from importlib.metadata import version  # noqa: PLC0415

    import zmq  # noqa: PLC0415

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "load_average": load_average(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "msgspec": version("msgspec"),
        "pysyncobj": version("pysyncobj"),
    }


@dataclass(frozen=True)
class ReportSizes:
    """The sizes a report runs at: full ones (100,000 keys, 200,000 operations, 7 nodes), or tiny ones to smoke-test."""

    ops: int
    keys: int
    nodes: int
    reps: tuple[int, ...]
    modes: tuple[Mode, ...]
    clients: int
    balance_keys: int
    failover_rep: int
    failover_duration: float
    failover_keys: str
    """The default of ``--failover-keys``."""
    healing_keys: str
    """The default of ``--recovery-keys`` and ``--rebalance-keys``."""
    restart_keys: str
    master_faults: int


# Batched messages carry 64 ops each, so 16 of them in flight keep 1024 ops in flight per client: more only adds
# queueing delay (latency = ops in flight / throughput). Unbatched, 128 in flight per client lets each pass of a
# node's loop take several requests per poll, which is what one-op messages can still share.
FULL_SIZES = ReportSizes(
    200_000,
    100_000,
    7,
    (1, 3, 5),
    (Mode(1, 128), Mode(64, 16)),
    4,
    100_000,
    3,
    6.0,
    "10000,100000,1000000,2000000",
    "100000,1000000",
    "100000",
    20,
)
QUICK_SIZES = ReportSizes(2_000, 500, 3, (1, 2, 3), (Mode(1, 32), Mode(16, 8)), 2, 2_000, 2, 3.0, "", "", "2000", 2)


@dataclass
class Results:
    """Every section's figures but healing and durability, which are written as sections of their own."""

    runs: list[ThroughputRun]
    balance: Balance
    failover: Failover
    sweep: list[FailoverSeries] = field(default_factory=list)
    master: MasterFailoverRun | None = None


def write_report(out: Path, sizes: ReportSizes, results: Results) -> None:
    """Write the Markdown report, its PNG charts and a JSON copy of every figure beside it."""
    import json  # noqa: PLC0415

    out.parent.mkdir(parents=True, exist_ok=True)
    charts = {"throughput": "throughput.png", "balance": "balance.png", "failover": "failover.png"}
    chart_throughput(results.runs, out.parent / charts["throughput"])
    chart_balance(results.balance, out.parent / charts["balance"])
    chart_failover(results.failover, out.parent / charts["failover"])
    info = machine()
    data: dict[str, Any] = {
        "machine": info,
        "throughput": throughput_json(results.runs),
        "balance": to_json(results.balance),
        "failover": to_json(results.failover),
    }
    if results.sweep:
        charts["failover_sweep"] = "failover_sweep.png"
        chart_sweep(results.sweep, out.parent / charts["failover_sweep"])
        data["failover_sweep"] = {"points": to_json(results.sweep)}
    if results.master is not None:
        data["master_failover"] = to_json(results.master)
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    out.write_text("\n".join(_report_markdown(sizes, info, results, charts)))


def _throughput_lines(runs: Sequence[ThroughputRun], info: dict[str, Any], chart: str) -> list[str]:
    first = runs[0]
    lines = template(
        "throughput", ops=first.ops, keys=first.keys, nodes=first.nodes, clients=first.clients, chart=chart
    )
    lines += markdown_table(THROUGHPUT_HEADER, throughput_rows(runs), left=2)
    problems = throughput_problems(runs)
    if problems:
        lines += ["Problems during these runs:", "", *(f"- **{problem}**." for problem in problems), ""]
    return [*lines, *template("throughput_after", cores=info["cores"])]


def _balance_lines(balance: Balance, chart: str) -> list[str]:
    mean = sum(balance.counts.values()) / len(balance.counts)
    lines = template("balance", keys=balance.keys, nodes=balance.nodes, rep=balance.rep, chart=chart)
    lines += ["| node | keys | vs mean |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {count:,} | {(count / mean - 1) * 100:+.2f} % |" for name, count in balance.counts.items()]
    return [*lines, "", *template("balance_after", **vars(balance))]


def _memory_lines(results: Results) -> list[str]:
    """RSS per key replica of every cluster the throughput and failover runs filled."""
    filled = {(m.keys, run.nodes, m.rep, "throughput preload"): m for run in results.runs if (m := run.memory)}
    for point in results.sweep:
        for run in point.runs:
            if run.memory is not None:
                filled.setdefault((run.keys_loaded, run.nodes, run.rep, "failover bulk load"), run.memory)
    header = ["keys", "nodes, rep", "filled by", "RSS of the nodes", "per key replica", "added per key replica"]
    rows = [
        [
            f"{k:,}",
            f"{n}, {r}",
            what,
            f"{m.rss_bytes / (1 << 20):,.1f} MiB",
            f"{m.per_key_replica:,.0f} B",
            f"{m.added_per_key_replica:,.0f} B",
        ]
        for (k, n, r, what), m in sorted(filled.items(), key=lambda item: item[0])
    ]
    return [*template("memory"), *markdown_table(header, rows, left=3)]


def _report_markdown(sizes: ReportSizes, info: dict[str, Any], results: Results, charts: dict[str, str]) -> list[str]:
    values = {**info, "load_average": " / ".join(str(x) for x in info["load_average"])}
    lines = template("head", **values)
    lines += _throughput_lines(results.runs, info, charts["throughput"])
    lines += _balance_lines(results.balance, charts["balance"])
    lines += failover_markdown(results.failover, charts["failover"])
    if results.sweep:
        lines += sweep_markdown(results.sweep, charts["failover_sweep"])
    lines += _memory_lines(results)
    if results.master is not None:
        lines += master_failover_markdown(results.master)
    lines += [
        "## Reproduce",
        "",
        "```shell",
        f"kvcluster bench throughput --ops {sizes.ops} --nodes {sizes.nodes} --reps {','.join(map(str, sizes.reps))} "
        f"--batch {','.join(str(m.batch) for m in sizes.modes)} "
        f"--window {','.join(str(m.window) for m in sizes.modes)} --plot",
        f"kvcluster bench balance --keys {sizes.balance_keys} --nodes {sizes.nodes} --rep 1 --plot",
        f"kvcluster bench failover --nodes {sizes.nodes} --rep {sizes.failover_rep} "
        f"--duration {sizes.failover_duration:g} --plot",
    ]
    if results.sweep:
        swept = [p.keys_loaded for p in results.sweep if p.idle]
        lines.append(sweep_command_line(swept, results.sweep[0].nodes, results.sweep[0].rep, results.sweep[0].kills))
    if results.master is not None:
        lines.append(results.master.command)
    return [*lines, "kvcluster bench report", "```", ""]


def _sizes(text: str | None, default: str, option: str) -> list[int]:
    """A ``--...-keys`` option: the sizes given, none for '', or the report's default."""
    text = default if text is None else text
    return int_list(text, option) if text.strip() else []


def report_command(
    out: Annotated[Path, typer.Option("--out", help="Markdown file to write; the PNG charts go beside it.")] = Path(
        "docs/REPORT.md"
    ),
    quick: Annotated[
        bool, typer.Option("--quick", help="Tiny sizes, for a smoke test (seconds, not minutes).")
    ] = False,
    failover_keys: Annotated[
        str | None,
        typer.Option(
            "--failover-keys",
            help="Measure failover right after loading each of these numbers of keys, idle and under load "
            f"(default {FULL_SIZES.failover_keys}, none with --quick; '' for none).",
        ),
    ] = None,
    failover_runs: Annotated[
        int, typer.Option("--failover-runs", min=1, help="Kills per size and mode with --failover-keys.")
    ] = 2,
    recovery_keys: Annotated[
        str | None,
        typer.Option(
            "--recovery-keys",
            help="Run bench recovery (kill -9 under load, 7 nodes, rep 3) after loading each of these numbers "
            f"of keys (default {FULL_SIZES.healing_keys}, none with --quick; '' for none).",
        ),
    ] = None,
    rebalance_keys: Annotated[
        str | None,
        typer.Option(
            "--rebalance-keys",
            help="Run bench rebalance (add 2 nodes to 5 under load, rep 3) after loading each of these "
            f"numbers of keys (default {FULL_SIZES.healing_keys}, none with --quick; '' for none).",
        ),
    ] = None,
    restart_keys: Annotated[
        str | None,
        typer.Option(
            "--restart-keys",
            help="Run bench restart (whole cluster, then one node; 7 nodes, rep 3) after loading each of these "
            "numbers of keys for the durability section; default 100000 (2000 with --quick), '' for none.",
        ),
    ] = None,
    master_faults: Annotated[
        int | None,
        typer.Option(
            "--master-faults",
            min=0,
            help=f"Faults of the leading master (default {FULL_SIZES.master_faults}, "
            f"{QUICK_SIZES.master_faults} with --quick; 0 for none).",
        ),
    ] = None,
    only_healing: Annotated[
        bool,
        typer.Option(
            "--only-healing",
            help="Run only the --recovery-keys and --rebalance-keys runs and put their section into the existing "
            "report in place of its previous one, keeping every other section.",
        ),
    ] = False,
    only_durability: Annotated[
        bool,
        typer.Option(
            "--only-durability",
            help="Run only the durability section (throughput per fsync policy, --restart-keys restarts) and put "
            "it into the existing report in place of its previous one, keeping every other section.",
        ),
    ] = False,
) -> None:
    """Run every benchmark (100,000 keys on 7 nodes, and more) and write a Markdown report with PNG charts."""
    require_png()
    sizes = QUICK_SIZES if quick else FULL_SIZES
    restarts = _sizes(restart_keys, sizes.restart_keys, "--restart-keys")
    recoveries = _sizes(recovery_keys, sizes.healing_keys, "--recovery-keys")
    rebalances = _sizes(rebalance_keys, sizes.healing_keys, "--rebalance-keys")
    if only_durability and only_healing:
        raise UsageError("--only-durability and --only-healing each update one section: run them one at a time")
    if only_healing and ((recovery_keys is None and rebalance_keys is None) or (not recoveries and not rebalances)):
        raise UsageError("--only-healing needs --recovery-keys or --rebalance-keys")
    only = only_healing or only_durability
    sweep_sizes = _sizes(failover_keys, sizes.failover_keys, "--failover-keys")
    faults = sizes.master_faults if master_faults is None else master_faults
    with interrupt_on_sigterm(), progress_bar() as progress:
        results = None if only else _run_main(sizes, sweep_sizes, failover_runs, faults, progress)
        healing_sizes = QUICK_HEALING if quick else FULL_HEALING
        healing = HealingResults() if only_durability else run_healing(healing_sizes, recoveries, rebalances, progress)
        durability = (
            None if only_healing else run_durability(QUICK_DURABILITY if quick else FULL_DURABILITY, restarts, progress)
        )
    healing.command = healing_command(recoveries, rebalances, quick=quick, only=only_healing)
    if results is not None:
        _print_main(results)
        write_report(out, sizes, results)
    for run in [*healing.recoveries, *healing.rebalances]:
        stdout_console().print(healing_table(run))
    if healing:
        write_healing(out, healing)
    if durability is not None:
        durability.command = durability_command(restarts, quick=quick, only=only_durability)
        print_durability(durability)
        write_durability(out, durability)
    stdout_console().print(f"wrote {out} and its charts")


def _run_main(
    sizes: ReportSizes, sweep_sizes: list[int], failover_runs: int, faults: int, progress: Progress
) -> Results:
    """Throughput, balance, failover, failover against the data size and master failover."""
    runs = run_throughput(
        ops=sizes.ops,
        nodes=sizes.nodes,
        reps=sizes.reps,
        read_ratio=0.5,
        keys=sizes.keys,
        clients=sizes.clients,
        modes=sizes.modes,
        progress=progress,
    )
    balance = run_balance(keys=sizes.balance_keys, nodes=sizes.nodes, rep=1, progress=progress)
    failover = run_failover(FailoverShape(sizes.nodes, sizes.failover_rep, sizes.failover_duration), progress)
    sweep = run_sweep(
        sweep_sizes,
        nodes=sizes.nodes,
        rep=sizes.failover_rep,
        runs=failover_runs,
        duration=sizes.failover_duration,
        progress=progress,
    )
    master = run_master_failover(sizes.nodes, sizes.failover_rep, 3, faults, progress) if faults else None
    return Results(runs, balance, failover, sweep, master)


def _print_main(results: Results) -> None:
    console = stdout_console()
    console.print(throughput_table(results.runs))
    console.print(balance_table(results.balance))
    console.print(failover_table(results.failover))
    if results.sweep:
        console.print(sweep_table(results.sweep))
    if results.master is not None:
        console.print(master_failover_table(results.master))
