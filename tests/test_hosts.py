"""A cluster on many hosts: 3 masters and 5 nodes on 8 network namespaces, clients on others, CurveZMQ on.

Hosts 1-3 run the masters, 4-8 the first five nodes, 9 and 10 the clients;
11 is a new host whose node joins later and 12 is where a node started under
a live node's name is refused. The tests share one deployment and run in file
order: data across hosts first, then faults (a node's host, the leading
master's host) and joins.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from netns import Hosts, skip_reason

pytestmark = [pytest.mark.cluster, pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")]

MASTER_PORT = 7000
CLIENT, OTHER_CLIENT, NEW_HOST, INTRUDER_HOST = 9, 10, 11, 12
TIMEOUT = "20"  # seconds a client command may wait: failovers are waited out, not reported


class Deployment:
    def __init__(self, hosts: Hosts, cluster: Path) -> None:
        self.hosts = hosts
        self.cluster = cluster

    def cli(self, host: int, *args: str, check: bool = True) -> str:
        proc = self.hosts.run_cli(host, *args, "--cluster", str(self.cluster))
        if check:
            assert proc.returncode == 0, f"{' '.join(args)} on host {host}: {proc.returncode}\n{proc.stderr}"
        return proc.stdout

    def status(self, host: int = CLIENT) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.cli(host, "status", "--json"))
        return doc

    def host_of(self, server: str) -> int:
        node = next(n for n in self.status()["nodes"] if n["name"] == server)
        return int(node["endpoint"].removeprefix("tcp://").rsplit(":", 1)[0].rsplit(".", 1)[1])

    def put(self, host: int, key: str, value: str) -> str:
        out = self.cli(host, "put", key, value, "--timeout", TIMEOUT)
        match = re.fullmatch(r"OK, (server\d+)\n", out)
        assert match, out
        return match.group(1)

    def get(self, host: int, key: str) -> tuple[str, str]:
        out = self.cli(host, "get", key, "--timeout", TIMEOUT)
        match = re.fullmatch(rf"{re.escape(key)}, (\S+), (server\d+)\n", out)
        assert match, out
        return match.group(1), match.group(2)


def _ready(deployment: Deployment, nodes: int) -> bool:
    proc = deployment.hosts.run_cli(CLIENT, "status", "--json", "--cluster", str(deployment.cluster))
    if proc.returncode != 0:
        return False
    doc = json.loads(proc.stdout)
    return doc["table_version"] is not None and sum(n["alive"] for n in doc["nodes"]) == nodes


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    base = tmp_path_factory.mktemp("hosts")
    hosts = Hosts(12, base)
    try:
        cluster = base / "cluster.toml"
        masters = ",".join(f"{hosts.ip(h)}:{MASTER_PORT}" for h in (1, 2, 3))
        made = hosts.run_cli(CLIENT, "init", str(cluster), "--masters", masters, "--rep", "3", "--nodes", "5")
        assert made.returncode == 0, made.stderr
        assert cluster.stat().st_mode & 0o777 == 0o600
        for host in (1, 2, 3):
            hosts.start(host, "master", str(cluster), "--id", str(host), log="master.log")
        for host in range(4, 9):
            hosts.start(host, "node", str(cluster), "--listen", hosts.ip(host), log="node.log")
        deployment = Deployment(hosts, cluster)
        wait_until(lambda: _ready(deployment, 5), timeout=40, interval=0.2, message="5 nodes and a table")
        yield deployment
    finally:
        hosts.close()


def test_data_from_one_host_read_on_another(deployment: Deployment) -> None:
    servers = {f"k{i}": deployment.put(CLIENT, f"k{i}", f"v{i}") for i in range(8)}
    assert len(set(servers.values())) > 1, "keys spread over servers"
    for key, server in servers.items():
        assert deployment.get(OTHER_CLIENT, key) == (f"v{key[1:]}", server)
    assert deployment.cli(OTHER_CLIENT, "delete", "k0") == f"OK, {servers['k0']}\n"
    missing = deployment.hosts.run_cli(CLIENT, "get", "k0", "--cluster", str(deployment.cluster))
    assert (missing.returncode, missing.stderr) == (1, "error: key 'k0' not found\n")
    assert deployment.cli(CLIENT, "scan", "k") == "".join(f"k{i}\n" for i in range(1, 8))
    doc = deployment.status()
    assert doc["curve"] is True
    assert {n["endpoint"].split(":")[1].removeprefix("//") for n in doc["nodes"]} == {
        deployment.hosts.ip(h) for h in range(4, 9)
    }


def test_client_with_another_key_is_refused(deployment: Deployment) -> None:
    foreign = deployment.hosts.base / "foreign.toml"
    text = deployment.cluster.read_text()
    head, tail = text.split("[client_key]")
    public = re.search(r'public = "(.*)"', tail)
    secret = re.search(r'secret = "(.*)"', tail)
    assert public
    assert secret
    import zmq  # noqa: PLC0415

    new_public, new_secret = (k.decode() for k in zmq.curve_keypair())
    foreign.write_text(
        head + "[client_key]" + tail.replace(public.group(1), new_public).replace(secret.group(1), new_secret)
    )
    started = time.monotonic()
    proc = deployment.hosts.run_cli(INTRUDER_HOST, "get", "k1", "--cluster", str(foreign), "--timeout", "3")
    took = time.monotonic() - started
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == "error: the cluster refused this client's key (check --cluster FILE)\n"
    assert took < 3 + 2, f"refused after {took:.1f} s"
    intruder = deployment.hosts.ip(INTRUDER_HOST)
    for host in (1, 2, 3):
        lines = [line for line in deployment.hosts.log(host, "master.log").splitlines() if intruder in line]
        assert len(lines) <= 1, lines
        assert all("refused a connection from" in line for line in lines)


def test_bad_addresses_are_refused(deployment: Deployment) -> None:
    hosts, cluster = deployment.hosts, str(deployment.cluster)
    elsewhere = hosts.run_cli(INTRUDER_HOST, "node", cluster, "--listen", hosts.ip(4))
    assert elsewhere.returncode == 2
    assert elsewhere.stderr == f"error: cannot listen on {hosts.ip(4)}: Cannot assign requested address\n"
    in_use = hosts.run_cli(1, "node", cluster, "--listen", f"{hosts.ip(1)}:{MASTER_PORT}")
    assert (in_use.returncode, in_use.stderr) == (
        2,
        f"error: cannot listen on {hosts.ip(1)}:7000: Address already in use\n",
    )
    no_such = hosts.run_cli(INTRUDER_HOST, "master", cluster, "--id", "4")
    assert no_such.returncode == 2
    assert no_such.stderr == "error: --id 4 names no master of this cluster file: it lists 1..3\n"
    assert sum(n["alive"] for n in deployment.status()["nodes"]) == 5, "nothing changed"


@pytest.mark.long  # a 10 s wait by design; the refusal itself is tested in test_cluster_file.py
def test_a_live_name_is_refused_after_a_bounded_wait(deployment: Deployment) -> None:
    started = time.monotonic()
    proc = deployment.hosts.run_cli(
        INTRUDER_HOST,
        "node",
        str(deployment.cluster),
        "--listen",
        deployment.hosts.ip(INTRUDER_HOST),
        "--name",
        "server2",
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].startswith("error: the master refused server2: server2 is alive at tcp://")
    assert time.monotonic() - started < 20
    assert all(n["alive"] for n in deployment.status()["nodes"]), "nothing changed"


def test_kill_the_primarys_host_and_read_back(deployment: Deployment) -> None:
    primary = deployment.put(CLIENT, "survivor", "still-here")
    host = deployment.host_of(primary)
    assert deployment.hosts.kill(host), f"nothing ran on host {host}"
    value, server = deployment.get(OTHER_CLIENT, "survivor")
    assert value == "still-here"
    assert server != primary
    wait_until(lambda: primary in deployment.status()["dead"], timeout=10, message=f"{primary} declared dead")
    # The same node starts again on its host under its name: a new incarnation that joins and gets slots.
    deployment.hosts.start(host, "node", str(deployment.cluster), "--listen", deployment.hosts.ip(host),
                           "--name", primary, log="node.log")  # fmt: skip
    wait_until(lambda: _has_slots(deployment, primary), timeout=30, interval=0.3, message=f"{primary} back with slots")


def _has_slots(deployment: Deployment, name: str) -> bool:
    node = next((n for n in deployment.status()["nodes"] if n["name"] == name), None)
    return node is not None and node["alive"] and node["primary_slots"] > 0


def test_a_node_on_a_new_host_joins_and_receives_slots(deployment: Deployment) -> None:
    hosts = deployment.hosts
    hosts.start(NEW_HOST, "node", str(deployment.cluster), "--listen", hosts.ip(NEW_HOST), log="node.log")
    wait_until(lambda: _has_slots(deployment, "server6"), timeout=30, interval=0.3, message="server6 with slots")
    assert deployment.host_of("server6") == NEW_HOST
    assert deployment.get(CLIENT, "k3")[0] == "v3"


def test_kill_the_leading_masters_host(deployment: Deployment) -> None:
    leader: str = wait_until(lambda: deployment.status()["master"]["leader"], timeout=10, message="a leader")
    host = int(leader.removeprefix("master"))
    assert deployment.hosts.kill(host)
    primary = deployment.put(CLIENT, "after-leader", "ok")
    assert deployment.get(OTHER_CLIENT, "after-leader") == ("ok", primary)
    new_leader = wait_until(lambda: deployment.status()["master"]["leader"], timeout=10, message="a new leader")
    assert new_leader != leader
    assert deployment.get(OTHER_CLIENT, "k5")[0] == "v5"
