"""Memory per key-replica: a real cluster's node RSS after a bulk load, and where one replica's bytes go.

Two measurements:

- ``cluster`` (the default): ``kvcluster up -d`` in a temporary state
  directory, then ``--keys`` keys with 100-byte values bulk-loaded
  (``bench.bulk``); the storage nodes' RSS summed and divided by keys x rep,
  before and after the load. This is the figure the goals are set in.
- ``--in-process``: one ``Replica`` filled with ``--keys`` writes the way a
  backup applies them, measured with ``tracemalloc`` part by part (store,
  scan index, history, dedup), so a change can be judged in seconds.

    python benchmarks/memory.py --keys 1000000
    python benchmarks/memory.py --in-process --keys 100000
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

from kvcluster.bench.bulk import bulk_load, bulk_value
from kvcluster.bench.common import key_name, rss_bytes
from kvcluster.core.placement import NUM_SLOTS, slot_of
from kvcluster.core.replica import Replica, make_version
from kvcluster.core.wire import Write

CLIENTS = 4  # bulk-load client processes, each its own dedup window


def kv(home: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "kvcluster", *args, "--home", str(home)], check=True, timeout=180)


def cluster(keys: int, nodes: int, rep: int) -> None:
    home = Path(tempfile.mkdtemp(prefix="kvc-memory-"))
    kv(home, "up", "--nodes", str(nodes), "--rep", str(rep), "-d")
    try:
        state = json.loads((home / "cluster.json").read_text())
        pids = [server["pid"] for server in state["servers"]]
        empty = rss_bytes(pids)
        took = bulk_load(state["master_endpoint"], keys, lambda _: None)
        loaded = rss_bytes(pids)
    finally:
        kv(home, "down", "--purge")
        shutil.rmtree(home, ignore_errors=True)
    replicas = keys * rep
    print(f"{keys:,} keys, {nodes} nodes, rep {rep}: loaded in {took:.1f} s")
    print(f"node RSS empty {empty / 2**20:.0f} MiB, loaded {loaded / 2**20:.0f} MiB")
    print(f"bytes per key-replica: {loaded / replicas:.0f} (added by the load: {(loaded - empty) / replicas:.0f})")


def in_process(keys: int) -> None:
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    replica = Replica(NUM_SLOTS)
    empty = tracemalloc.get_traced_memory()[0]
    for i in range(keys):
        key = key_name(i)
        slot = slot_of(key, NUM_SLOTS)
        version = make_version(1, i + 1)
        replica.apply(Write(slot, 1, key, bulk_value(i), version, i % CLIENTS, i // CLIENTS))
    gc.collect()
    total = tracemalloc.get_traced_memory()[0] - empty
    snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()
    print(f"{keys:,} keys in one replica ({NUM_SLOTS} slots): {total / keys:.1f} B per key-replica traced")
    print(f"(the empty replica: {(empty - base) / 2**20:.1f} MiB)")
    for stat in snapshot.statistics("lineno")[:8]:
        print(f"  {stat.size / keys:7.1f} B/key  {stat.traceback[0].filename}:{stat.traceback[0].lineno}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--nodes", type=int, default=7)
    parser.add_argument("--rep", type=int, default=3)
    parser.add_argument("--in-process", action="store_true", help="one replica in this process, with tracemalloc")
    args = parser.parse_args()
    if args.in_process:
        in_process(args.keys)
    else:
        cluster(args.keys, args.nodes, args.rep)


if __name__ == "__main__":
    main()
