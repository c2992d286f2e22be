"""Data that outlives its processes: down and up, a kill -9 of every process mid-write, a full disk, a bad byte.

Real clusters through the CLI, real SIGKILLs, a real tmpfs. Every test
reads back every write the cluster acknowledged.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvcluster.client import Completion, Connection
from kvcluster.core.wire import OpKind
from kvcluster.errors import ClusterUnavailable
from tests.conftest import Cluster, ClusterLauncher, recorded_processes, run_cli, same_process_alive, wait_until


def up_again(c: Cluster, *extra: str) -> None:
    run_cli("up", "-d", "--nodes", str(c.nodes), "--rep", str(c.rep), *extra, home=c.home)
    c.started = {**c.started, **recorded_processes(c.home)}


def read_back(c: Cluster, keys: list[str]) -> dict[str, str | None]:
    with Connection(c.master_address(), deadline=30.0) as client:
        results = client.execute([(OpKind.GET, k, None) for k in keys], batch=64, window=16)
    assert all(r.completion in (Completion.OK, Completion.NOT_FOUND) for r in results), {r.completion for r in results}
    return {k: r.value for k, r in zip(keys, results, strict=True)}


def load_keys(c: Cluster, tmp_path: Path, count: int) -> dict[str, str]:
    data = {f"key{i:06d}": f"value{i}" for i in range(count)}
    path = tmp_path / "keys.txt"
    path.write_text("".join(f"{k} {v}\n" for k, v in data.items()))
    c.run("load", str(path), timeout=300)
    return data


def kill_everything(c: Cluster) -> None:
    """SIGKILL the supervisor, every master and every node at once, as a power cut would stop them."""
    processes = recorded_processes(c.home)
    for pid, _ in processes.values():
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not any(same_process_alive(*p) for p in processes.values()), message="every process gone")


def test_down_and_up_keep_every_key(cluster: ClusterLauncher, tmp_path: Path) -> None:
    c = cluster(5, 3)
    data = load_keys(c, tmp_path, 50_000)
    down = c.run("down").stderr
    assert "its data stays in" in down
    up_again(c)
    assert read_back(c, sorted(data)) == data
    status = c.status()
    assert status["dead"] == []
    assert any(e["kind"] == "recovered" for e in status["events"])
    assert all(n["disk"] is not None and n["disk"]["fsync"] == "everysec" for n in status["nodes"])
    c.run("down", "--purge")
    assert not (c.home / "data").exists()
    up_again(c)
    assert read_back(c, ["key000001"]) == {"key000001": None}


def test_a_kill_of_every_process_mid_write_loses_no_acknowledged_write(cluster: ClusterLauncher) -> None:
    c = cluster(3, 2, 3, "--fsync", "always")
    acknowledged: dict[str, str] = {}
    stop = threading.Event()

    def write() -> None:
        with Connection(c.master_address(), deadline=2.0) as client:
            batch = 0
            while not stop.is_set():
                ops = [(OpKind.PUT, f"k{batch}-{i}", f"v{batch}-{i}") for i in range(20)]
                try:
                    results = client.execute(ops, batch=20, window=1)
                except ClusterUnavailable:
                    return  # every master is gone
                for (_, key, value), result in zip(ops, results, strict=True):
                    if result.completion == Completion.OK:
                        assert value is not None
                        acknowledged[key] = value
                batch += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_until(lambda: len(acknowledged) >= 3000, timeout=120, message="3000 acknowledged puts")
        kill_everything(c)  # while the writer keeps writing
    finally:
        stop.set()
        writer.join(timeout=60)
    assert not writer.is_alive()
    up_again(c, "--fsync", "always")
    lost = {k for k, v in read_back(c, sorted(acknowledged)).items() if v != acknowledged[k]}
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged writes lost, e.g. {sorted(lost)[:5]}"


def test_up_refuses_another_shape_and_changes_nothing(cluster: ClusterLauncher) -> None:
    c = cluster(3, 2)
    c.put("kept", "yes")
    c.run("down")
    proc = run_cli("up", "-d", "--nodes", "4", "--rep", "2", home=c.home, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for hint in ("add-node", "remove-node", "down --purge", "--nodes 3 --rep 2"):
        assert hint in lines[0]
    up_again(c)
    assert c.get("kept")[0] == "yes"


def test_a_corrupt_log_is_never_served_and_its_peers_serve_the_keys(cluster: ClusterLauncher, tmp_path: Path) -> None:
    c = cluster(3, 2)
    data = load_keys(c, tmp_path, 2000)
    c.run("down")
    segment = sorted((c.home / "data" / "server1").glob("*.wal"))[-1]
    damaged = bytearray(segment.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    segment.write_bytes(bytes(damaged))
    up_again(c)  # server1 refuses to start; the masters give up waiting for it and start without it
    assert "is corrupt at byte" in c.log("server1")
    assert read_back(c, sorted(data)) == data
    assert "server1" in c.status()["dead"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, mounted for this test only."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    with path.open("wb") as file:
        try:
            while True:
                file.write(b"\0" * (1 << 20))
                file.flush()
        except OSError:
            pass


def test_a_full_disk_refuses_writes_serves_reads_and_recovers(small_disk: Path, cluster: ClusterLauncher) -> None:
    storage = ("--data-dir", str(small_disk / "data"), "--fsync", "always")
    c = cluster(3, 1, 1, *storage)
    c.put("before", "full")
    filler = small_disk / "filler"
    fill(filler)
    # Larger than the free end of the log's last page: the write needs a page the disk cannot give.
    refused = c.run("put", "during", "x" * 100_000, "--timeout", "10", check=False)
    assert refused.returncode == 1
    assert "cannot write its log: No space left on device" in refused.stderr, refused.stderr
    assert c.get("before")[0] == "full"
    assert any(n["disk"]["error"] for n in c.status()["nodes"])
    filler.unlink()
    wait_until(lambda: c.run("put", "after", "space", check=False).returncode == 0, timeout=30)
    assert c.get("after")[0] == "space"
    assert c.get("before")[0] == "full"
    c.run("down")
    up_again(c, "--masters", "1", *storage)
    assert c.get("after")[0] == "space"
    assert json.loads(c.run("status", "--json").stdout)["dead"] == []


def test_snapshots_bound_the_log_and_a_restart_reads_them(cluster: ClusterLauncher, tmp_path: Path) -> None:
    c = cluster(3, 2, 3, "--snapshot-after", "65536")
    data = load_keys(c, tmp_path, 30_000)
    node_dir = c.home / "data" / "server1"
    wait_until(lambda: list(node_dir.glob("*.snap")), message="server1 wrote a snapshot")
    segments = sorted(node_dir.glob("*.wal"))
    snapshot = sorted(node_dir.glob("*.snap"))[-1]
    assert all(int(s.stem) >= int(snapshot.stem) for s in segments), "segments the snapshot covers were kept"
    c.run("down")
    up_again(c)
    assert read_back(c, sorted(data)) == data


def settled(c: Cluster) -> dict[str, Any] | None:
    """The status once every slot has its replicas, no copy runs and the nodes are balanced; else None."""
    status = c.status()
    nodes = [n for n in status["nodes"] if n["alive"]]
    totals = [n["primary_slots"] + n["backup_slots"] for n in nodes]
    copying = status["healing"] is not None and status["healing"]["copies_under_way"]
    if status["under_replicated_slots"] or copying or max(totals) - min(totals) > 1:
        return None
    return status


def test_a_restarted_node_gets_back_the_slots_it_holds_with_only_the_writes_it_missed(
    cluster: ClusterLauncher, tmp_path: Path
) -> None:
    c = cluster(4, 2)
    data = load_keys(c, tmp_path, 20_000)
    c.kill("server2")
    wait_until(lambda: c.declared_dead("server2") and settled(c), timeout=60, message="healed without server2")
    copied_before = c.status()["healing"]["keys_copied"]
    for i in range(50):  # writes it misses while it is away
        c.put(f"key{i:06d}", f"changed{i}")
        data[f"key{i:06d}"] = f"changed{i}"
    c.run("restart", "server2")
    status = wait_until(lambda: settled(c), timeout=60, message="server2 rebalanced back in")
    server2 = next(n for n in status["nodes"] if n["name"] == "server2")
    copied = status["healing"]["keys_copied"] - copied_before
    assert server2["keys"] > 0
    assert copied < server2["keys"] / 5, f"{copied} keys sent to give server2 back {server2['keys']}"
    assert read_back(c, sorted(data)) == data
