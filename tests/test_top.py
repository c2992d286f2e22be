"""``kvcluster top`` against a real cluster: the nodes' own counters, every node in a frame, a dead one in time."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from collections import Counter
from typing import Any

import psutil
import pytest
from conftest import Cluster, ClusterLauncher, wait_until

from kvcluster import Client
from kvcluster.core.placement import replicas_for, slot_of

KEYS = 300
TOP_TIMEOUT = 0.5  # seconds a frame waits for the nodes: a silent node must not keep top waiting longer


@pytest.fixture(scope="module")
def shared(module_cluster: ClusterLauncher) -> Cluster:
    return module_cluster(nodes=3, rep=2)


def top_json(cluster: Cluster) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(cluster.run("top", "--json", "--timeout", str(TOP_TIMEOUT)).stdout)
    return doc


def test_top_shows_each_nodes_ops_and_keys(shared: Cluster) -> None:
    keys = {f"top{i}": f"v{i}" for i in range(KEYS)}
    with Client(home=shared.home, timeout=20) as kv:
        kv.put_many(keys)
        assert kv.get_many(list(keys)[:100]) == list(keys.values())[:100]
        assert kv.delete("top0")
    expected = Counter(n for key in keys if key != "top0" for n in replicas_for(slot_of(key), 3, 2))
    doc = top_json(shared)
    nodes = {n["name"]: n for n in doc["nodes"]}
    assert sorted(nodes) == ["server1", "server2", "server3"]
    assert doc["leader"] is not None
    raft = doc["raft"]  # the group's log as its leader sees it: the table was committed there, so the index moved
    assert raft["commit_index"] >= raft["last_applied"] > 0
    assert [m["name"] for m in raft["members"]] == ["master1", "master2", "master3"]
    leader = next(m for m in raft["members"] if m["name"] == doc["leader"])
    assert leader["connected"]
    assert leader["lag"] == 0
    assert all(0 <= m["lag"] <= raft["commit_index"] for m in raft["members"])
    assert all(n["state"] == "alive" and n["answered"] for n in nodes.values())
    assert sum(n["total_puts"] for n in nodes.values()) == KEYS
    assert sum(n["total_gets"] for n in nodes.values()) == 100
    assert sum(n["total_deletes"] for n in nodes.values()) == 1
    # within the window of a few seconds, the rates and latencies show the work just done
    assert sum(n["puts_per_s"] for n in nodes.values()) > 0
    assert sum(n["gets_per_s"] for n in nodes.values()) > 0
    assert all(n["p99_ms"] >= n["p50_ms"] > 0 for n in nodes.values() if n["replies"])
    for name, node in nodes.items():
        assert node["keys"] == expected[int(name.removeprefix("server"))], name
        assert node["primary_slots"] > 0
        assert node["backup_slots"] > 0
        assert node["fsync"] == "everysec"
        assert node["rss_bytes"] > 0


def test_top_once_prints_a_frame_with_every_node(shared: Cluster) -> None:
    out = shared.run("top", "--once", "--timeout", str(TOP_TIMEOUT)).stdout
    assert "kvcluster top" in out
    assert "raft: leader master" in out
    assert "commit index" in out
    for name in ("server1", "server2", "server3"):
        line = next((line for line in out.splitlines() if name in line), None)
        assert line is not None, f"{name} missing from:\n{out}"
        assert "alive" in line


def test_a_silent_node_and_a_killed_one_show_within_the_deadline(shared: Cluster) -> None:
    pids = shared.pids()
    os.kill(pids["server3"], signal.SIGSTOP)  # its port still accepts connections; nothing answers
    try:
        started = time.monotonic()
        doc = top_json(shared)
        assert time.monotonic() - started < 10  # process start included; the frame itself waits TOP_TIMEOUT
        server3 = next(n for n in doc["nodes"] if n["name"] == "server3")
        assert not server3["answered"]
        assert server3["state"] in ("not answering", "dead")  # dead once the master declares it so
    finally:
        os.kill(pids["server3"], signal.SIGCONT)  # fenced by the master, it exits
    shared.kill("server2")
    doc = top_json(shared)
    nodes = {n["name"]: n for n in doc["nodes"]}
    assert nodes["server2"]["state"] == "dead"
    assert not nodes["server2"]["answered"]
    assert nodes["server1"]["state"] == "alive"
    out = shared.run("top", "--once", "--timeout", str(TOP_TIMEOUT)).stdout
    server2 = next(line for line in out.splitlines() if "server2" in line)
    assert "dead" in server2
    wait_until(
        lambda: any(e["kind"] == "dead" and e["node"] == "server2" for e in top_json(shared)["events"]),
        message="server2's death among top's events",
    )


def test_up_with_a_metrics_port_serves_the_counters_to_prometheus(cluster: ClusterLauncher) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = cluster(3, 2, 3, "--metrics-port", str(port))
    started.put("m1", "v1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    for name in ("server1", "server2", "server3"):
        assert samples[f'kvcluster_node_up{{node="{name}"}}'] == "1.0"
    assert sum(float(samples[f'kvcluster_node_keys{{node="server{n}"}}']) for n in (1, 2, 3)) == 2  # rep 2
    puts = [float(samples[f'kvcluster_node_ops_total{{kind="puts",node="server{n}"}}']) for n in (1, 2, 3)]
    assert sum(puts) == 1
    started.run("down")
    wait_until(lambda: not exporters(started), message="the exporter to stop with the cluster")


def exporters(cluster: Cluster) -> list[psutil.Process]:
    """The ``_metrics`` processes serving this cluster."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "_metrics" in cmdline and str(cluster.home) in cmdline:
            found.append(proc)
    return found
