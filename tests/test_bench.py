"""The ``kvcluster bench`` commands at tiny sizes, through the CLI, plus the arithmetic behind their figures.

Never asserts a speed: only that every figure is there and that the figures agree with each other.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_bench, run_cli

from kvcluster.bench import (
    balance,
    bulk,
    common,
    failover,
    failover_analysis,
    failover_views,
    master_failover,
    output,
    report,
    workload,
)
from kvcluster.client import Completion, OpResult
from kvcluster.core.placement import replicas_for, slot_of
from kvcluster.core.wire import OpKind

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.cluster
def test_throughput_reports_every_rep_and_mode(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    proc = run_bench(
        tmp_path,
        "throughput", "--ops", "3000", "--nodes", "3", "--reps", "1,3", "--keys", "300",
        "--clients", "2", "--batch", "1,8", "--window", "32,4", "--json", str(out),
    )  # fmt: skip
    runs = json.loads(out.read_text())["runs"]
    assert sorted((r["rep"], r["batch"], r["window"]) for r in runs) == [(1, 1, 32), (1, 8, 4), (3, 1, 32), (3, 8, 4)]
    for run in runs:
        assert run["ops"] == 3000
        assert run["completed"] + run["failed"] == run["ops"]
        assert run["failed"] == sum(run["failures"].values()) == 0
        assert run["ops_per_s"] > 0
        assert 0 < run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"]
        assert (run["nodes"], run["clients"]) == (3, 2)
        assert run["client_cpu_us_per_op"] > 0
        assert run["cluster_cpu_us_per_op"] > 0
    assert "window 32" in proc.stdout
    assert "batch 8" in proc.stdout


@pytest.mark.cluster
@pytest.mark.parametrize("no_color", [None, "1"], ids=["colours-allowed", "NO_COLOR"])
def test_balance_counts_every_key_once(tmp_path: Path, no_color: str | None) -> None:
    out = tmp_path / "balance.json"
    env = {} if no_color is None else {"NO_COLOR": no_color}
    proc = run_bench(tmp_path, "balance", "--keys", "2000", "--nodes", "3", "--plot", "--json", str(out), env=env)
    # stdout is a pipe here: the chart and the table must come without a single escape code.
    assert "\x1b" not in proc.stdout
    ticks = [m.group(1) for line in proc.stdout.splitlines() if (m := re.match(r"\s*([\d,]+)┤", line))]
    assert ticks[-1] == "0", proc.stdout
    assert len(ticks) >= 3, proc.stdout
    assert len({int(a.replace(",", "")) - int(b.replace(",", "")) for a, b in itertools.pairwise(ticks)}) == 1
    result = json.loads(out.read_text())
    assert (result["keys"], result["nodes"], result["rep"]) == (2000, 3, 1)
    assert sorted(result["counts"]) == ["server1", "server2", "server3"]
    assert sum(result["counts"].values()) == 2000
    mean = 2000 / 3
    assert result["max_over_mean"] == pytest.approx(max(result["counts"].values()) / mean, abs=1e-4)
    assert result["min_over_mean"] == pytest.approx(min(result["counts"].values()) / mean, abs=1e-4)
    assert result["min_over_mean"] <= 1 <= result["max_over_mean"]
    assert result["ideal_stddev"] == pytest.approx(math.sqrt(2000 * (1 / 3) * (2 / 3)), abs=0.01)
    assert result["stddev"] == pytest.approx(statistics.pstdev(result["counts"].values()), abs=0.01)
    # Slots are spread evenly and keys hash evenly over them: the spread stays near that of random placement
    # (about 21 keys here). Five times that is a wide margin; a node holding a double share would make it about 470.
    assert result["stddev"] < 5 * result["ideal_stddev"]


@pytest.mark.cluster
@pytest.mark.parametrize("how", [[], ["--pause"]], ids=["kill", "pause"])
def test_failover_loses_no_acknowledged_write(tmp_path: Path, how: list[str]) -> None:
    """A SIGKILL is found by the node's exit, a SIGSTOP by missed heartbeats: either way nothing is lost."""
    out = tmp_path / "failover.json"
    run_bench(tmp_path, "failover", "--nodes", "3", "--rep", "2", "--duration", "3", *how, "--json", str(out))
    result = json.loads(out.read_text())
    assert result["killed"] == "server1"
    assert result["lost_acked_writes"] == 0
    assert result["unverified_keys"] == 0
    assert result["acked_writes"] > 0
    assert result["unrecovered_keys"] == 0
    assert result["unavailable_ms"]["median"] is not None
    assert 0 < result["unavailable_ms"]["median"] <= result["unavailable_ms"]["max"]
    assert set(result["backup_write_unavailable_ms"]) == {"median", "max"}
    # When the kill came is wall-clock time on a shared machine: only a hang is worth failing for here. That it
    # came no earlier than planned is an outcome.
    assert min(failover.FAILOVER_KILL_AFTER, 3 / 3) <= result["kill_t"] < 60
    timeline = result["timeline"]
    assert len(timeline) == 30
    assert [p["t"] for p in timeline] == sorted(p["t"] for p in timeline)
    assert all(p["ops"] == sum(p[g] for g in result["keys"]) for p in timeline)
    # Without --keys nothing is loaded first, and the kill comes after a third of the run, as it always did.
    assert (result["keys_loaded"], result["load_s"], result["idle"]) == (0, 0.0, False)
    assert result["loaded_keys_lost"] == result["loaded_keys_unreadable"] == 0
    assert result["false_dead"] == []  # only the victim was declared dead


@pytest.mark.cluster
def test_failover_right_after_a_bulk_load_idle_over_two_kills(tmp_path: Path) -> None:
    out = tmp_path / "failover.json"
    proc = run_bench(
        tmp_path,
        "failover", "--nodes", "3", "--rep", "2", "--keys", "3000", "--idle", "--runs", "2", "--duration", "2",
        "--json", str(out),
    )  # fmt: skip
    series = json.loads(out.read_text())
    assert (series["nodes"], series["rep"], series["keys_loaded"], series["idle"], series["kills"]) == (
        3,
        2,
        3000,
        True,
        2,
    )
    runs = series["runs"]
    assert [r["killed"] for r in runs] == ["server1", "server2"]  # a different node each time, on a fresh cluster
    for run in runs:
        assert run["keys_loaded"] == 3000
        assert run["idle"] is True
        assert run["load_s"] > 0
        # Right after the load, as planned; how soon after is a timing figure for the benchmark to report, not for
        # a test on a shared machine to judge. The upper bound only catches a hang.
        assert failover_analysis.KILL_AFTER_LOAD <= run["kill_t"] < 60
        assert set(run["keys"]) == {"primary", "backup"}  # probes only: no unrelated key group
        assert run["loaded_keys_lost"] == run["loaded_keys_unreadable"] == 0
        assert run["lost_acked_writes"] == 0
        assert run["acked_writes"] >= 3000
        assert run["unrecovered_keys"] == 0
        assert run["killed"] not in run["false_dead"]
    medians = [r["unavailable_ms"]["median"] for r in runs]
    maxes = [r["unavailable_ms"]["max"] for r in runs]
    assert series["unavailable_ms"] == {"median": pytest.approx(sum(medians) / 2, abs=0.1), "max": max(maxes)}
    assert series["load_s"]["median"] > 0
    assert series["false_dead"] == sum(len(r["false_dead"]) for r in runs)
    assert series["lost_acked_writes"] == 0
    assert "over 2 kills" in proc.stdout


@pytest.mark.long  # the single failover runs above cover the same code in the default suite
@pytest.mark.cluster
def test_failover_sweep_measures_each_size_idle_and_under_load(tmp_path: Path) -> None:
    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    proc = run_bench(
        tmp_path,
        "failover-sweep", "--keys", "1000,2000", "--nodes", "3", "--rep", "2", "--runs", "1", "--duration", "1.5",
        "--plot", "--json", str(out), "--png", str(png),
    )  # fmt: skip
    points = json.loads(out.read_text())["points"]
    assert [(p["keys_loaded"], p["idle"]) for p in points] == [(1000, True), (1000, False), (2000, True), (2000, False)]
    for point in points:
        assert point["kills"] == len(point["runs"]) == 1
        assert point["runs"][0]["keys_loaded"] == point["keys_loaded"]
        assert point["lost_acked_writes"] == 0
        assert point["unavailable_ms"]["median"] is not None
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert "Unavailability after kill -9" in proc.stdout


@pytest.mark.cluster
def test_quick_report_writes_markdown_and_charts(tmp_path: Path) -> None:
    run_bench(
        tmp_path,
        "report",
        "--quick",
        "--out",
        "tmp/REPORT.md",
        "--failover-keys",
        "1000",
        "--failover-runs",
        "1",
        "--restart-keys",
        "",  # tests/test_bench_durability.py runs bench restart on its own
        "--master-faults",
        "0",  # tests/test_master_failover.py kills and pauses the leader; the section's lines are checked below
    )
    docs = tmp_path / "tmp"
    report = (docs / "REPORT.md").read_text()
    for heading in ("## Machine", "## Design in brief", "## Throughput", "## Load balance", "## Failover", "## Memory"):
        assert heading in report
    assert "## Failover after a bulk load" in report
    assert "design.md" in report
    for chart in ("throughput.png", "balance.png", "failover.png", "failover_sweep.png"):
        assert f"]({chart})" in report
        assert (docs / chart).read_bytes().startswith(PNG_MAGIC)
    assert "kvcluster bench failover-sweep --keys 1000 " in report
    assert "| msgspec |" in report
    assert "msgpack" not in report
    assert "| 1,000 | 3, 2 | failover bulk load |" in report
    assert report.index("## Durability") < report.index("## Reproduce")
    data = json.loads((docs / "REPORT.json").read_text())
    assert data["failover"]["lost_acked_writes"] == 0
    assert {r["batch"] for r in data["throughput"]["runs"]} == {1, 16}
    assert [(p["keys_loaded"], p["idle"]) for p in data["failover_sweep"]["points"]] == [(1000, True), (1000, False)]


@pytest.mark.long  # tests/test_master_failover.py kills and pauses the leader in the default suite
@pytest.mark.cluster
def test_master_failover_elects_a_new_leader_after_each_fault_and_loses_no_write(tmp_path: Path) -> None:
    out = tmp_path / "master-failover.json"
    run_bench(tmp_path, "master-failover", "--nodes", "3", "--rep", "2", "--faults", "2", "--json", str(out))
    result = json.loads(out.read_text())
    assert [f["kind"] for f in result["faults"]] == ["kill", "pause"]
    for fault in result["faults"]:
        assert fault["election_ms"] is not None
        assert fault["election_ms"] > 0
        assert fault["new_leader"] != fault["master"]
        assert fault["new_term"] > fault["term"]
        assert fault["unavailable_ms"] > 0
    assert result["acked_writes"] > 0
    assert (result["lost_acked_writes"], result["unverified_keys"]) == (0, 0)
    assert result["election_ms"]["median"] <= result["election_ms"]["max"]


@pytest.mark.parametrize(
    "args",
    [
        ["throughput", "--nodes", "3", "--reps", "1,4"],
        ["throughput", "--masters", "2"],
        ["master-failover", "--masters", "1"],
        ["throughput", "--reps", "one"],
        ["throughput", "--batch", "1,8,16", "--window", "8,8"],
        ["balance", "--nodes", "3", "--rep", "4"],
        ["failover", "--rep", "1"],
        ["failover", "--duration", "2", "--kill-after", "2"],
        ["failover", "--keys", "-1"],
        ["failover-sweep", "--keys", "ten"],
        ["failover-sweep", "--nodes", "3", "--rep", "4"],
        ["report", "--failover-keys", "0"],
        ["throughput", "--fsync", "always,sometimes"],
        ["restart", "--fsync", "always,no"],
        ["restart", "--nodes", "3", "--rep", "4"],
        ["report", "--restart-keys", "ten"],
        ["report", "--only-durability", "--only-healing", "--recovery-keys", "500"],
    ],
)
def test_impossible_shapes_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    proc = run_cli("bench", *args, check=False, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")


# --- the arithmetic behind the figures ---


def test_percentile_is_nearest_rank() -> None:
    ordered = [float(i) for i in range(1, 101)]
    assert common.percentile(ordered, 0.50) == 50.0
    assert common.percentile(ordered, 0.99) == 99.0
    assert common.percentile([7.0], 0.95) == 7.0
    assert common.percentile([], 0.5) == 0.0


def record(
    key: str, put: bool, start: float, end: float, completion: str, value: str | None, node: int = 2
) -> failover_analysis.OpRecord:
    return (key, put, start, end, completion, value, node)


def test_last_acknowledged_put_must_be_read_back() -> None:
    preload = {"a": "a0", "b": "b0", "c": "c0", "d": "d0"}
    records = [
        record("a", True, 1.0, 1.1, "ok", "a1"),
        record("b", True, 1.0, 1.1, "ok", "b1"),
        record("b", True, 2.0, 9.0, "timed_out", "b2"),  # may or may not have been applied
        record("c", True, 1.0, 1.1, "ok", "c1"),
        record("c", False, 2.0, 2.1, "ok", "c1"),
    ]
    final = {"a": "a1", "b": "b2", "c": "c0", "d": "d0"}
    lost, unverified, acked = failover_analysis.lost_writes(records, preload, final)
    assert (lost, unverified, acked) == (1, 0, 3)  # c went back to its preload value
    assert failover_analysis.lost_writes(records, preload, {"a": "a1", "b": "b1", "c": "c1"}) == (0, 1, 3)


def test_unavailability_ends_at_first_success_from_another_node() -> None:
    victim, kill_t = 1, 10.0
    records = [
        record("a", False, 9.9, 10.05, "ok", "x", node=victim),  # answered by the victim before it died
        record("a", True, 10.0, 10.9, "ok", "y", node=2),
        record("b", True, 9.9, 10.8, "ok", "z", node=3),
        record("b", False, 10.8, 10.85, "ok", "z", node=3),
        record("c", True, 9.9, 12.0, "timed_out", "w", node=0),
    ]
    windows, unrecovered = failover_analysis.unavailability(records, victim, kill_t)
    assert sorted(round(w) for w in windows) == [800, 900]
    assert unrecovered == 1


def test_write_unavailability_counts_only_puts_issued_after_the_kill() -> None:
    kill_t = 10.0
    records = [
        record("a", True, 9.9, 10.01, "ok", "x"),  # replicated just before the kill: says nothing
        record("a", True, 10.02, 10.75, "ok", "y"),
        record("b", False, 10.02, 10.03, "ok", "z"),  # reads never waited for the dead backup
        record("b", True, 10.76, 10.78, "ok", "w"),
        record("c", False, 10.02, 10.03, "ok", "v"),
    ]
    stalls, unwritten = failover_analysis.write_unavailability(records, kill_t)
    assert sorted(round(s) for s in stalls) == [750, 780]
    assert unwritten == 1


def test_balance_stats_compare_with_binomial_spread() -> None:
    stats = balance._balance_stats(700, 7, 1, {f"server{i}": 100 for i in range(1, 8)})
    assert (stats.max_over_mean, stats.min_over_mean, stats.stddev) == (1.0, 1.0, 0.0)
    assert stats.ideal_stddev == pytest.approx(math.sqrt(700 * (1 / 7) * (6 / 7)), abs=0.01)
    replicated = balance._balance_stats(700, 7, 3, {f"server{i}": 300 for i in range(1, 8)})
    assert replicated.ideal_stddev == pytest.approx(math.sqrt(700 * (3 / 7) * (4 / 7)), abs=0.01)


def test_failover_key_groups_follow_placement() -> None:
    groups = failover._failover_keys(7, 3, victim=1)
    assert set(groups) == {"primary", "backup", "unrelated"}
    for key in groups["primary"]:
        assert replicas_for(slot_of(key), 7, 3)[0] == 1
    for key in groups["backup"]:
        assert 1 in replicas_for(slot_of(key), 7, 3)[1:]
    for key in groups["unrelated"]:
        assert 1 not in replicas_for(slot_of(key), 7, 3)
    assert "unrelated" not in failover._failover_keys(3, 3, victim=1)  # every slot has every node


def failover_run(killed: str, median: float | None, top: float | None, **fields: object) -> failover_analysis.Failover:
    run = failover_analysis.Failover(
        killed=killed, nodes=7, rep=3, duration_s=6.0, kill_t=0.2, keys={"primary": 10},
        unavailable_ms={"median": median, "max": top}, unrecovered_keys=0 if median is not None else 3,
        backup_write_unavailable_ms={"median": None, "max": None}, acked_writes=1000, lost_acked_writes=0,
        unverified_keys=0, failed_ops=0, timeline=[], keys_loaded=1000, load_s=1.0,
    )  # fmt: skip
    for name, value in fields.items():
        setattr(run, name, value)
    return run


def test_series_figures_cover_every_kill() -> None:
    runs = [
        failover_run("server1", 700.0, 720.0, load_s=2.0),
        failover_run("server2", 800.0, 900.0, false_dead=["server4", "server5"], lost_acked_writes=4),
        failover_run("server3", 750.0, 760.0, load_s=3.0),
    ]
    series = failover_analysis.summarise(runs)
    assert series.unavailable_ms == {"median": 750.0, "max": 900.0}
    assert series.load_s == {"median": 2.0, "max": 3.0}
    assert (series.kills, series.false_dead, series.runs_with_false_dead, series.lost_acked_writes) == (3, 2, 1, 4)
    # A run where some key never came back has no maximum: neither has the series.
    broken = failover_analysis.summarise([*runs, failover_run("server4", None, None)])
    assert broken.unavailable_ms == {"median": 750.0, "max": None}
    assert broken.unrecovered_keys == 3
    # A run that lost healthy nodes during its load never got to the kill: only its false deaths count.
    failed = failover_run("server4", None, None, unrecovered_keys=0, false_dead=["server2"], error="the load failed")
    with_failure = failover_analysis.summarise([*runs, failed])
    assert with_failure.unavailable_ms == series.unavailable_ms
    assert with_failure.load_s == series.load_s
    assert (with_failure.failed_runs, with_failure.false_dead, with_failure.runs_with_false_dead) == (1, 3, 2)


def test_bulk_values_are_100_bytes_and_differ() -> None:
    values = {bulk.bulk_value(i) for i in (0, 7, 99_999, 1_999_999)}
    assert len(values) == 4
    assert {len(v) for v in values} == {100}


def test_key_counts_read_as_k_and_m() -> None:
    assert [failover_views.keys_label(n) for n in (500, 10_000, 1_500, 1_000_000, 2_000_000)] == [
        "500", "10k", "1.5k", "1M", "2M",
    ]  # fmt: skip


def test_master_failover_section_gives_each_kind_of_fault_and_the_writes_checked() -> None:
    run = master_failover.MasterFailoverRun(3, 5, 3, acked_writes=1200, lost_acked_writes=0)
    run.faults = [
        master_failover.MasterFault("kill", "master1", 1, 2.0, 1400.0, "master2", 2, 1600.0),
        master_failover.MasterFault("pause", "master2", 2, 10.0, 700.0, "master3", 3, 300.0),
        master_failover.MasterFault("kill", "master3", 3, 18.0, 1000.0, "master1", 4, 1200.0),
    ]
    lines = master_failover.master_failover_markdown(run)
    assert lines[0] == "## Master failover"
    assert "kvcluster bench master-failover --nodes 5 --rep 3 --masters 3 --faults 3" in lines[2]
    assert "| kill -9 of the leader | 2 | 1,200 / 1,400 ms | 1,400 / 1,600 ms |" in lines
    assert "| SIGSTOP of the leader | 1 | 700 / 700 ms | 300 / 300 ms |" in lines
    assert "| all | 3 | 1,000 / 1,400 ms | 1,200 / 1,600 ms |" in lines
    assert any("**0** of 1,200" in line for line in lines)


def test_memory_section_divides_node_memory_by_key_replicas() -> None:
    mib = 1 << 20
    memory = common.Memory.after_fill(1000, 3, empty=100 * mib, filled=101 * mib)
    assert (memory.per_key_replica, memory.added_per_key_replica) == (round(101 * mib / 3000, 1), round(mib / 3000, 1))
    runs = [common.ThroughputRun(3, 1, 10, 10, 0, 1.0, 1, 1, 1, 1, 7, 1, 1, keys=1000, memory=memory)]
    loaded = failover_run("server1", 700.0, 720.0, memory=common.Memory.after_fill(1000, 3, 0, 3000 * 333))
    results = report.Results(runs, None, loaded, [failover_analysis.summarise([loaded])])  # type: ignore[arg-type]
    lines = report._memory_lines(results)
    assert lines[0] == "## Memory"
    assert "| 1,000 | 7, 3 | failover bulk load | 1.0 MiB | 333 B | 333 B |" in lines
    assert "| 1,000 | 7, 3 | throughput preload | 101.0 MiB | 35,302 B | 350 B |" in lines


def test_png_charts_without_matplotlib_name_the_extra(tmp_path: Path) -> None:
    block = (
        "import sys, runpy; sys.modules['matplotlib'] = None; sys.argv = ['kvcluster', 'bench', 'report', '--quick']"
    )
    proc = subprocess.run(
        [sys.executable, "-c", f"{block}; runpy.run_module('kvcluster', run_name='__main__')"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr == "error: PNG charts need matplotlib: pip install 'kvcluster[report]'\n"
    assert not (tmp_path / "docs").exists()


def test_every_block_of_the_report_template_is_filled_by_some_generator() -> None:
    used = set(
        re.findall(r'template\(\s*"(\w+)"', "".join(p.read_text() for p in Path(report.__file__).parent.glob("*.py")))
    )
    assert used == set(output._template_blocks())


def test_a_workload_sends_its_mix_its_range_or_its_owned_keys() -> None:
    rng = random.Random(1)
    mix = list(workload.Workload("m", index=2, keys=10, ops=5000, read_ratio=0.25, round_size=2048).rounds(rng))
    assert [len(ops) for ops, _ in mix] == [2048, 2048, 904]
    ops = [op for round_ops, _ in mix for op in round_ops]
    assert {key for _, key, _ in ops} <= {f"key{i}" for i in range(10)}
    gets = sum(kind == OpKind.GET for kind, _, _ in ops)
    assert 0.2 < gets / len(ops) < 0.3
    assert len({value for kind, _, value in ops if kind == OpKind.PUT}) == len(ops) - gets  # every put value unique
    (verify,) = workload.Workload("m", span=range(5, 8), verify=True).rounds(rng)
    assert verify == ([(OpKind.GET, f"key{i}", None) for i in (5, 6, 7)], [bulk.bulk_value(i) for i in (5, 6, 7)])
    owned = workload.Workload("m", owned=("a", "b")).rounds(rng)
    first, second = next(owned)[0], next(owned)[0]
    assert [key for _, key, _ in first] == [key for _, key, _ in second] == ["a", "b"]


def test_a_tally_dates_answers_by_their_bucket_and_counts_what_failed() -> None:
    ok, miss, late = Completion.OK, Completion.NOT_FOUND, Completion.TIMED_OUT
    ops = [(OpKind.GET, "key1", None)] * 4
    results = [OpResult(ok, "v", 1, 0.2), OpResult(miss, None, 1, 0.7), OpResult(ok, "x", 1, 0.1), OpResult(late)]
    tally = workload.Tally(0.5)
    tally.record(ops, results, 10.0, 11.0, ["v", None, "v", "v"])
    assert {i: list(v) for i, v in tally.latencies.items()} == {20: [pytest.approx(200), pytest.approx(100)], 21: [700]}
    assert (tally.completed, tally.not_found, tally.wrong, tally.failures, tally.failed) == (
        3,
        1,
        1,
        {"timed_out": 1},
        {22: 1},
    )
    both = workload.merged([tally, tally])
    assert (both.completed, both.failures) == (6, {"timed_out": 2})
