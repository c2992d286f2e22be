"""The Python library and the delete and scan commands, against real clusters.

``kvcluster.Client`` is used the way a program would: found through the state
directory, or given the masters' addresses. Failovers are real ``kill -9``s
through the CLI.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import PUT_LINE, Cluster, ClusterLauncher, run_cli, wait_until

from kvcluster import Client, InvalidKey, UsageError

USAGE = 2
FAILURE = 1
TIMEOUT = 20.0  # generous: a failover on a busy machine is waited out, not reported as a timeout


@pytest.fixture(scope="module")
def shared(module_cluster: ClusterLauncher) -> Cluster:
    return module_cluster(nodes=4, rep=2)


def assert_one_error_line(proc: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}; stderr: {proc.stderr!r}"
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines[0]
    assert fragment in lines[0], lines[0]


def test_importing_kvcluster_stays_light() -> None:
    code = (
        "import sys; from kvcluster import Client, KeyNotFound, ClusterUnavailable; "
        "print(sorted({'psutil', 'rich', 'typer', 'matplotlib', 'plotext', 'zmq'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['zmq']"  # the client's own transport, and nothing the CLI alone needs


def test_put_get_delete_from_python(shared: Cluster) -> None:
    with Client(home=shared.home, timeout=TIMEOUT) as kv:
        server = kv.put("py:one", "1")
        assert server.startswith("server")
        assert kv.last_server == server
        assert kv.get("py:one") == "1"
        assert kv.get_with_server("py:one") == ("1", server)
        assert kv.delete("py:one") is True
        assert kv.last_server == server
        assert kv.get("py:one") is None
        assert kv.delete("py:one") is False
        kv.put("py:one", "2")
    assert shared.get("py:one")[0] == "2"  # what the library wrote, the CLI reads


def test_the_cluster_is_found_through_kvcluster_home(shared: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVCLUSTER_HOME", str(shared.home))
    with Client(timeout=TIMEOUT) as kv:
        kv.put("env:key", "found")
    assert shared.get("env:key")[0] == "found"


def test_many_keys_in_batches_and_scanned_in_order(shared: Cluster) -> None:
    wanted = {f"many:{n:05d}": f"v{n}" for n in range(3000)}
    with Client(shared.master_address(), timeout=TIMEOUT) as kv:
        kv.put_many(wanted)
        keys = [*wanted, "many:absent"]
        assert kv.get_many(keys) == [*wanted.values(), None]
        assert list(kv.scan("many:")) == sorted(wanted)
        assert list(kv.scan("many:", page=7)) == sorted(wanted)  # hundreds of pages per node, same keys
        assert list(kv.scan("many:0012")) == [f"many:0012{d}" for d in range(10)]
        assert list(kv.scan("many:", limit=5)) == sorted(wanted)[:5]
        assert list(kv.scan("many:", limit=0)) == []
        assert list(kv.scan("nothing-starts-with-this")) == []
        everything = list(kv.scan())
    assert everything == sorted(set(everything))
    assert set(wanted) <= set(everything)


def test_threads_share_one_client(shared: Cluster) -> None:
    """Eight threads put, get and scan through one client at once; every answer is the thread's own."""
    errors: list[BaseException] = []
    with Client(home=shared.home, timeout=TIMEOUT) as kv:

        def writer(index: int) -> None:
            try:
                for n in range(100):
                    kv.put(f"thread:{index}:{n:03d}", f"{index}.{n}")
                    assert kv.get(f"thread:{index}:{n:03d}") == f"{index}.{n}"
                assert list(kv.scan(f"thread:{index}:")) == [f"thread:{index}:{n:03d}" for n in range(100)]
            except BaseException as error:  # noqa: BLE001 - collected for the assertion below
                errors.append(error)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        keys = [f"thread:{i}:{n:03d}" for i in range(8) for n in range(100)]
        assert kv.get_many(keys) == [f"{i}.{n}" for i in range(8) for n in range(100)]


def test_bad_input_raises_before_anything_is_sent(shared: Cluster) -> None:
    with Client(home=shared.home, timeout=TIMEOUT) as kv:
        kv.put("bad:kept", "x")
        for call in (
            lambda: kv.delete(""),
            lambda: kv.delete("a b"),
            lambda: kv.scan("a b"),
            lambda: kv.put_many({"bad:fine": "1", "bad key": "2"}),
            lambda: kv.get_many(["bad:kept", ""]),
        ):
            with pytest.raises(InvalidKey):
                call()
        with pytest.raises(UsageError):
            kv.scan(limit=-1)
        assert kv.get_many(["bad:kept", "bad:fine"]) == ["x", None]  # the batch with a bad key stored nothing


def test_cli_delete_and_scan(shared: Cluster) -> None:
    server = shared.put("cli:a", "1")
    shared.put("cli:b", "2")
    shared.put("cli:c", "3")
    assert PUT_LINE.fullmatch(shared.run("delete", "cli:b", "--timeout", "20").stdout.removesuffix("\n"))
    assert_one_error_line(shared.run("delete", "cli:b", check=False), FAILURE, "key 'cli:b' not found")
    assert_one_error_line(shared.run("get", "cli:b", check=False), FAILURE, "key 'cli:b' not found")
    assert shared.run("scan", "cli:").stdout == "cli:a\ncli:c\n"
    assert shared.run("scan", "cli:", "--limit", "1").stdout == "cli:a\n"
    assert shared.run("scan", "cli:zzz").stdout == ""
    verbose = shared.run("delete", "cli:a", "-v", "--timeout", "20")
    assert verbose.stdout == f"OK, {server}\n"
    assert "delete 'cli:a' ->" in verbose.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("delete", ""), "key must not be empty"),
        (("delete", "a b"), "contains whitespace"),
        (("delete", "a\tb"), "contains whitespace"),
        (("delete", "k" * 257), "longer than 256 bytes"),
        (("scan", "a b"), "prefix 'a b' contains whitespace"),
        (("scan", "--limit", "0"), "--limit"),
        (("scan", "--limit", "many"), "--limit"),
        (("delete",), "Missing argument"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(shared: Cluster, args: tuple[str, ...], fragment: str) -> None:
    shared.put("guard", "kept")
    assert_one_error_line(shared.run(*args, check=False), USAGE, fragment)
    assert shared.get("guard")[0] == "kept"


def test_bad_input_without_a_cluster_is_still_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli("delete", "a b", home=tmp_path / "nothing-here", check=False)
    assert_one_error_line(proc, USAGE, "contains whitespace")


def test_an_acknowledged_delete_survives_a_kill_of_its_primary(cluster: ClusterLauncher) -> None:
    c = cluster(nodes=3, rep=2)
    with Client(home=c.home, timeout=TIMEOUT) as kv:
        kv.put_many({f"gone{n}": "x" for n in range(20)} | {f"kept{n}": "y" for n in range(20)})
        primaries = set()
        for n in range(20):
            assert kv.delete(f"gone{n}") is True
            assert kv.last_server is not None
            primaries.add(kv.last_server)
    victim = sorted(primaries)[0]
    c.kill(victim)
    wait_until(lambda: c.declared_dead(victim), message=f"{victim} declared dead")
    with Client(home=c.home, timeout=TIMEOUT) as kv:
        assert kv.get_many([f"gone{n}" for n in range(20)]) == [None] * 20
        assert kv.get_many([f"kept{n}" for n in range(20)]) == ["y"] * 20
        assert list(kv.scan("gone")) == []
    assert_one_error_line(c.run("get", "gone0", check=False), FAILURE, "not found")


def test_a_scan_across_a_failover_yields_every_key_once_in_order(cluster: ClusterLauncher) -> None:
    c = cluster(nodes=4, rep=2)
    wanted = {f"scan:{n:05d}": "v" for n in range(4000)}
    events: list[str] = []
    with Client(home=c.home, timeout=TIMEOUT, on_event=events.append) as kv:
        kv.put_many(wanted)
        pages = kv.scan("scan:", page=40)
        seen = [next(pages) for _ in range(1000)]
        c.kill("server2")  # mid-scan: its next page must come from the nodes its slots fail over to
        seen += list(pages)
        assert seen == sorted(wanted)
        assert any(e.startswith("scan: server2") for e in events), events
        wait_until(lambda: c.declared_dead("server2"), message="server2 declared dead")
        assert list(kv.scan("scan:")) == sorted(wanted)
    assert c.run("scan", "scan:0399").stdout == "".join(f"scan:0399{d}\n" for d in range(10))
