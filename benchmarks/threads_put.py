"""Puts per second from threads sharing one ``kvcluster.Client``, beside ``redis-benchmark -c 16 -t set``.

Each thread calls ``client.put`` in a plain loop for ``--seconds``; the
client sends puts that wait for the same node together, so the threads get
batching without asking for it. The script starts its own cluster (``up -d``
in a temporary state directory, always stopped with ``down --purge``), and,
when redis-server and redis-benchmark are installed, measures Redis with the
matching persistence in the same run:

    python benchmarks/threads_put.py --threads 16 --nodes 5 --rep 3 --seconds 10

It prints puts/s, the mean puts per request the client sent, and Redis SET/s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kvcluster import Client
from kvcluster.bench.redis_compare import redis_available, run_redis

VALUE = "x" * 100
REDIS_REQUESTS = 300_000


def cluster_command(*args: str) -> None:
    kvcluster = str(Path(sys.executable).with_name("kvcluster"))
    subprocess.run([kvcluster, *args], check=True, capture_output=True)


def hammer(home: str, threads: int, seconds: float) -> tuple[float, float]:
    """Puts per second over ``seconds`` of ``threads`` looping on one client, and puts per request."""
    with Client(home=home, timeout=30.0) as kv:
        kv.put("warm", "up")
        core = kv._connection.core
        ops_before, requests_before = core.next_op_id, core.next_request_id
        counts = [0] * threads
        stop = time.monotonic() + seconds

        def loop(index: int) -> None:
            done = 0
            while time.monotonic() < stop:
                kv.put(f"t{index}:{done}", VALUE)
                done += 1
            counts[index] = done

        started = time.monotonic()
        workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        elapsed = time.monotonic() - started
        per_request = (core.next_op_id - ops_before) / max(1, core.next_request_id - requests_before)
    return sum(counts) / elapsed, per_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--rep", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fsync", default="everysec", choices=["always", "everysec", "no"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvcluster-threads-put-") as home:
        cluster_command("up", "-d", "--home", home, "-n", str(args.nodes), "-k", str(args.rep), "--fsync", args.fsync)
        try:
            rate, per_request = hammer(home, args.threads, args.seconds)
        finally:
            cluster_command("down", "--home", home, "--purge")
    print(f"kvcluster: {args.threads} threads, one Client, {args.nodes} nodes, rep {args.rep}, fsync {args.fsync}")
    print(f"  {rate:,.0f} puts/s, {per_request:.1f} puts per request")
    if not redis_available():
        print("redis-benchmark: not installed")
        return
    redis = run_redis(args.fsync, REDIS_REQUESTS)
    print(f"redis-benchmark -c {redis.clients} -n {redis.requests} -t set ({redis.config})")
    print(f"  {redis.set_ops_per_s:,.0f} SET/s; kvcluster / Redis = {rate / redis.set_ops_per_s:.2f}")


if __name__ == "__main__":
    main()
