"""What CurveZMQ costs: the same cluster-file cluster on loopback with CURVE on and off.

    python benchmarks/curve_cost.py [--keys 20000] [--rounds 2]

For each setting it writes a cluster file (``kvcluster init``, ``--insecure``
for off), starts 3 masters and 3 nodes (rep 2) with ``kvcluster master`` and
``kvcluster node``, then measures from one client process: batched puts and
gets (``Client.put_many``/``get_many``, 256 per message, 32 in flight) and
the latency of single puts. Rounds alternate between the settings so drift in
the machine's load hits both alike. Everything it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kvcluster import Client

VALUE = "x" * 100
SINGLE_PUTS = 500


def free_port() -> int:
    while True:
        port = random.randint(21000, 29000)
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1000))
            except OSError:
                continue
            return port


def kv(*args: str, cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "kvcluster", *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def measure(curve: bool, keys: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / "cluster.toml"
        masters = ",".join(f"127.0.0.1:{free_port()}" for _ in range(3))
        init = ["init", str(path), "--masters", masters, "--rep", "2", "--nodes", "3"]
        subprocess.run([sys.executable, "-m", "kvcluster", *init, *([] if curve else ["--insecure"])], check=True)
        procs = [kv("master", str(path), "--id", str(i), cwd=work) for i in (1, 2, 3)]
        procs += [kv("node", str(path), "--listen", "127.0.0.1", cwd=work) for _ in range(3)]
        try:
            with Client(cluster=path, timeout=30) as client:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        client.put("warm", "up")
                        break
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.2)
                items = {f"key{i}": VALUE for i in range(keys)}
                started = time.perf_counter()
                client.put_many(items)
                puts = keys / (time.perf_counter() - started)
                started = time.perf_counter()
                client.get_many(list(items))
                gets = keys / (time.perf_counter() - started)
                latencies = []
                for i in range(SINGLE_PUTS):
                    t0 = time.perf_counter()
                    client.put(f"single{i}", VALUE)
                    latencies.append(time.perf_counter() - t0)
            latencies.sort()
            return {
                "puts_per_s": puts,
                "gets_per_s": gets,
                "put_p50_ms": statistics.median(latencies) * 1000,
                "put_p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
            }
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for _ in range(args.rounds):
        for curve in (False, True):
            results[curve].append(measure(curve, args.keys))
    print(f"{args.keys} keys, 100-byte values, 3 masters, 3 nodes, rep 2, loopback; median of {args.rounds} rounds")
    print(f"{'':12}{'puts/s':>10}{'gets/s':>10}{'put p50 ms':>12}{'put p99 ms':>12}")
    for curve in (False, True):
        runs = results[curve]
        row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        label = "CURVE on" if curve else "CURVE off"
        print(
            f"{label:12}{row['puts_per_s']:>10,.0f}{row['gets_per_s']:>10,.0f}"
            f"{row['put_p50_ms']:>12.2f}{row['put_p99_ms']:>12.2f}"
        )


if __name__ == "__main__":
    main()
