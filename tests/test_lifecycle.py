"""Cluster lifecycle: up (detached and foreground), status, kill, down, and malformed frames on the wire."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from conftest import (
    COMMAND_TIMEOUT,
    Cluster,
    ClusterLauncher,
    kill_survivors,
    recorded_processes,
    run_cli,
    same_process_alive,
    wait_until,
)

from kvcluster.core.placement import NUM_SLOTS, replicas_for, slot_of
from kvcluster.core.protocol import Fenced, Request, encode
from kvcluster.core.wire import PROTOCOL_VERSION, MsgType, Op, OpKind


def all_gone(processes: dict[str, tuple[int, float]]) -> bool:
    return not any(same_process_alive(pid, created) for pid, created in processes.values())


@pytest.fixture(scope="module")
def shared(module_cluster: ClusterLauncher) -> Cluster:
    return module_cluster(nodes=3, rep=2)


def settled_masters(cluster: Cluster) -> dict[str, Any] | None:
    """The status once one master leads and the others follow it in its term; None before."""
    doc = cluster.status()
    roles = sorted(m["role"] for m in doc["masters"])
    terms = {m["term"] for m in doc["masters"]}
    return doc if roles == ["follower", "follower", "leader"] and len(terms) == 1 else None


def test_status_after_up(shared: Cluster) -> None:
    # up returns once the leader has published a table; a follower may not have heard of its term yet.
    doc = wait_until(lambda: settled_masters(shared), message="one leader, and both followers in its term")
    assert (doc["nodes_total"], doc["rep"], doc["dead"]) == (3, 2, [])
    assert doc["master"]["alive"]
    assert doc["supervisor"]["alive"]
    assert doc["table_version"] is not None
    assert [n["name"] for n in doc["nodes"]] == ["server1", "server2", "server3"]
    pids = shared.pids()
    for node in doc["nodes"]:
        assert node["alive"]
        assert node["process_alive"]
        assert not node["declared_dead"]
        assert node["pid"] == pids[node["name"]]
    assert doc["master"]["pid"] == pids[doc["master"]["leader"]]
    primaries = [n["primary_slots"] for n in doc["nodes"]]
    backups = [n["backup_slots"] for n in doc["nodes"]]
    assert sum(primaries) == NUM_SLOTS
    assert max(primaries) - min(primaries) <= 1
    assert sum(backups) == NUM_SLOTS * (shared.rep - 1)
    assert max(backups) - min(backups) <= shared.rep - 1


@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("command", [["get", "full"], ["scan", "fu"], ["put", "full", "again"]])
def test_output_that_cannot_be_written_is_one_line_and_exit_1(
    shared: Cluster, command: list[str], unbuffered: str
) -> None:
    """A data command ends with ``os._exit`` once it has flushed its output: a failed flush is an error too.

    Buffered (the usual case), the output fails at that flush; unbuffered, at the write itself."""
    shared.put("full", "disk")
    env = {**os.environ, "PYTHONUNBUFFERED": unbuffered}
    with Path("/dev/full").open("w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "kvcluster", *command, "--home", str(shared.home)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
            env=env,
        )
    assert (proc.returncode, proc.stderr) == (1, "error: [Errno 28] No space left on device\n")


def test_status_table_for_people(shared: Cluster) -> None:
    out = shared.run("status").stdout
    for name in ("server1", "server2", "server3", "alive"):
        assert name in out


def bad_frames() -> list[bytes]:
    """Frames no kvcluster process may act on: each must be logged as malformed and dropped."""
    good = encode(Request(1, 1, [Op(OpKind.GET, "k", None, slot_of("k"), 0, 1)]))
    request = PROTOCOL_VERSION << 8 | MsgType.REQUEST
    pack = msgspec.msgpack.encode
    return [
        b"",
        b"\xc1\xc1\xc1",  # 0xc1 is never used in msgpack
        b"this is not msgpack",
        good[:-4],  # truncated
        pack({"version": 1}),
        pack([(PROTOCOL_VERSION + 98) << 8 | MsgType.REQUEST, 1, 1, []]),  # wrong version
        pack([2, int(MsgType.REQUEST), 1, 1, []]),  # the [version, type, ...] layout of version 2
        pack([PROTOCOL_VERSION << 8 | 99]),  # unknown type
        pack([request, "client", 1, []]),  # wrong-typed field
        pack([request, 1, 1, [[1, "k", None, 0, 0]]]),  # op with a field missing
        pack([request, 1, 1]),  # wrong arity
        pack([request, 1, 1, [[1, b"k", None, slot_of("k"), 0, 1]]]),  # bytes for str
        encode(Fenced(1, 1)),  # well-formed, but nobody may fence a process over a client socket
    ]


REJECTED_ONE = re.compile(r" rejected a malformed frame from ")
REJECTED_MORE = re.compile(r" rejected ([\d,]+) more malformed frames? from ")
REPORT_WAIT = 60.0  # seconds: a count is logged once its interval (10 s) is over, on a machine that may be crowded


def rejected_count(log: str) -> int:
    """How many rejected frames the log reports: one per first-rejection line, plus every later count."""
    more = sum(int(m.group(1).replace(",", "")) for m in REJECTED_MORE.finditer(log))
    return len(REJECTED_ONE.findall(log)) + more


def test_malformed_frames_are_rejected(shared: Cluster, dealer: zmq.Socket[bytes]) -> None:
    """Every kind of malformed frame, to a master and to a node at once: each is counted, none is answered."""
    doc = shared.status()
    endpoints = {"master1": doc["masters"][0]["endpoint"], "server2": shared.node("server2")["endpoint"]}
    before = {target: rejected_count(shared.log(target)) for target in endpoints}
    frames = bad_frames()
    second = dealer.context.socket(zmq.DEALER)
    try:
        for sock, endpoint in zip((dealer, second), endpoints.values(), strict=True):
            sock.connect(endpoint)
            for frame in frames:
                sock.send(frame)
        for target in endpoints:
            wait_until(
                lambda target=target: rejected_count(shared.log(target)) == before[target] + len(frames),
                timeout=REPORT_WAIT,
                message=f"{target} reports every malformed frame",
            )
        assert not dealer.poll(100), "a malformed frame got an answer"
        assert not second.poll(100), "a malformed frame got an answer"
    finally:
        second.close(linger=0)

    # Every process still serves, including a key whose primary is server2.
    assert all(same_process_alive(pid, created) for pid, created in shared.started.values())
    key = next(k for k in (f"after{i}" for i in range(1000)) if replicas_for(slot_of(k), 3, 2)[0] == 2)
    assert shared.put(key, "after-junk") == "server2"
    assert shared.get(key) == ("after-junk", "server2")
    assert not shared.status()["dead"]


JUNK_FRAMES = 10_000


@pytest.mark.long  # the rate limit behind it is tested in test_ratelimit.py; junk is refused in the test above
def test_a_flood_of_junk_adds_few_log_lines(cluster: ClusterLauncher, dealer: zmq.Socket[bytes]) -> None:
    """10,000 junk frames each to the leading master and to server1, at once: both count them in a few lines."""
    c = cluster(nodes=3, rep=1)
    doc = c.status()
    names = [doc["master"]["leader"], "server1"]
    endpoints = {p["name"]: p["endpoint"] for p in [*doc["masters"], *doc["nodes"]]}
    lines_before = {name: len(c.log(name).splitlines()) for name in names}
    second = dealer.context.socket(zmq.DEALER)
    try:
        for sock, name in zip((dealer, second), names, strict=True):
            sock.sndtimeo = 30_000  # a process that stopped reading fails the test instead of hanging it
            sock.connect(endpoints[name])
            for frame in itertools.islice(itertools.cycle(bad_frames()), JUNK_FRAMES):
                sock.send(frame)
        for name in names:
            wait_until(
                lambda name=name: rejected_count(c.log(name)) == JUNK_FRAMES,
                timeout=REPORT_WAIT,
                message=f"{name} reports all {JUNK_FRAMES:,} junk frames",
            )
            added = len(c.log(name).splitlines()) - lines_before[name]
            print(f"{name}: {JUNK_FRAMES:,} junk frames added {added} log lines")
            assert added < 50, c.log(name)
        assert not dealer.poll(100), "a junk frame got an answer"
        assert not second.poll(100), "a junk frame got an answer"
    finally:
        second.close(linger=0)

    key = next(k for k in (f"flood{i}" for i in range(1000)) if replicas_for(slot_of(k), 3, 1)[0] == 1)
    assert c.put(key, "still-here") == "server1"
    assert c.get(key) == ("still-here", "server1")
    assert not c.status()["dead"]


def test_status_after_kill_shows_slots_moved(cluster: ClusterLauncher) -> None:
    c = cluster(nodes=3, rep=2)
    before = {n["name"]: n for n in c.status()["nodes"]}
    c.kill("server2")
    wait_until(lambda: c.declared_dead("server2"), message="server2 listed as dead")
    doc = c.status()
    after = {n["name"]: n for n in doc["nodes"]}
    dead = after["server2"]
    assert (dead["alive"], dead["process_alive"], dead["declared_dead"]) == (False, False, True)
    assert (dead["primary_slots"], dead["backup_slots"]) == (0, 0)
    assert doc["table_version"] > 1
    assert after["server1"]["primary_slots"] + after["server3"]["primary_slots"] == NUM_SLOTS
    for name in ("server1", "server3"):
        assert after[name]["alive"]
        assert after[name]["primary_slots"] > before[name]["primary_slots"]

    events = doc["events"]
    died = next(e for e in events if (e["kind"], e["node"]) == ("dead", "server2"))
    assert 0 <= died["age_s"] < COMMAND_TIMEOUT
    assert abs(datetime.fromisoformat(died["time"]).timestamp() + died["age_s"] - time.time()) < COMMAND_TIMEOUT
    promoted = {e["node"]: e["slots"] for e in events[events.index(died) :] if e["kind"] == "promoted"}
    # Every slot server2 was primary of has a new primary; rebalancing may hand over more later.
    assert set(promoted) == {"server1", "server3"}
    assert sum(promoted.values()) >= before["server2"]["primary_slots"]
    out = c.run("status").stdout
    assert "Recent events" in out
    assert "server2 declared dead" in out

    processes = recorded_processes(c.home)
    c.run("down")
    wait_until(lambda: all_gone(processes), message="every process of the cluster exits")


def test_down_stops_every_process(cluster: ClusterLauncher) -> None:
    c = cluster(nodes=2, rep=1)
    processes = recorded_processes(c.home)
    assert len(processes) == 6  # the supervisor, three masters and two servers
    out = c.run("down")
    assert "stopped 6 processes" in out.stderr
    wait_until(lambda: all_gone(processes), message="every process of the cluster exits")
    assert not (c.home / "cluster.json").exists()
    assert "no cluster running" in c.run("status", check=False).stderr
    assert c.run("down", check=False).returncode == 1


@pytest.mark.cluster
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_foreground_up_stops_on_signal(tmp_path: Path, signum: signal.Signals) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "KVCLUSTER_HOME"}
    argv = [sys.executable, "-m", "kvcluster", "up", "--nodes", "2", "--rep", "1", "--home", str(home)]
    with (tmp_path / "up.out").open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
    processes: dict[str, tuple[int, float]] = {}
    try:
        wait_until(
            lambda: run_cli("status", "--json", home=home, check=False).returncode == 0, message="the cluster is up"
        )
        processes = recorded_processes(home)
        assert processes["supervisor"][0] == proc.pid
        assert run_cli("put", "fg", "yes", home=home).stdout.startswith("OK, server")

        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 0, (tmp_path / "up.out").read_text(errors="replace")
        wait_until(lambda: all_gone(processes), message="every process of the cluster exits")
        assert not (home / "cluster.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_survivors({**processes, **recorded_processes(home)})
