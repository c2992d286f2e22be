"""What a master group costs the data path: ``bench throughput`` with one master and with three, interleaved.

Runs ``kvcluster bench throughput --masters M`` for M = 1, 3, 1, 3, ... so
that both see the same machine over the same minutes, and prints ops/s per
mode and run with the median ratio of three masters to one.

    python benchmarks/masters_cost.py --pairs 3 --ops 100000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(masters: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    """Ops/s per mode (``batch x window``) of one throughput run."""
    command = [
        sys.executable, "-m", "kvcluster", "bench", "throughput", "--masters", str(masters),
        "--reps", "3", "--ops", str(args.ops), "--keys", str(args.keys),
        "--batch", "1,64", "--window", "128,16", "--json", str(out),
    ]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    runs = json.loads(out.read_text())
    return {f"batch {r['batch']} x window {r['window']}": r["ops_per_s"] for r in runs["runs"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--ops", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=100_000)
    args = parser.parse_args()
    results: dict[int, list[dict[str, float]]] = {1: [], 3: []}
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            for masters in (1, 3):
                figures = run(masters, args, Path(tmp) / f"{masters}-{pair}.json")
                results[masters].append(figures)
                load = os.getloadavg()[0]
                print(f"pair {pair + 1}, {masters} master(s): {figures} (load average {load:.1f})", flush=True)
    for mode in results[1][0]:
        one = [r[mode] for r in results[1]]
        three = [r[mode] for r in results[3]]
        ratios = [t / o for o, t in zip(one, three, strict=True)]
        print(
            f"{mode}: 1 master {statistics.median(one):,.0f} ops/s, 3 masters {statistics.median(three):,.0f} ops/s; "
            f"3/1 per pair {', '.join(f'{r:.3f}' for r in ratios)}, median {statistics.median(ratios):.3f}"
        )


if __name__ == "__main__":
    main()
