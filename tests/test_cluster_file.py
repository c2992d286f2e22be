"""The cluster file and the commands that read it: writing, parsing, refusals, and up's own file."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ClusterLauncher

from kvcluster.clusterfile import load
from kvcluster.core.joins import Holder, Reservations
from kvcluster.core.placement import initial_table
from kvcluster.core.protocol import Join
from kvcluster.errors import ClusterFileInvalid

MASTERS = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103"


def kv(*args: str, cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KVCLUSTER_HOME", "KVCLUSTER_CLUSTER")}
    argv = [sys.executable, "-m", "kvcluster", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, check=False)


@pytest.fixture
def cluster_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.toml"
    made = kv("init", str(path), "--masters", MASTERS, "--rep", "2", "--nodes", "3")
    assert made.returncode == 0, made.stderr
    return path


def test_init_writes_a_private_file_that_parses(cluster_file: Path) -> None:
    assert stat.S_IMODE(cluster_file.stat().st_mode) == 0o600
    cluster = load(cluster_file)
    assert [m.endpoint for m in cluster.masters] == MASTERS.split(",")
    assert [m.raft for m in cluster.masters] == ["127.0.0.1:8101", "127.0.0.1:8102", "127.0.0.1:8103"]
    assert (cluster.rep, cluster.nodes, cluster.fsync, cluster.curve) == (2, 3, "everysec", True)
    publics = {m.public for m in cluster.masters} | {cluster.node_key.public, cluster.client_key.public}
    assert set(cluster.allowed) == publics
    assert len(publics) == 5


def test_init_never_overwrites(cluster_file: Path) -> None:
    before = cluster_file.read_text()
    again = kv("init", str(cluster_file), "--masters", MASTERS, "--rep", "2")
    assert again.returncode == 2
    assert again.stderr == f"error: {cluster_file} exists; not overwriting it (it may hold a running cluster's keys)\n"
    assert cluster_file.read_text() == before


def test_init_explicit_raft_ports(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    made = kv("init", str(path), "--masters", MASTERS, "--rep", "1", "--raft-ports", "9001,9002,9003")
    assert made.returncode == 0, made.stderr
    assert load(path).raft_addresses() == ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
    bad = kv("init", str(tmp_path / "d.toml"), "--masters", "127.0.0.1:7101,127.0.0.1:7102", "--rep", "1")
    assert (bad.returncode, bad.stderr) == (2, "error: --masters lists 2 masters; a group has 1, 3 or 5\n")
    assert not (tmp_path / "d.toml").exists()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("rep = \n", "is not TOML: Invalid value (at line 1, column 7)"),
        ("rep = 2\n", "Object missing required field `nodes`"),
    ],
)
def test_a_broken_file_is_one_line_and_exit_2(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text)
    for args in (("get", "k", "--cluster", str(path)), ("master", str(path), "--id", "1"),
                 ("node", str(path), "--listen", "127.0.0.1"), ("status", "--cluster", str(path))):  # fmt: skip
        proc = kv(*args)
        assert proc.returncode == 2, args
        assert proc.stderr.count("\n") == 1
        assert problem in proc.stderr
        assert proc.stderr.startswith("error: cluster file ")


def test_a_missing_field_is_named(cluster_file: Path) -> None:
    text = "\n".join(line for line in cluster_file.read_text().splitlines() if not line.startswith("fsync"))
    cluster_file.write_text(text)
    with pytest.raises(ClusterFileInvalid, match="missing required field `fsync`"):
        load(cluster_file)


def test_master_id_not_in_the_file(cluster_file: Path, tmp_path: Path) -> None:
    proc = kv("master", str(cluster_file), "--id", "4", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (2, "error: --id 4 names no master of this cluster file: it lists 1..3\n")
    assert not (tmp_path / "kvcluster-data").exists(), "nothing was created"


def test_bad_node_options(cluster_file: Path, tmp_path: Path) -> None:
    name = kv("node", str(cluster_file), "--listen", "127.0.0.1", "--name", "node7", cwd=tmp_path)
    assert (name.returncode, name.stderr) == (2, "error: --name 'node7': expected serverN, e.g. server4\n")
    wildcard = kv("node", str(cluster_file), "--listen", "0.0.0.0", cwd=tmp_path)
    assert wildcard.returncode == 2
    assert wildcard.stderr == "error: --listen 0.0.0.0 needs --advertise HOST: other hosts cannot connect to 0.0.0.0\n"
    elsewhere = kv("node", str(cluster_file), "--listen", "192.0.2.1", cwd=tmp_path)
    assert elsewhere.returncode == 2
    assert elsewhere.stderr == "error: cannot listen on 192.0.2.1: Cannot assign requested address\n"


def test_a_stale_file_fails_within_its_timeout(cluster_file: Path) -> None:
    started = time.monotonic()
    proc = kv("get", "k", "--cluster", str(cluster_file), "--timeout", "1")
    assert time.monotonic() - started < 4
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: cluster unavailable: master at tcp://127.0.0.1:7101,")
    assert proc.stderr.count("\n") == 1


def test_up_writes_its_own_cluster_file(cluster: ClusterLauncher) -> None:
    local = cluster(nodes=3, rep=2, masters=3)
    path = local.home / "cluster.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load(path).curve is False
    server = local.put("viafile", "yes")
    proc = kv("get", "viafile", "--cluster", str(path))
    assert (proc.returncode, proc.stdout) == (0, f"viafile, yes, {server}\n")
    assert local.status()["curve"] is False
    remote = kv("status", "--cluster", str(path), "--json")
    assert remote.returncode == 0, remote.stderr
    assert '"curve": false' in remote.stdout


def test_next_ids_differ_and_a_live_name_is_refused() -> None:
    joins = Reservations()
    first = [joins.answer(0.0, Join(0, f"tcp://h{i}:1", 100 + i), None, {}, 3, 0.7).node_id for i in range(4)]
    assert first == [1, 2, 3, 4]
    assert joins.answer(0.1, Join(0, "tcp://h0:1", 100), None, {}, 3, 0.7).node_id == 1, "asking again: same id"
    table = initial_table({1: "a", 2: "b", 3: "c"}, 2, 16)
    holders = {n: Holder(10 + n, f"tcp://h{n}:1", 0.0) for n in (1, 2, 3)}
    later = Reservations()
    assert later.answer(20.0, Join(0, "tcp://h9:1", 200), table, holders, 3, 0.7).node_id == 4
    refused = later.answer(20.0, Join(2, "tcp://h9:2", 201), table, holders, 3, 0.7)
    assert refused.refusal.startswith("server2 is alive at tcp://h2:1 (pid 12)")
    assert later.answer(20.0, Join(9, "tcp://h9:3", 202), table, holders, 3, 0.7).refusal == (
        "no server9 in this cluster; the next new node is server5"
    )


def test_up_with_curve(cluster: ClusterLauncher, tmp_path: Path) -> None:
    local = cluster(3, 2, 3, "--curve")
    path = local.home / "cluster.toml"
    keys = load(path)
    assert keys.curve is True
    assert [f"tcp://{m.endpoint}" for m in keys.masters] == local.status()["master"]["endpoint"].split(",")
    server = local.put("secret", "kept")
    assert local.get("secret") == ("kept", server)
    assert local.status()["curve"] is True
    assert kv("get", "secret", "--cluster", str(path)).stdout == f"secret, kept, {server}\n"
    # The same masters, with another cluster's keys: refused, in one line, within the timeout.
    other = tmp_path / "other.toml"
    assert kv("init", str(other), "--masters", MASTERS, "--rep", "1").returncode == 0
    text = other.read_text()
    for mine, theirs in zip(load(other).masters, keys.masters, strict=True):
        text = text.replace(f'endpoint = "{mine.endpoint}"', f'endpoint = "{theirs.endpoint}"')
    other.write_text(text)
    started = time.monotonic()
    refused = kv("get", "secret", "--cluster", str(other), "--timeout", "2")
    assert time.monotonic() - started < 5
    assert (refused.returncode, refused.stderr) == (
        1,
        "error: the cluster refused this client's key (check --cluster FILE)\n",
    )
