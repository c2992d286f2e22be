"""Reproduce a kill -9 right after a bulk load, at the sizes users reach.

Starts a cluster with ``kvcluster up -d`` in a temporary state directory,
writes ``--keys`` keys with 100-byte values through the client library, kills
one node with SIGKILL ``--delay`` seconds after the load ends, then watches
the master for ``--watch`` seconds and reports every node it declared dead,
how long the victim's keys were unavailable, the RSS per key-replica, and
whether every key still reads back.

    python benchmarks/million_kill.py --keys 1000000 --delay 0

Run it with another installation's interpreter (from a directory outside the
repository) to measure that version with the same script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from kvcluster.client import Completion, Connection
from kvcluster.core.wire import OpKind

VALUE = "v" * 92


def kv(*args: str, home: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "kvcluster", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout


def load(master: str, keys: int, batch: int, window: int) -> float:
    started = time.monotonic()
    with Connection(master, deadline=30.0) as client:
        for start in range(0, keys, 50_000):
            ops = [(OpKind.PUT, f"key{i}", f"{VALUE}{i:08d}") for i in range(start, min(keys, start + 50_000))]
            results = client.execute(ops, batch=batch, window=window)
            bad = sum(r.completion != Completion.OK for r in results)
            if bad:
                sys.exit(f"load: {bad} puts failed")
    return time.monotonic() - started


def rss_per_key_replica(state: dict, keys: int, rep: int) -> float:
    total = sum(psutil.Process(s["pid"]).memory_info().rss for s in state["servers"])
    return total / (keys * rep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--nodes", type=int, default=7)
    parser.add_argument("--rep", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between the end of the load and the kill")
    parser.add_argument("--watch", type=float, default=6.0)
    parser.add_argument("--victim", default="server1")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="kvc-million-"))
    kv("up", "--nodes", str(args.nodes), "--rep", str(args.rep), "-d", home=home)
    try:
        state = json.loads((home / "cluster.json").read_text())
        master = state["master_endpoint"].removeprefix("tcp://")
        took = load(master, args.keys, 64, 16)
        print(f"loaded {args.keys} keys in {took:.1f} s ({args.keys / took:,.0f} keys/s)")
        print(f"RSS per key-replica: {rss_per_key_replica(state, args.keys, args.rep):.0f} bytes")
        time.sleep(args.delay)
        victim = next(s for s in state["servers"] if s["name"] == args.victim)
        killed_at = time.monotonic()
        os.kill(victim["pid"], 9)
        probe = [f"key{i}" for i in range(0, args.keys, max(1, args.keys // 2000))]
        unavailable = None
        with Connection(master, deadline=10.0) as client:
            while time.monotonic() - killed_at < args.watch:
                results = client.execute([(OpKind.GET, k, None) for k in probe], batch=64, window=16)
                if unavailable is None and all(r.completion == Completion.OK for r in results):
                    unavailable = time.monotonic() - killed_at
            status = client.status()
        dead = [f"server{n.node_id}" for n in status.nodes if not n.alive]
        print(f"declared dead: {dead} (expected only {args.victim})")
        print(f"probe keys all readable after {unavailable if unavailable is None else round(unavailable, 3)} s")
        with Connection(master, deadline=30.0) as client:
            keys = [f"key{i}" for i in range(args.keys)]
            missing = 0
            for start in range(0, args.keys, 50_000):
                results = client.execute([(OpKind.GET, k, None) for k in keys[start : start + 50_000]], batch=64)
                missing += sum(r.completion != Completion.OK for r in results)
        print(f"keys not readable after failover: {missing}")
    finally:
        kv("down", home=home)


if __name__ == "__main__":
    main()
