"""``kvcluster bench recovery`` and ``bench rebalance`` at tiny sizes through the CLI, and the arithmetic behind them.

Never asserts a speed: only that every figure is there, that the figures agree
with each other, and that no key is lost. The benchmarks poll the master
themselves (with deadlines); ``run_bench`` kills whatever a failed run leaves.
"""

from __future__ import annotations

import json
from array import array
from pathlib import Path
from typing import Any

import pytest
from conftest import run_bench, run_cli

from kvcluster.bench.output import section_markers, splice
from kvcluster.bench.workload import Tally, phase, timeline

BEGIN, END = section_markers("healing")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SLOTS = 4096


def check_common(result: dict[str, Any], keys: int, nodes: int, rep: int) -> None:
    """The figures both benchmarks report: every key read back, phases in order, a timeline, the machine's load."""
    assert (result["keys"], result["nodes"], result["rep"]) == (keys, nodes, rep)
    assert result["keys_lost"] == 0
    assert result["keys_unreadable"] == 0
    assert result["fill_s"] > 0
    assert 0 < result["event_t"] < result["healed_t"]
    names = [p["name"] for p in result["phases"]]
    assert names[0] == "before"
    assert names[-1] == "after"
    assert "during" in names
    for p in result["phases"]:
        assert p["start_s"] <= p["end_s"]
        assert p["ops_per_s"] >= 0
    assert result["phases"][0]["ops_per_s"] > 0
    assert result["throughput_ratio"] is not None
    assert result["throughput_ratio"] > 0
    timeline = result["timeline"]
    assert timeline
    assert [b["t"] for b in timeline] == sorted(b["t"] for b in timeline)
    assert all(b["t"] >= 0 for b in timeline)
    assert sum(b["ops_per_s"] for b in timeline) > 0
    assert set(result["load_average"]) == {"start", "end"}
    assert all(len(v) == 3 for v in result["load_average"].values())


@pytest.mark.cluster
@pytest.mark.long  # tests/test_healing.py restores every replica after a kill in the default suite
def test_recovery_restores_every_replica_and_loses_no_key(tmp_path: Path) -> None:
    out = tmp_path / "recovery.json"
    proc = run_bench(
        tmp_path,
        "recovery", "--nodes", "3", "--rep", "2", "--keys", "2000", "--duration", "1.5", "--clients", "1",
        "--plot", "--json", str(out),
        timeout=300,
    )  # fmt: skip
    result = json.loads(out.read_text())
    check_common(result, 2000, 3, 2)
    assert result["killed"] == "server1"
    assert 0 < result["declared_dead_s"] <= result["restore_s"]
    assert result["healed_t"] == pytest.approx(result["event_t"] + result["restore_s"], abs=0.01)
    assert result["slots_copied"] > 0
    # Two live nodes with two replicas each: both hold every slot.
    assert result["slots_per_node"] == {"server2": SLOTS, "server3": SLOTS}
    assert [p["name"] for p in result["phases"]] == ["before", "during", "copying", "after"]
    assert result["command"].startswith("kvcluster bench recovery --nodes 3 --rep 2 --keys 2000")
    assert "time to restore 2 replicas" in proc.stdout


@pytest.mark.cluster
@pytest.mark.long  # tests/test_healing.py and test_rebalance.py cover add-node rebalancing in the default suite
def test_rebalance_spreads_slots_over_the_new_nodes_and_loses_no_key(tmp_path: Path) -> None:
    out = tmp_path / "rebalance.json"
    run_bench(
        tmp_path,
        "rebalance", "--nodes", "3", "--rep", "2", "--add", "1", "--keys", "2000", "--duration", "1.5",
        "--clients", "1", "--json", str(out),
        timeout=300,
    )  # fmt: skip
    result = json.loads(out.read_text())
    check_common(result, 2000, 3, 2)
    assert result["added"] == ["server4"]
    assert 0 < result["joined_s"] <= result["settled_s"]
    assert result["healed_t"] == pytest.approx(result["event_t"] + result["settled_s"], abs=0.01)
    assert result["total_spread"] <= 1
    assert len(result["rank_spread"]) == 2
    per_node = result["slots_per_node"]
    assert sorted(per_node) == ["server1", "server2", "server3", "server4"]
    assert sum(sum(ranks) for ranks in per_node.values()) == SLOTS * 2
    assert sum(ranks[0] for ranks in per_node.values()) == SLOTS
    assert per_node["server4"][0] > 0  # the new node serves some slots as primary
    if result["ranks_within_one_s"] is not None:
        assert max(result["rank_spread"]) <= 1


@pytest.mark.cluster
@pytest.mark.long  # the splice has its own test below, and the quick report in test_bench.py runs healing too
def test_report_only_healing_replaces_its_section_and_keeps_the_rest(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    report = docs / "REPORT.md"
    report.write_text(f"# report\n\n## Throughput\n\nkept\n\n{BEGIN}\nold healing\n{END}\n\n## Reproduce\n\nkept too\n")
    (docs / "REPORT.json").write_text(json.dumps({"throughput": {"kept": True}}))
    run_bench(
        tmp_path, "report", "--quick", "--only-healing", "--recovery-keys", "500", "--out", str(report), timeout=300
    )
    text = report.read_text()
    assert "old healing" not in text
    assert text.count(BEGIN) == text.count(END) == 1
    assert "kept\n" in text
    assert "kept too" in text
    assert text.index("## Throughput") < text.index(BEGIN) < text.index("## Reproduce")
    assert "kvcluster bench recovery --nodes 3 --rep 2 --keys 500" in text
    assert "`kvcluster bench report --quick --only-healing --recovery-keys 500`" in text
    assert "load average" in text
    assert "](recovery_500.png)" in text
    assert (docs / "recovery_500.png").read_bytes().startswith(PNG_MAGIC)
    data = json.loads((docs / "REPORT.json").read_text())
    assert data["throughput"] == {"kept": True}
    assert [r["keys"] for r in data["recovery"]] == [500]
    assert data["recovery"][0]["keys_lost"] == 0
    assert data["rebalance"] == []


@pytest.mark.parametrize(
    "args",
    [
        ["recovery", "--nodes", "3", "--rep", "3"],
        ["recovery", "--rep", "1"],
        ["recovery", "--keys", "0"],
        ["rebalance", "--nodes", "3", "--rep", "4"],
        ["rebalance", "--add", "0"],
        ["report", "--only-healing"],
        ["report", "--recovery-keys", "ten"],
    ],
)
def test_impossible_healing_shapes_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    proc = run_cli("bench", *args, check=False, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr


# --- the arithmetic behind the figures ---


def test_timeline_counts_whole_buckets_only() -> None:
    # Buckets of 0.5 s on the shared clock: bucket 20 is [10.0, 10.5).
    log = Tally(0.5, latencies={20: array("f", [1.0] * 100), 21: array("f", [2.0] * 99 + [50.0]), 22: array("f")})
    log.failed = {22: 3}
    points = timeline(log, released=9.9, stopped=11.6)
    assert [p.t for p in points] == [pytest.approx(0.1), pytest.approx(0.6), pytest.approx(1.1)]
    assert [p.ops_per_s for p in points] == [200.0, 200.0, 0.0]
    assert points[0].p99_ms == 1.0
    assert points[1].p99_ms == 2.0  # nearest rank: the 99th of 100 values
    assert points[2].p99_ms is None
    assert points[2].failed == 3


def test_phase_takes_its_whole_buckets_or_every_bucket_it_touches() -> None:
    log = Tally(0.5, latencies={i: array("f", [float(i)] * 10) for i in range(20, 30)})
    whole = phase(log, 10.0, "during", 11.0, 12.0)  # buckets 22 and 23
    assert whole.ops_per_s == 20.0
    assert (whole.start_s, whole.end_s) == (1.0, 2.0)
    assert whole.p50_ms == 22.0
    assert whole.p99_ms == 23.0
    short = phase(log, 10.0, "during", 11.1, 11.3)  # shorter than a bucket: bucket 22 only
    assert short.ops_per_s == 20.0
    assert short.p99_ms == 22.0


def test_splice_puts_the_section_before_reproduce_or_in_place() -> None:
    section = f"{BEGIN}\nnew\n{END}\n"
    fresh = splice("# r\n\n## A\n\n## Reproduce\n\nx\n", section, BEGIN, END)
    assert fresh.index("## A") < fresh.index("new") < fresh.index("## Reproduce")
    again = splice(fresh, f"{BEGIN}\nnewer\n{END}\n", BEGIN, END)
    assert "newer" in again
    assert "\nnew\n" not in again
    assert again.count(BEGIN) == 1
    assert splice("# r\n", section, BEGIN, END).endswith(section)
