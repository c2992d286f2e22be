"""Measure healing at the sizes users reach: time to restore rep replicas, and client throughput meanwhile.

Starts ``kvcluster up -d`` (7 nodes, rep 3 by default) in a temporary state
directory, writes ``--keys`` keys with 100-byte values, starts a client process
that runs a 50/50 get/put load and logs its completed operations per 0.5 s,
measures ``--before`` seconds of it, kills one node with SIGKILL, and polls
``status`` until no slot is short of replicas. Prints the healing time (kill to
healed), the throughput before the kill and while healing, and the number of
keys that did not read back afterwards.

    python benchmarks/heal_million.py --keys 1000000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kvcluster.client import Completion, Connection
from kvcluster.core.wire import OpKind

VALUE = "v" * 92


def cli(*args: str, home: Path) -> str:
    argv = [sys.executable, "-m", "kvcluster", *args, "--home", str(home)]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout


def load(master: str, keys: int) -> None:
    with Connection(master, deadline=60.0) as client:
        for start in range(0, keys, 50_000):
            ops = [(OpKind.PUT, f"key{i}", f"{VALUE}{i:08d}") for i in range(start, min(keys, start + 50_000))]
            failed = sum(r.completion != Completion.OK for r in client.execute(ops, batch=64, window=16))
            if failed:
                sys.exit(f"load: {failed} puts failed")


def traffic(master: str, keys: int, out: mp.Queue[tuple[float, int]], stop: mp.Event) -> None:  # type: ignore[type-arg]
    """Client load: batches of 64 ops (half gets, half puts of the same value), completed ops per 0.5 s."""
    with Connection(master, deadline=30.0) as client:
        n, done, window_start = 0, 0, time.monotonic()
        while not stop.is_set():
            ops = []
            for _ in range(256):
                i = (n * 7919) % keys
                kind = OpKind.GET if n % 2 else OpKind.PUT
                ops.append((kind, f"key{i}", None if kind == OpKind.GET else f"{VALUE}{i:08d}"))
                n += 1
            done += sum(r.completion == Completion.OK for r in client.execute(ops, batch=16, window=16))
            now = time.monotonic()
            if now - window_start >= 0.5:
                out.put((now, done))
                done, window_start = 0, now


def rate(samples: list[tuple[float, int]], start: float, end: float) -> float:
    inside = [(t, n) for t, n in samples if start < t <= end]
    if len(inside) < 2:
        return 0.0
    return sum(n for _, n in inside[1:]) / (inside[-1][0] - inside[0][0])


def wait_healed(home: Path, killed_at: float) -> float | None:
    while time.monotonic() - killed_at < 300:
        doc = json.loads(cli("status", "--json", home=home))
        if doc["dead"] and doc["under_replicated_slots"] == 0 and doc["healing"]["copies_under_way"] == 0:
            return time.monotonic()
        time.sleep(0.25)
    return None


def collect(samples_queue: mp.Queue[tuple[float, int]], worker: mp.Process) -> list[tuple[float, int]]:
    samples = []
    while worker.is_alive() or not samples_queue.empty():
        try:
            samples.append(samples_queue.get(timeout=1))
        except queue.Empty:
            break
    worker.join(timeout=30)
    return samples


def unreadable(master: str, keys: int) -> int:
    missing = 0
    with Connection(master, deadline=60.0) as client:
        for start in range(0, keys, 50_000):
            ops = [(OpKind.GET, f"key{i}", None) for i in range(start, min(keys, start + 50_000))]
            results = client.execute(ops, batch=64, window=16)
            missing += sum(
                r.completion != Completion.OK or r.value != f"{VALUE}{start + j:08d}" for j, r in enumerate(results)
            )
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--nodes", type=int, default=7)
    parser.add_argument("--rep", type=int, default=3)
    parser.add_argument("--before", type=float, default=5.0)
    parser.add_argument("--victim", default="server1")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="kvc-heal-"))
    cli("up", "--nodes", str(args.nodes), "--rep", str(args.rep), "-d", home=home)
    try:
        state = json.loads((home / "cluster.json").read_text())
        master = state["master_endpoint"].removeprefix("tcp://")
        load(master, args.keys)
        samples_queue: mp.Queue[tuple[float, int]] = mp.Queue()
        stop = mp.Event()
        worker = mp.Process(target=traffic, args=(master, args.keys, samples_queue, stop))
        worker.start()
        time.sleep(args.before)  # the load is measured for this long before the kill
        victim = next(s for s in state["servers"] if s["name"] == args.victim)
        killed_at = time.monotonic()
        os.kill(victim["pid"], 9)
        healed_at = wait_healed(home, killed_at)
        stop.set()
        samples = collect(samples_queue, worker)
        before = rate(samples, killed_at - args.before, killed_at)
        during = rate(samples, killed_at + 1.0, healed_at or time.monotonic())  # after the failover, until healed
        doc = json.loads(cli("status", "--json", home=home))
        took = None if healed_at is None else round(healed_at - killed_at, 1)
        print(f"keys: {args.keys}, nodes: {args.nodes}, rep: {args.rep}")
        print(f"healed (every slot has {args.rep} replicas) {took} s after the kill")
        print(f"slots copied: {doc['healing']['slots_done']}, keys copied: {doc['healing']['keys_copied']}")
        print(f"client ops/s before the kill: {before:,.0f}; while healing: {during:,.0f} ({during / before:.0%})")
        print(f"declared dead: {doc['dead']}")
        totals = [n["primary_slots"] + n["backup_slots"] for n in doc["nodes"] if n["alive"]]
        print(f"slots per live node: {totals} (spread {max(totals) - min(totals)})")
        print(f"keys not read back after healing: {unreadable(master, args.keys)}")
    finally:
        cli("down", home=home)


if __name__ == "__main__":
    main()
