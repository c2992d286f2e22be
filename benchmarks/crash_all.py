"""Kill -9 every process of a cluster in the middle of writes, start it again, and count acknowledged writes lost.

One run per fsync policy, each on a fresh cluster in a temporary state directory:

    python benchmarks/crash_all.py --policies always,everysec,no --writes 20000

A writer puts unique keys in batches of 20 and remembers every one acknowledged; once ``--writes`` are
acknowledged, the supervisor, every master and every node get SIGKILL at once while it keeps writing.
Then ``kvcluster up`` starts the cluster again from its data and every acknowledged key is read back.
A kill of the processes is not a power cut: the page cache survives it, so every policy should lose
nothing here; only ``always`` also promises it across a power cut.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kvcluster.client import Completion, Connection
from kvcluster.core.wire import OpKind
from kvcluster.errors import ClusterUnavailable


def cli(home: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "kvcluster", *args, "--home", str(home)], capture_output=True, text=True, check=True
    )
    return proc.stdout


def pids(home: Path) -> list[int]:
    state = json.loads((home / "cluster.json").read_text())
    return [p["pid"] for p in [state["supervisor"], *state["masters"], *state["servers"]]]


def master_of(home: Path) -> str:
    return str(json.loads((home / "cluster.json").read_text())["master_endpoint"])


def run(policy: str, writes: int, nodes: int, rep: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="kvcluster-crash-") as tmp:
        home = Path(tmp)
        shape = ("--nodes", str(nodes), "--rep", str(rep), "--fsync", policy)
        cli(home, "up", "-d", *shape)
        acknowledged: dict[str, str] = {}
        stop = threading.Event()

        def write() -> None:
            with Connection(master_of(home), deadline=2.0) as client:
                batch = 0
                while not stop.is_set():
                    ops = [(OpKind.PUT, f"k{batch}-{i}", f"v{batch}-{i}") for i in range(20)]
                    try:
                        results = client.execute(ops, batch=20, window=1)
                    except ClusterUnavailable:
                        return
                    for (_, key, value), result in zip(ops, results, strict=True):
                        if result.completion == Completion.OK and value is not None:
                            acknowledged[key] = value
                    batch += 1

        writer = threading.Thread(target=write)
        writer.start()
        while len(acknowledged) < writes:
            time.sleep(0.01)
        for pid in pids(home):
            os.kill(pid, signal.SIGKILL)
        stop.set()
        writer.join()
        time.sleep(0.5)
        started = time.monotonic()
        cli(home, "up", "-d", *shape)
        up_s = time.monotonic() - started
        keys = sorted(acknowledged)
        with Connection(master_of(home), deadline=30.0) as client:
            results = client.execute([(OpKind.GET, k, None) for k in keys], batch=64, window=16)
        lost = sum(1 for k, r in zip(keys, results, strict=True) if r.value != acknowledged[k])
        cli(home, "down", "--purge")
        return {"fsync": policy, "acknowledged": len(keys), "lost": lost, "up_s": round(up_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="always,everysec,no")
    parser.add_argument("--writes", type=int, default=20_000, help="acknowledged puts before the kill")
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--rep", type=int, default=3)
    args = parser.parse_args()
    print(f"{'fsync':10} {'acknowledged':>12} {'lost':>6} {'up again (s)':>13}")
    for policy in args.policies.split(","):
        result = run(policy, args.writes, args.nodes, args.rep)
        print(f"{policy:10} {result['acknowledged']:>12,} {result['lost']:>6} {result['up_s']:>13}")


if __name__ == "__main__":
    main()
