"""The course assignment's Tests 1-4 and its client form, run against real clusters through the CLI."""

from __future__ import annotations

import os
import signal

import pytest
from conftest import Cluster, ClusterLauncher, wait_until

from kvcluster.client import Connection
from kvcluster.core.placement import replicas_for, slot_of

# The assignment's Tests 1 and 2: (command arguments, expected stdout line); "{server}" stands for any server.
TRACE = [
    (["--put", "key1", "--val", "value1"], "OK, {server}"),
    (["--get", "key1"], "key1, value1, {server}"),
    (["--put", "key1", "--val", "value2"], "OK, {server}"),
    (["--put", "key2", "--val", "value3"], "OK, {server}"),
    (["--put", "key3", "--val", "value4"], "OK, {server}"),
    (["--get", "key1"], "key1, value2, {server}"),
    (["--get", "key2"], "key2, value3, {server}"),
    (["--get", "key3"], "key3, value4, {server}"),
]


def primary_of(key: str, nodes: int, rep: int) -> str:
    """The server placement makes primary of ``key`` while every node is alive."""
    return f"server{replicas_for(slot_of(key), nodes, rep)[0]}"


def run_trace(cluster: Cluster) -> dict[str, str]:
    """Run the trace with ``kvcluster client``, check every line exactly; return key -> server that answered."""
    servers: dict[str, str] = {}
    for args, expected in TRACE:
        out = cluster.run("client", *args).stdout
        key = args[1]
        server = servers.setdefault(key, primary_of(key, cluster.nodes, cluster.rep))
        assert out == expected.format(server=server) + "\n", f"client {' '.join(args)}"
    return servers


@pytest.fixture(scope="module")
def five_nodes(module_cluster: ClusterLauncher) -> Cluster:
    return module_cluster(nodes=5, rep=3)


def test_1_single_server(cluster: ClusterLauncher) -> None:
    servers = run_trace(cluster(nodes=1, rep=1))
    assert set(servers.values()) == {"server1"}


def test_2_multi_server_trace(five_nodes: Cluster) -> None:
    servers = run_trace(five_nodes)
    assert len(set(servers.values())) > 1, f"key1..key3 all on one server: {servers}"


def test_2_keys_spread_over_servers_self_consistently(five_nodes: Cluster) -> None:
    put_servers = {f"spread{i}": five_nodes.put(f"spread{i}", f"v{i}") for i in range(1, 11)}
    assert len(set(put_servers.values())) > 1, f"every key went to one server: {put_servers}"
    for i, (key, server) in enumerate(put_servers.items(), start=1):
        assert five_nodes.get(key) == (f"v{i}", server)
    for key in ("spread1", "spread2", "spread3"):
        assert five_nodes.put(key, "overwritten") == put_servers[key]
        assert five_nodes.get(key) == ("overwritten", put_servers[key])


def test_client_form_with_state_directory(five_nodes: Cluster) -> None:
    expected = primary_of("formkey", 5, 3)
    assert five_nodes.run("client", "--put", "formkey", "--val", "formvalue").stdout == f"OK, {expected}\n"
    assert five_nodes.run("client", "--get", "formkey").stdout == f"formkey, formvalue, {expected}\n"


def test_client_form_with_master_address(five_nodes: Cluster) -> None:
    master = five_nodes.master_address()
    assert not master.startswith("tcp://")
    expected = primary_of("masterkey", 5, 3)
    put = five_nodes.run("client", "--put", "masterkey", "--val", "m1", "--master", master)
    assert put.stdout == f"OK, {expected}\n"
    got = five_nodes.run("client", "--get", "masterkey", "--master", master)
    assert got.stdout == f"masterkey, m1, {expected}\n"
    # What one form wrote, the other reads.
    assert five_nodes.get("masterkey") == ("m1", expected)
    five_nodes.put("masterkey", "m2")
    assert five_nodes.run("get", "masterkey", "--master", master).stdout == f"masterkey, m2, {expected}\n"


def test_3_availability_through_one_failure(cluster: ClusterLauncher) -> None:
    c = cluster(nodes=3, rep=2)
    victim = c.put("key1", "value1")
    assert c.put("key1", "newvalue1") == victim
    latest = {"key1": "newvalue1"}
    i = 1
    while len(latest) < 3:
        i += 1
        key = f"key{i}"
        if c.put(key, f"value{i}") == victim:
            latest[key] = f"value{i}"
        assert i < 100, "no three keys share a server"

    c.kill(victim)
    for key, value in latest.items():
        got, server = c.get(key)
        assert got == value, f"{key} lost its latest value"
        assert server != victim
    again = c.run("kill", victim, check=False)
    assert again.returncode == 1
    assert "not running" in again.stderr


def test_4_availability_through_two_failures(cluster: ClusterLauncher) -> None:
    c = cluster(nodes=7, rep=3)
    latest = {f"key{i}": f"value{i}" for i in range(1, 21)}
    # The writes go through the library, as the assignment's "another client program" would; the reads use the CLI.
    with Connection(c.master_address()) as client:
        owners = {key: client.put(key, value) for key, value in latest.items()}
        assert len(set(owners.values())) >= 4, f"keys on too few servers: {owners}"
        for key in ("key1", "key2", "key3"):
            latest[key] = f"new{latest[key]}"
            assert client.put(key, latest[key]) == owners[key]

    # Kill the two servers that are primary for the most keys, so the test needs both failovers.
    by_load = sorted(set(owners.values()), key=lambda s: sum(o == s for o in owners.values()), reverse=True)
    by_cli, by_signal = by_load[:2]
    c.kill(by_cli)
    os.kill(c.node(by_signal)["pid"], signal.SIGKILL)

    for key, value in latest.items():
        got, server = c.get(key)
        assert got == value, f"{key} lost its latest value"
        assert server not in (by_cli, by_signal)
    wait_until(lambda: c.declared_dead(by_cli, by_signal), message=f"{by_cli} and {by_signal} listed as dead in status")
