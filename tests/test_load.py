"""``kvcluster load``: the line parser on its own, then the real CLI against real clusters.

The parser is a pure function, so its rules are checked directly: fields,
blank lines, the key and value limits of ``put``, UTF-8, duplicate keys and
line numbers. The CLI tests load files of a few thousand lines into a shared
three-node cluster and read the keys back, through ``kvcluster get`` for a
sample and through the client library for all of them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import (
    COMMAND_TIMEOUT,
    OPERATION_TIMEOUT,
    Cluster,
    ClusterLauncher,
    run_cli,
    same_process_alive,
    wait_until,
)

from kvcluster.client import Completion, Connection
from kvcluster.core.placement import replicas_for, slot_of
from kvcluster.core.protocol import MAX_KEY_BYTES, MAX_VALUE_BYTES
from kvcluster.core.wire import OpKind
from kvcluster.load_file import KEPT_PROBLEMS, MAX_CHUNK, MIN_CHUNK, LoadReport, Problem, _next_chunk, parse_lines

USAGE = 2
FAILURE = 1

# --- the parser ---


def parse(text: bytes, first_line: int = 1) -> tuple[dict[str, tuple[str, int]], list[Problem], int, int]:
    chunk = parse_lines(text.splitlines(keepends=True), first_line)
    return chunk.entries, chunk.rejected, chunk.lines, chunk.blank


def test_good_lines_with_any_whitespace_between_and_around_the_fields() -> None:
    entries, rejected, lines, blank = parse(b"a 1\nb\t2\n  c   3  \nd 4\r\ne 5")
    assert entries == {"a": ("1", 1), "b": ("2", 2), "c": ("3", 3), "d": ("4", 4), "e": ("5", 5)}
    assert (rejected, lines, blank) == ([], 5, 0)


def test_blank_lines_are_skipped_and_counted() -> None:
    entries, rejected, lines, blank = parse(b"\na 1\n   \n\t\r\nb 2\n")
    assert entries == {"a": ("1", 2), "b": ("2", 5)}
    assert (rejected, lines, blank) == ([], 5, 3)


def test_lines_without_exactly_two_fields_are_rejected_with_their_numbers() -> None:
    entries, rejected, _, _ = parse(b"a 1\nlonely\nx y z\nb 2\n")
    assert entries == {"a": ("1", 1), "b": ("2", 4)}
    assert rejected == [
        Problem(2, "expected KEY VALUE, got 1 field"),
        Problem(3, "expected KEY VALUE, got 3 fields"),
    ]


def test_the_limits_of_put_apply() -> None:
    longest_key = "é" * (MAX_KEY_BYTES // 2)  # exactly 256 bytes in UTF-8
    largest_value = "v" * MAX_VALUE_BYTES
    text = "\n".join([
        f"{longest_key} ok",
        f"{longest_key}é toolong",
        f"big {largest_value}",
        f"huge {largest_value}x",
    ]).encode()  # fmt: skip
    entries, rejected, _, _ = parse(text)
    assert entries == {longest_key: ("ok", 1), "big": (largest_value, 3)}
    assert [p.line for p in rejected] == [2, 4]
    assert "256 bytes" in rejected[0].reason
    assert "1 MiB" in rejected[1].reason


def test_lines_that_are_not_utf8_are_rejected() -> None:
    entries, rejected, _, _ = parse(b"a 1\n\xff\xfe 2\nb \xc3\n")
    assert entries == {"a": ("1", 1)}
    assert rejected == [Problem(2, "not valid UTF-8"), Problem(3, "not valid UTF-8")]


def test_unicode_whitespace_separates_fields_as_for_put() -> None:
    # A key cannot hold a no-break space either way: put rejects it, and here it separates the fields.
    entries, rejected, _, _ = parse("a\u00a0b\nkey\u2003value extra\n".encode())
    assert entries == {"a": ("b", 1)}
    assert rejected == [Problem(2, "expected KEY VALUE, got 3 fields")]


def test_the_last_line_of_a_key_wins() -> None:
    chunk = parse_lines([b"k first\n", b"other x\n", b"k second\n"])
    assert chunk.entries == {"k": ("second", 3), "other": ("x", 2)}
    assert chunk.good == 3


def test_line_numbers_continue_from_first_line() -> None:
    entries, rejected, lines, _ = parse(b"a 1\nbad\n", first_line=10_001)
    assert entries == {"a": ("1", 10_001)}
    assert rejected == [Problem(10_002, "expected KEY VALUE, got 1 field")]
    assert lines == 2
    assert parse_lines([], first_line=5).lines == 0


def test_the_summary_lists_the_first_problems_and_counts_the_rest() -> None:
    report = LoadReport("f.txt", lines=30, stored=15, rejected=15, seconds=2.0)
    report.add_problems([Problem(n, "expected KEY VALUE, got 1 field") for n in range(30, 0, -2)])
    text = report.text()
    assert text.splitlines()[0] == "stored 15 of 30 lines of f.txt in 2.0 s (8 keys/s)"
    assert "15 lines not stored (15 rejected):" in text
    assert "  line 2: expected KEY VALUE, got 1 field" in text
    assert "  line 20: " in text
    assert "  line 22: " not in text
    assert text.endswith("  ... and 5 more")
    assert report.error() == "15 of 30 lines not stored (15 rejected; the first is line 2); the other lines are stored"
    assert not report.complete


def test_the_problems_of_the_first_lines_are_kept_whatever_order_they_come_in() -> None:
    report = LoadReport("f.txt")
    report.add_problems([Problem(n, "rejected") for n in range(1, 2 * KEPT_PROBLEMS + 500, 2)])
    report.add_problems([Problem(2, "failed"), Problem(KEPT_PROBLEMS * 3, "failed")])  # a put's outcome comes later
    assert len(report.problems) == KEPT_PROBLEMS
    assert report.problems[:3] == [Problem(1, "rejected"), Problem(2, "failed"), Problem(3, "rejected")]
    assert report.problems[-1].line == 2 * KEPT_PROBLEMS - 3


@pytest.mark.parametrize(
    ("current", "puts", "seconds", "expected"),
    [
        (10_000, 10_000, 1.0, 10_000),  # a fifth of a 5 s deadline at 10,000 puts/s
        (10_000, 300_000, 1.0, 20_000),  # grows at most twice per chunk
        (10_000, 100, 10.0, MIN_CHUNK),
        (MAX_CHUNK, 10**7, 1.0, MAX_CHUNK),
        (10_000, 0, 0.5, 10_000),  # no outcome back yet: no rate to go by
    ],
)
def test_chunks_follow_the_rate(current: int, puts: int, seconds: float, expected: int) -> None:
    assert _next_chunk(current, puts, seconds, 5.0) == expected


# --- the CLI against a real cluster ---


def load(
    home: Path, *args: str, stdin: bytes | None = None, timeout: float = COMMAND_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``kvcluster load ARGS --home HOME``, feeding ``stdin`` if given."""
    argv = [sys.executable, "-m", "kvcluster", "load", *args, "--home", str(home)]
    env = {k: v for k, v in os.environ.items() if k != "KVCLUSTER_HOME"}
    proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, env=env, check=False)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def assert_one_error_line(proc: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}; stderr: {proc.stderr!r}"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def read_all(client: Connection, expected: dict[str, str]) -> dict[str, str | None]:
    """The value every key of ``expected`` reads back (None when not found)."""
    keys = sorted(expected)
    results = client.execute([(OpKind.GET, k, None) for k in keys], batch=64, window=16)
    assert all(r.completion in (Completion.OK, Completion.NOT_FOUND) for r in results)
    return {k: r.value for k, r in zip(keys, results, strict=True)}


@pytest.fixture(scope="module")
def shared(module_cluster: ClusterLauncher) -> Cluster:
    return module_cluster(nodes=3, rep=2)


@pytest.fixture(scope="module")
def reader(shared: Cluster) -> Iterator[Connection]:
    with Connection(shared.master_address(), deadline=20.0) as client:
        yield client


def stored_replicas(client: Connection) -> int:
    """Key-replicas the nodes report in their heartbeats."""
    return sum(node.keys for node in client.status().nodes)


def test_good_lines_are_stored_and_bad_ones_reported(shared: Cluster, reader: Connection, tmp_path: Path) -> None:
    good = {f"mix{i}": f"value{i}" for i in range(12_000)}  # more than one chunk: the first one is 10,000 lines
    lines = [f"{k} {v}" for k, v in good.items()]
    bad = {
        3: "two words here",
        100: "onlykey",
        5_000: "k" * 257 + " v",
        11_500: "late extra field",
        11_990: "bigvalue " + "x" * (MAX_VALUE_BYTES + 1),
    }
    for number in sorted(bad):
        lines.insert(number - 1, bad[number])
    for i in range(500):  # after a chunk boundary, each key's last line wins whichever client process stores it
        lines.append(f"mix{i} again{i}")
        good[f"mix{i}"] = f"again{i}"
    path = tmp_path / "mixed.txt"
    path.write_text("\n".join(lines) + "\n")

    proc = load(shared.home, str(path), "--timeout", OPERATION_TIMEOUT)

    error = assert_one_error_line(proc, FAILURE, "5 of 12,505 lines not stored", "5 rejected", "first is line 3")
    assert "other lines are stored" in error
    out = proc.stdout.splitlines()
    assert out[0].startswith(f"stored 12,500 of 12,505 lines of {path} in ")
    assert "5 lines not stored (5 rejected):" in out
    listed = {int(line.split(":")[0].removeprefix("  line ")): line for line in out if line.startswith("  line ")}
    assert sorted(listed) == sorted(bad)
    assert "got 3 fields" in listed[3]
    assert "got 1 field" in listed[100]
    assert "256 bytes" in listed[5_000]
    assert "got 3 fields" in listed[11_500]
    assert "1 MiB" in listed[11_990]

    assert read_all(reader, good) == good
    for key in ("mix0", "mix499", "mix500", "mix11999"):
        assert shared.get(key)[0] == good[key]
    for probe in ("two", "onlykey", "late", "bigvalue"):
        assert read_all(reader, {probe: ""}) == {probe: None}


def test_standard_input_and_json_summary(shared: Cluster, reader: Connection) -> None:
    good = {f"piped{i}": f"v{i}" for i in range(2_000)}
    text = "".join(f"{k}\t{v}\r\n" for k, v in good.items()) + "\n\n"

    proc = load(
        shared.home,
        "-",
        "--json",
        "--batch",
        "16",
        "--window",
        "4",
        "--timeout",
        OPERATION_TIMEOUT,
        stdin=text.encode(),
    )

    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no progress bar when stderr is not a terminal
    doc = json.loads(proc.stdout)
    assert doc["source"] == "standard input"
    assert (doc["lines"], doc["stored"], doc["blank"], doc["rejected"], doc["failed"]) == (2_002, 2_000, 2, 0, 0)
    assert doc["complete"] is True
    assert doc["problems"] == []
    assert doc["keys_per_second"] > 0
    assert read_all(reader, good) == good
    assert shared.get("piped1999") == ("v1999", shared.get("piped1999")[1])


def test_unreadable_file_stores_nothing(cluster: ClusterLauncher, tmp_path: Path) -> None:
    c = cluster(nodes=1, rep=1)  # one node, one replica: its key count is exact
    missing = tmp_path / "missing.txt"
    assert_one_error_line(load(c.home, str(missing)), USAGE, "cannot read", str(missing), "No such file")
    assert_one_error_line(load(c.home, str(tmp_path)), USAGE, "cannot read", "Is a directory")
    # The file is opened before the cluster is asked anything.
    assert_one_error_line(load(c.home, str(missing), "--master", "127.0.0.1:9"), USAGE, "No such file")

    with Connection(c.master_address(), deadline=20.0) as client:
        client.put("sentinel", "x")  # acknowledged after anything the loads could have sent
        wait_until(lambda: stored_replicas(client) >= 1, message="server1 reports the sentinel")
        assert stored_replicas(client) == 1, "a failed load stored something"


@pytest.fixture
def unreachable() -> Iterator[str]:
    """HOST:PORT of a port that is bound (so nobody else takes it) but where nobody listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_unreachable_master_fails_in_bounded_time(tmp_path: Path, unreachable: str) -> None:
    path = tmp_path / "data.txt"
    path.write_text("a 1\nb 2\n")
    started = time.monotonic()
    proc = load(tmp_path, str(path), "--master", unreachable, "--timeout", "2")
    elapsed = time.monotonic() - started
    assert_one_error_line(proc, FAILURE, "cluster unavailable", unreachable)
    assert proc.stdout == ""
    assert elapsed < 10, f"took {elapsed:.1f} s"


def test_no_cluster_in_the_state_directory(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("a 1\n")
    home = tmp_path / "empty"
    home.mkdir()
    assert_one_error_line(load(home, str(path)), FAILURE, "no cluster running")


def test_bad_options_are_usage_errors(tmp_path: Path) -> None:
    assert_one_error_line(load(tmp_path, "f.txt", "--batch", "0"), USAGE, "--batch")
    assert_one_error_line(load(tmp_path, "f.txt", "--master", "nonsense"), USAGE, "address")
    assert_one_error_line(run_cli("load", home=tmp_path, check=False), USAGE, "FILE")


def test_puts_to_a_dead_primary_are_reported_and_the_rest_stored(cluster: ClusterLauncher, tmp_path: Path) -> None:
    c = cluster(nodes=2, rep=1)
    c.kill("server1")
    wait_until(lambda: c.declared_dead("server1"), message="server1 listed as dead")
    keys = [f"orphan{i}" for i in range(300)]
    lost = {n for n, k in enumerate(keys, 1) if replicas_for(slot_of(k), 2, 1) == (1,)}
    assert 0 < len(lost) < len(keys)
    path = tmp_path / "data.txt"
    path.write_text("".join(f"{k} v\n" for k in keys))

    proc = load(c.home, str(path), "--json", "--timeout", OPERATION_TIMEOUT)

    assert_one_error_line(proc, FAILURE, f"{len(lost)} of 300 lines not stored", f"{len(lost)} failed")
    doc = json.loads(proc.stdout)
    assert (doc["stored"], doc["failed"]) == (300 - len(lost), len(lost))
    assert {p["line"] for p in doc["problems"]} == lost
    assert all("every replica of its slot is down" in p["reason"] for p in doc["problems"])
    with Connection(c.master_address(), deadline=20.0) as client:
        kept = {k: "v" for n, k in enumerate(keys, 1) if n not in lost}
        assert read_all(client, kept) == kept


def test_sigterm_reports_what_was_stored_and_leaves_no_process(
    shared: Cluster, reader: Connection, tmp_path: Path
) -> None:
    path = tmp_path / "big.txt"
    path.write_text("".join(f"term{i} v{i}\n" for i in range(1_000_000)))  # far more than stores in the test's time
    argv = [sys.executable, "-m", "kvcluster", "load", str(path), "--home", str(shared.home)]
    before = stored_replicas(reader)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        loader = psutil.Process(proc.pid)
        clients = wait_until(lambda: len(loader.children()) == 2 and loader.children(), message="2 client processes")
        started = [(child.pid, child.create_time()) for child in clients]
        wait_until(lambda: stored_replicas(reader) > before, message="the load stores keys")
        proc.terminate()
        out, err = proc.communicate(timeout=COMMAND_TIMEOUT)
    finally:
        proc.kill()
    assert_one_error_line(subprocess.CompletedProcess(argv, proc.returncode, out, err), 130, "interrupted")
    assert "lines stored" in err
    assert out.startswith("stored ")
    assert "stopped after line " in out
    wait_until(lambda: not any(same_process_alive(*child) for child in started), message="no client process left")
