"""Bad input and unavailable clusters at the CLI: one ``error:`` line, the right exit code, nothing stored.

A value over 1 MiB cannot travel through argv (Linux caps a single argument
at 128 KiB), so that limit is checked through the library: ``validate``,
``Connection.put``, and a raw oversized put that skips client-side validation and
must be refused by the node itself. The CLI is checked with the largest value
argv allows.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import Cluster, ClusterLauncher, run_cli, same_process_alive, wait_until

from kvcluster.client import Completion, Connection, validate
from kvcluster.core.placement import replicas_for, slot_of
from kvcluster.core.protocol import MAX_VALUE_BYTES
from kvcluster.core.wire import OpKind
from kvcluster.errors import InvalidValue, KeyNotFound

USAGE = 2
FAILURE = 1


def assert_error(proc: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    """One ``error:`` line on stderr, nothing on stdout, exit ``code``, and every fragment in the message."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}; stderr: {proc.stderr!r}"
    assert proc.stdout == "", proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


@dataclass
class Store:
    """The one-node cluster of this module and every key this module stored in it.

    With one node every request goes to server1 in order, and its key count
    (reported by heartbeats) settles once a later put is acknowledged, so an
    exact count proves that no rejected command stored anything.
    """

    cluster: Cluster
    client: Connection
    written: set[str] = field(default_factory=set)

    def put(self, key: str, value: str) -> None:
        assert self.cluster.put(key, value) == "server1"
        self.written.add(key)

    def stored_keys(self) -> int:
        return sum(node.keys for node in self.client.status().nodes)

    def assert_nothing_stored(self, *probes: str) -> None:
        for key in probes:
            with pytest.raises(KeyNotFound):
                self.client.get(key)
        sentinel = f"sentinel{len(self.written)}"
        assert self.client.put(sentinel, "x") == "server1"
        self.written.add(sentinel)
        expected = len(self.written)
        wait_until(lambda: self.stored_keys() >= expected, message=f"server1 reports {expected} keys")
        assert self.stored_keys() == expected, "a rejected command stored something"


@pytest.fixture(scope="module")
def store(module_cluster: ClusterLauncher) -> Iterator[Store]:
    cluster = module_cluster(nodes=1, rep=1)
    with Connection(cluster.master_address()) as client:
        yield Store(cluster, client)


@pytest.fixture
def empty_home(tmp_path: Path) -> Path:
    home = tmp_path / "empty"
    home.mkdir()
    return home


@pytest.fixture
def unreachable() -> Iterator[str]:
    """HOST:PORT of a port that is bound (so nobody else takes it) but where nobody listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


# --- bad keys and values: refused before anything is sent ---


@pytest.mark.parametrize(
    ("args", "fragment", "probes"),
    [
        (("put", "", "v"), "empty", ()),
        (("get", ""), "empty", ()),
        (("put", "bad key", "v"), "whitespace", ("bad", "key", "badkey")),
        (("put", "tab\tkey", "v"), "whitespace", ("tab", "key", "tabkey")),
        (("put", "line\nkey", "v"), "whitespace", ("line", "key", "linekey")),
        (("get", "bad key"), "whitespace", ()),
        (("client", "--put", "bad key", "--val", "v"), "whitespace", ("bad", "badkey")),
        (("put", "k" * 257, "v"), "256 bytes", ("k" * 256,)),
        (("put", "é" * 129, "v"), "256 bytes", ("é" * 128,)),
        (("get", "k" * 257), "256 bytes", ()),
        (("put", "valkey1", "bad value"), "whitespace", ("valkey1",)),
        (("put", "valkey2", "bad\tvalue"), "whitespace", ("valkey2",)),
        (("client", "--put", "valkey3", "--val", "bad value"), "whitespace", ("valkey3",)),
    ],
    ids=[
        "put-empty-key",
        "get-empty-key",
        "key-with-space",
        "key-with-tab",
        "key-with-newline",
        "get-key-with-space",
        "client-key-with-space",
        "key-257-bytes",
        "key-258-utf8-bytes",
        "get-key-257-bytes",
        "value-with-space",
        "value-with-tab",
        "client-value-with-space",
    ],
)
def test_invalid_input_is_refused_and_not_stored(
    store: Store, args: tuple[str, ...], fragment: str, probes: tuple[str, ...]
) -> None:
    assert_error(store.cluster.run(*args, check=False), USAGE, fragment)
    store.assert_nothing_stored(*probes)


def test_limits_are_inclusive(store: Store) -> None:
    longest_key = "é" * 128  # 256 bytes in UTF-8
    store.put(longest_key, "v")
    assert store.cluster.get(longest_key) == ("v", "server1")
    # The largest value a single argv argument can carry on Linux is 128 KiB.
    big = "x" * 100_000
    store.put("bigvalue", big)
    assert store.cluster.get("bigvalue") == (big, "server1")


def test_value_over_one_mebibyte_is_refused_by_library_and_node(store: Store) -> None:
    too_big = "x" * (MAX_VALUE_BYTES + 1)
    validate("hugekey", "x" * MAX_VALUE_BYTES)
    with pytest.raises(InvalidValue, match="1 MiB"):
        validate("hugekey", too_big)
    with pytest.raises(InvalidValue):
        store.client.put("hugekey", too_big)
    # Straight to the node, past the client's own check: the node must refuse it too.
    [result] = store.client.execute([(OpKind.PUT, "hugekey", too_big)])
    assert result.completion == Completion.INVALID
    store.assert_nothing_stored("hugekey")


@pytest.mark.parametrize(
    "args",
    [
        ("client",),
        ("client", "--put", "k", "--val", "v", "--get", "k"),
        ("client", "--put", "k"),
        ("client", "--get", "k", "--val", "v"),
        ("put", "onlykey"),
        ("get",),
        ("up", "--nodes", "many"),
    ],
    ids=[
        "client-neither",
        "client-both",
        "client-put-without-val",
        "client-get-with-val",
        "put-without-value",
        "get-without-key",
        "up-nodes-not-int",
    ],
)
def test_malformed_command_line(store: Store, args: tuple[str, ...]) -> None:
    assert_error(store.cluster.run(*args, check=False), USAGE)
    store.assert_nothing_stored("k", "onlykey")


def test_missing_key(store: Store) -> None:
    assert_error(store.cluster.run("get", "neverwritten", check=False), FAILURE, "not found", "'neverwritten'")
    assert_error(store.cluster.run("client", "--get", "neverwritten", check=False), FAILURE, "not found")


@pytest.mark.parametrize("command", ["kill", "restart", "remove-node"])
@pytest.mark.parametrize("name", ["server9", "server0", "server1x", "master9", "bogus"])
def test_membership_commands_refuse_an_unknown_node(store: Store, command: str, name: str) -> None:
    before = store.cluster.pids()
    assert_error(store.cluster.run(command, name, check=False), USAGE, "unknown node", repr(name), "server1")
    assert store.cluster.pids() == before
    assert all(same_process_alive(pid, created) for pid, created in store.cluster.started.values())


def test_restart_of_a_running_node_is_refused(store: Store) -> None:
    before = store.cluster.pids()
    assert_error(store.cluster.run("restart", "server1", check=False), USAGE, "server1", "is running", "kill it first")
    assert store.cluster.pids() == before
    assert same_process_alive(*store.cluster.started["server1"])
    store.assert_nothing_stored()


def test_remove_node_below_the_replica_count_is_refused(store: Store) -> None:
    before = store.cluster.pids()
    assert_error(store.cluster.run("remove-node", "server1", check=False), USAGE, "server1", "0 live nodes for 1")
    assert store.cluster.pids() == before
    assert store.client.status().draining == []
    store.put("afterremove", "kept")
    assert store.cluster.get("afterremove") == ("kept", "server1")


@pytest.mark.parametrize(
    ("count", "fragment"),
    [("64", "at most 64 nodes"), ("1000", "at most 64 nodes"), ("0", "--count"), ("-1", "--count")],
    ids=["one-over-the-limit", "far-over-the-limit", "zero", "negative"],
)
def test_add_node_beyond_the_limit_is_refused(store: Store, count: str, fragment: str) -> None:
    before = store.cluster.pids()
    assert_error(store.cluster.run("add-node", "--count", count, check=False), USAGE, fragment)
    assert store.cluster.pids() == before
    assert [n.node_id for n in store.client.status().nodes] == [1]


@pytest.mark.parametrize(
    "address",
    ["nonsense", "127.0.0.1", "127.0.0.1:port", "127.0.0.1:70000", ":5000", "127.0.0.1:0", "127.0.0.1:5000,nonsense"],
)
def test_bad_master_address(store: Store, address: str) -> None:
    assert_error(store.cluster.run("get", "k", "--master", address, check=False), USAGE, "address", repr(address))


@pytest.mark.parametrize("args", [("put", "k", "v"), ("client", "--put", "k", "--val", "v")], ids="-".join)
def test_bad_master_address_stores_nothing(store: Store, args: tuple[str, ...]) -> None:
    assert_error(store.cluster.run(*args, "--master", "127.0.0.1:port", check=False), USAGE, "address")
    store.assert_nothing_stored("k")


def test_up_over_a_running_cluster(store: Store) -> None:
    before = store.cluster.pids()
    assert_error(store.cluster.run("up", "-d", "--nodes", "1", "--rep", "1", check=False), USAGE, "already running")
    assert_error(store.cluster.run("up", "--nodes", "1", "--rep", "1", check=False), USAGE, "already running")
    assert store.cluster.pids() == before
    store.put("stillthere", "yes")


# --- no cluster, or no master ---


@pytest.mark.parametrize(
    ("nodes", "rep", "fragment"),
    [("2", "3", "--rep 3"), ("0", "1", "--nodes"), ("1", "0", "--rep"), ("-1", "1", "--nodes"), ("65", "1", "1..64")],
    ids=["rep-over-nodes", "no-nodes", "no-replicas", "negative-nodes", "too-many-nodes"],
)
def test_up_with_impossible_shape(empty_home: Path, nodes: str, rep: str, fragment: str) -> None:
    proc = run_cli("up", "-d", "--nodes", nodes, "--rep", rep, home=empty_home, check=False)
    assert_error(proc, USAGE, fragment)
    assert not (empty_home / "cluster.json").exists()


@pytest.mark.parametrize("masters", ["2", "4", "0", "7"])
def test_up_with_a_master_group_that_cannot_be(empty_home: Path, masters: str) -> None:
    proc = run_cli("up", "-d", "--nodes", "1", "--rep", "1", "--masters", masters, home=empty_home, check=False)
    assert_error(proc, USAGE, "--masters", masters)
    assert not (empty_home / "cluster.json").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("get", "k"),
        ("put", "k", "v"),
        ("client", "--get", "k"),
        ("status",),
        ("status", "--json"),
        ("down",),
        ("kill", "server1"),
    ],
    ids="-".join,
)
def test_commands_without_a_cluster(empty_home: Path, args: tuple[str, ...]) -> None:
    proc = run_cli(*args, home=empty_home, check=False)
    assert_error(proc, FAILURE, "no cluster running", str(empty_home.resolve()))


@pytest.mark.parametrize("args", [("get", "k"), ("put", "k", "v")], ids="-".join)
def test_master_unreachable_fails_in_bounded_time(empty_home: Path, unreachable: str, args: tuple[str, ...]) -> None:
    started = time.monotonic()
    proc = run_cli(*args, "--master", unreachable, "--timeout", "2", home=empty_home, check=False)
    elapsed = time.monotonic() - started
    assert_error(proc, FAILURE, unreachable)
    assert elapsed < 10, f"took {elapsed:.1f} s"


def test_no_live_replica(cluster: ClusterLauncher) -> None:
    # With one replica per slot nothing can heal a slot whose node died: its keys are gone, and said so.
    c = cluster(nodes=3, rep=1)
    key = "orphan"
    (only,) = replicas_for(slot_of(key), 3, 1)
    survivor = f"server{({1, 2, 3} - {only}).pop()}"
    kept = next(k for k in (f"kept{i}" for i in range(1000)) if replicas_for(slot_of(k), 3, 1)[0] == int(survivor[6:]))
    c.put(key, "v1")
    c.put(kept, "v2")
    dead = [f"server{only}"]
    c.kill(dead[0])
    wait_until(lambda: c.declared_dead(*dead), message=f"{dead} listed as dead")

    for args in (("get", key), ("put", key, "v3"), ("client", "--get", key)):
        assert_error(c.run(*args, check=False), FAILURE, "no live replica", f"'{key}'", *dead)
    assert c.get(kept) == ("v2", survivor)
