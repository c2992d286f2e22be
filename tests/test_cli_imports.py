"""``kvcluster put`` and ``get`` import only what a request needs.

They are what people run over and over, so their start-up time is their
latency: each heavy module that creeps onto their path costs every call. Each
case runs the CLI's ``main`` in a fresh interpreter, once against a stand-in
cluster (a master and a node answering on local sockets, so the whole request
runs) and once against a state directory with no cluster, and then looks at
``sys.modules``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from kvcluster.core.placement import initial_table
from kvcluster.core.protocol import Reply, Request, Table, TableRequest, decode, encode
from kvcluster.core.wire import Result, Status

# Not needed by a put or a get: the status table and the Typer app (rich, typer, click), process
# control (psutil, kvcluster.supervisor), charts (matplotlib, plotext), what only nodes and masters use
# (sortedcontainers, pysyncobj), the history checker, the scanner, asyncio (which pyzmq's
# zmq.utils.monitor and zmq.asyncio import), OpenSSL (hashlib's _hashlib; slots use the built-in blake2b),
# argparse (with gettext and locale: the data commands read their arguments themselves) and shutil.
HEAVY = (
    "psutil",
    "rich",
    "typer",
    "click",
    "matplotlib",
    "plotext",
    "sortedcontainers",
    "pysyncobj",
    "asyncio",
    "_hashlib",
    "shutil",
    "argparse",
    "gettext",
    "kvcluster.supervisor",
    "kvcluster.check",
    "kvcluster.commands",
    "kvcluster.scan",
)

# kvcluster, its errors, cli and data_commands (the fast path), api (Client) and state (cluster.json),
# client, leader_link, addresses and node_sockets (the connection), core, core.wire, core.protocol, core.placement,
# and the client's core: core.client, core.client_ops and core.client_masters.
MAX_KVCLUSTER_MODULES = 17

# Runs the CLI as its entry point does, then writes every module loaded to the file named first: as it
# leaves (a data command ends with os._exit, past any ``finally``).
PROBE = """
import os
import sys

report, sys.argv = sys.argv[1], ["kvcluster", *sys.argv[2:]]
leave = os._exit


def report_and_leave(code):
    with open(report, "w") as out:
        out.write("\\n".join(sorted(sys.modules)))
    leave(code)


os._exit = report_and_leave
from kvcluster.cli import main

main()
"""


def _serve(ctx: zmq.Context[zmq.Socket[bytes]], master: zmq.Socket[bytes], node: zmq.Socket[bytes]) -> None:
    """Answer table requests with a one-node table and every operation with OK (a get reads "v")."""
    poller = zmq.Poller()
    poller.register(master, zmq.POLLIN)
    poller.register(node, zmq.POLLIN)
    table = Table(initial_table({1: node.getsockopt_string(zmq.LAST_ENDPOINT)}, rep=1))
    try:
        while True:
            for sock, _ in poller.poll():
                peer, frame = sock.recv_multipart()
                message = decode(frame)
                if isinstance(message, TableRequest):
                    sock.send_multipart([peer, encode(table)])
                elif isinstance(message, Request):
                    results = [Result(Status.OK, "v" if op.value is None else None) for op in message.ops]
                    sock.send_multipart([peer, encode(Reply(message.request_id, 1, results))])
    except zmq.ContextTerminated:
        pass
    finally:
        master.close(linger=0)
        node.close(linger=0)


@pytest.fixture(scope="module")
def master() -> Iterator[str]:
    """``HOST:PORT`` of a stand-in master whose table sends every key to a stand-in node."""
    ctx = zmq.Context()
    master, node = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    port = master.bind_to_random_port("tcp://127.0.0.1")
    node.bind_to_random_port("tcp://127.0.0.1")
    thread = threading.Thread(target=_serve, args=(ctx, master, node), daemon=True)
    thread.start()
    yield f"127.0.0.1:{port}"
    ctx.term()
    thread.join(timeout=5)


def run_probe(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    report = tmp_path / "modules.txt"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(report), *args], capture_output=True, text=True, timeout=60, check=False
    )
    return proc, report.read_text().split()


def assert_light(modules: list[str]) -> None:
    heavy = [h for h in HEAVY if any(m == h or m.startswith(f"{h}.") for m in modules)]
    assert not heavy, f"imported on the put/get path: {heavy}"
    ours = [m for m in modules if m == "kvcluster" or m.startswith("kvcluster.")]
    assert len(ours) <= MAX_KVCLUSTER_MODULES, f"{len(ours)} kvcluster modules, at most {MAX_KVCLUSTER_MODULES}: {ours}"


@pytest.mark.parametrize(
    ("args", "printed"),
    [(["put", "k", "v"], "OK, server1\n"), (["get", "k"], "k, v, server1\n")],
    ids=["put", "get"],
)
def test_a_request_imports_nothing_heavy(master: str, tmp_path: Path, args: list[str], printed: str) -> None:
    proc, modules = run_probe(tmp_path, *args, "--master", master)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, printed, "")
    assert_light(modules)


@pytest.mark.parametrize("args", [["put", "k", "v"], ["get", "k"]], ids=["put", "get"])
def test_finding_the_cluster_imports_nothing_heavy(tmp_path: Path, args: list[str]) -> None:
    proc, modules = run_probe(tmp_path, *args, "--home", str(tmp_path / "no-cluster"))
    assert proc.returncode == 1, proc.stderr
    assert "no cluster running" in proc.stderr
    assert_light(modules)
