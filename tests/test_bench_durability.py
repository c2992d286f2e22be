"""``bench restart``, ``bench throughput --fsync`` and the report's durability section, at tiny sizes.

Never asserts a speed: only real outcomes (every key read back after each
restart, the runs the options ask for) and bounds that catch a hang.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import psutil
import pytest
from conftest import run_bench

from kvcluster.bench import common, redis_compare
from kvcluster.bench.common import ThroughputRun
from kvcluster.bench.throughput import fsync_costs
from kvcluster.errors import UsageError

HANG = 60.0  # seconds: any wait longer than this in a tiny run is a hang, not a slow machine
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.cluster
def test_restart_reads_every_key_back_after_the_whole_cluster_and_one_node(tmp_path: Path) -> None:
    out = tmp_path / "restart.json"
    proc = run_bench(
        tmp_path,
        "restart", "--keys", "2000", "--nodes", "3", "--rep", "2", "--absence", "1", "--json", str(out),
        timeout=120,
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert (result["keys"], result["nodes"], result["rep"], result["fsync"]) == (2000, 3, 2, "everysec")
    whole = result["whole"]
    assert whole["keys_lost"] == whole["keys_unreadable"] == 0
    assert whole["recovered_event"] is True
    assert 0 < whole["table_s"] <= whole["serving_s"] <= whole["replicas_s"] < HANG
    assert 0 < whole["stop_s"] < HANG
    assert 0 < result["empty_start_s"] < HANG
    node = result["node"]
    assert node["node"] == "server1"
    assert node["keys_lost"] == node["keys_unreadable"] == 0
    assert 0 < node["declared_dead_s"] < HANG
    assert 0 < node["joined_s"] <= node["replicas_s"] < HANG
    assert 0 < node["serving_s"] <= node["replicas_s"]
    # It rejoins with no slots and gets back the ones it still holds with only the writes it missed (or, where its
    # data no longer matches its source's, the whole slot): never more than its share.
    assert node["keys_before"] > 0
    assert node["keys_after"] > 0
    assert 0 <= node["keys_copied"] <= node["keys_after"]
    assert node["copied_fraction"] == pytest.approx(node["keys_copied"] / node["keys_before"], abs=0.001)
    assert result["disk_bytes"] > 0
    assert result["disk_bytes_per_key_replica"] == pytest.approx(result["disk_bytes"] / 4000, abs=0.1)
    assert result["rss_bytes_per_key_replica"] == pytest.approx(result["rss_bytes"] / 4000, abs=0.1)
    assert result["rss_bytes_after_restart"] > 0
    assert result["rss_bytes_empty"] > 0
    # It rejoins holding what it recovered (dormant until slots are given back), never more than it held.
    assert 0 <= node["keys_at_join"] <= node["keys_before"]
    assert "0 lost, 0 unreadable" in proc.stdout


@pytest.mark.cluster
@pytest.mark.long  # the quick report in tests/test_bench.py runs each fsync policy in the default suite
def test_throughput_runs_each_fsync_policy_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    proc = run_bench(
        tmp_path,
        "throughput", "--fsync", "always,no", "--ops", "2000", "--reps", "1", "--nodes", "3", "--keys", "300",
        "--clients", "2", "--json", str(out),
        timeout=120,
    )  # fmt: skip
    data = json.loads(out.read_text())
    runs = data["runs"]
    assert [(r["fsync"], r["rep"]) for r in runs] == [("always", 1), ("no", 1)]
    for run in runs:
        assert run["completed"] == run["ops"] == 2000
        assert run["failed"] == 0
        assert run["ops_per_s"] > 0
    (cost,) = data["fsync_costs"]
    assert cost["fsync"] == "always"
    assert cost["cost"] == pytest.approx(1 - runs[0]["ops_per_s"] / runs[1]["ops_per_s"], abs=0.001)
    assert "against no" in proc.stdout
    assert "redis" not in data


@pytest.mark.cluster
@pytest.mark.long  # the quick report in tests/test_bench.py writes the same section in the default suite
def test_report_writes_the_durability_section_into_an_existing_report(tmp_path: Path) -> None:
    report = tmp_path / "REPORT.md"
    report.write_text("# kvcluster performance report\n\n## Throughput\n\nkept\n\n## Reproduce\n\nkept too\n")
    run_bench(
        tmp_path, "report", "--quick", "--only-durability", "--restart-keys", "1000", "--out", str(report),
        timeout=150,
    )  # fmt: skip
    text = report.read_text()
    assert "## Durability" in text
    assert text.index("## Throughput") < text.index("## Durability") < text.index("## Reproduce")
    assert "kept\n" in text
    assert "kept too" in text
    assert "| always |" in text
    assert "| everysec |" in text
    assert "| no |" in text
    assert "| 1,000 | 3, 2 | everysec |" in text
    for chart in ("durability_throughput.png", "restart.png"):
        assert (tmp_path / chart).read_bytes().startswith(PNG_MAGIC)
    data = json.loads(report.with_suffix(".json").read_text())["durability"]
    assert {r["fsync"] for r in data["throughput"]} == {"always", "everysec", "no"}
    (restart,) = data["restart"]
    assert restart["whole"]["keys_lost"] == restart["node"]["keys_lost"] == 0
    assert 0 < data["fdatasync_us"]["median"] <= data["fdatasync_us"]["p99"]
    if redis_compare.redis_available():
        assert [r["fsync"] for r in data["redis"]] == ["always", "everysec", "no"]
        assert "redis-benchmark" in text


def test_fsync_list_keeps_the_order_and_refuses_unknown_policies() -> None:
    assert common.fsync_list("always, everysec,no,always") == ["always", "everysec", "no"]
    with pytest.raises(UsageError):
        common.fsync_list("always,sometimes")
    with pytest.raises(UsageError):
        common.fsync_list(",")


def _run(fsync: str, rep: int, batch: int, ops_per_s: float) -> ThroughputRun:
    return ThroughputRun(
        rep=rep, batch=batch, ops=100, completed=100, failed=0, ops_per_s=ops_per_s, p50_ms=1.0, p95_ms=1.0,
        p99_ms=1.0, wall_s=1.0, nodes=3, clients=1, window=8, fsync=fsync,
    )  # fmt: skip


def test_fsync_costs_compare_each_policy_with_no_at_the_same_rep_and_mode() -> None:
    runs = [_run("always", 3, 1, 250.0), _run("everysec", 3, 1, 900.0), _run("no", 3, 1, 1000.0)]
    runs += [_run("always", 3, 64, 100.0)]  # no "no" run in this mode: nothing to compare with
    costs = {(c.fsync, c.batch): c for c in fsync_costs(runs)}
    assert set(costs) == {("always", 1), ("everysec", 1)}
    assert costs["always", 1].cost == pytest.approx(0.75)
    assert costs["everysec", 1].cost == pytest.approx(0.1)
    assert "everysec costs 10% against no" in costs["everysec", 1].sentence


@pytest.mark.skipif(not redis_compare.redis_available(), reason="redis-server and redis-benchmark not installed")
def test_redis_run_measures_both_commands_and_stops_its_server() -> None:
    run = redis_compare.run_redis("no", 2000, clients=4)
    assert run.set_ops_per_s > 0
    assert run.get_ops_per_s > 0
    # A harmonic mean lies between its terms; the 0.1 allows for the rounding of the figures reported.
    low, high = sorted((run.set_ops_per_s, run.get_ops_per_s))
    assert low - 0.1 <= run.mixed_ops_per_s <= high + 0.1
    # Only this process's own children count: other tests may run their own Redis meanwhile.
    names = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):  # one that ends while we look is gone
            names.append(child.name())
    assert "redis-server" not in names


def test_redis_is_reported_missing_rather_than_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    assert not redis_compare.redis_available()
