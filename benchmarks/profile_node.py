"""Profile one storage node under the throughput benchmark's load.

Starts a master and N storage nodes itself (the same hidden commands ``kvcluster up`` uses), with node 1
running in this script under cProfile, preloads the keys, runs the load from client processes and stops
everything with SIGTERM. Prints the CPU seconds of each thread of the profiled node (Python's loop thread
and libzmq's I/O thread) over the load phase, and the top functions of the loop thread.

The profile counts CPU time of the loop thread (``time.thread_time``), not wall time: on a shared machine a
wall-clock profile charges time spent descheduled to whatever call was running (typically ``send``).

    python benchmarks/profile_node.py --nodes 7 --rep 3 --ops 100000 --batch 1
    python benchmarks/profile_node.py --rep 1 --batch 64 --sort cumulative --top 40
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import pstats
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from kvcluster.bench.bulk import bulk_load
from kvcluster.bench.throughput import measure_load
from kvcluster.client import Connection
from kvcluster.core.actions import Action, ToMaster
from kvcluster.core.protocol import Heartbeat, Timing
from kvcluster.runtime import node as node_runtime

PROFILED_NODE = 1


def serve_profiled(node_id: int, master: str, out: Path) -> None:
    """The profiled node's process: the storage loop under cProfile, stats written when SIGTERM ends it.

    Also records when each heartbeat left, since a loop pass that runs longer than ``dead_after`` gets a
    healthy node declared dead; the gaps go to ``<out>.beats.json``.
    """
    beats: list[tuple[float, float]] = []  # (wall clock, loop thread's CPU clock) at each heartbeat
    carry_out = node_runtime.NodeProcess._carry_out

    def record_beat(process: node_runtime.NodeProcess, action: Action) -> None:
        if isinstance(action, ToMaster) and isinstance(action.message, Heartbeat):
            beats.append((time.monotonic(), time.thread_time()))
        carry_out(process, action)

    node_runtime.NodeProcess._carry_out = record_beat  # type: ignore[method-assign]
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    try:
        node_runtime.serve(node_id, master, Timing())
    finally:
        profiler.disable()
        profiler.dump_stats(str(out))
        gaps = [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(beats)]
        out.with_suffix(".beats.json").write_text(json.dumps({"beats": len(beats), "gaps": gaps}))


def heartbeat_summary(profile: Path) -> str:
    """Heartbeat gaps, and how much of the longest one the loop spent on the CPU rather than waiting for it."""
    data = json.loads(profile.with_suffix(".beats.json").read_text())
    gaps = sorted(data["gaps"])
    if not gaps:
        return "no heartbeat gaps recorded"
    dead_after = Timing().dead_after
    late = sum(wall > dead_after for wall, _ in gaps)
    wall, cpu = gaps[-1]
    return (
        f"{data['beats']} heartbeats, gap between them: median {statistics.median(w for w, _ in gaps) * 1000:.0f} ms, "
        f"max {wall * 1000:.0f} ms (of which {cpu * 1000:.0f} ms on the CPU); "
        f"{late} gaps longer than dead_after ({dead_after * 1000:.0f} ms)"
    )


def spawn(args: list[str], log: Path, stdout: int | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else log_file,
            stderr=log_file,
        )


def timing_args() -> list[str]:
    t = Timing()
    return ["--heartbeat", str(t.heartbeat), "--lease", str(t.lease), "--dead-after", str(t.dead_after)]


def start(nodes: int, rep: int, home: Path, profile: Path) -> tuple[str, list[subprocess.Popen[bytes]]]:
    master = spawn(
        [
            "-m",
            "kvcluster",
            "_master",
            "--nodes",
            str(nodes),
            "--rep",
            str(rep),
            "--bind",
            "127.0.0.1:0",
            *timing_args(),
        ],
        home / "master.log",
        stdout=subprocess.PIPE,
    )
    procs = [master]
    assert master.stdout is not None
    ready, _, _ = select.select([master.stdout], [], [], 30)
    line = master.stdout.readline().decode().strip() if ready else ""
    if not line.startswith("READY "):
        raise SystemExit(f"master did not start: {line!r}")
    endpoint = line.removeprefix("READY ")
    procs.append(
        spawn(
            [__file__, "--serve-node", str(PROFILED_NODE), endpoint, str(profile)], home / f"server{PROFILED_NODE}.log"
        )
    )
    procs.extend(
        spawn(
            ["-m", "kvcluster", "_node", "--id", str(n), "--master", endpoint, *timing_args()], home / f"server{n}.log"
        )
        for n in range(1, nodes + 1)
        if n != PROFILED_NODE
    )
    with Connection(endpoint, deadline=30) as client:
        deadline = time.monotonic() + 30
        while client.status().table is None:
            if time.monotonic() > deadline:
                raise SystemExit("the cluster did not publish a table")
            time.sleep(0.05)
    return endpoint, procs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def thread_cpu(pid: int) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}


def cpu_by_role(procs: list[subprocess.Popen[bytes]]) -> dict[str, float]:
    """CPU seconds so far of the master and of every node."""
    roles = {"master": procs[0]} | {f"server{i}": p for i, p in enumerate(procs[1:], start=1)}
    return {name: sum(psutil.Process(p.pid).cpu_times()[:2]) for name, p in roles.items()}


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve-node":
        serve_profiled(int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=7)
    parser.add_argument("--rep", type=int, default=3)
    parser.add_argument("--ops", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sort", default="tottime", help="pstats sort key: tottime, cumulative, ...")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, help="keep the raw profile here (default: a temporary file)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kvcluster-profile-") as tmp:
        home = Path(tmp)
        profile = args.out or home / "node.prof"
        procs: list[subprocess.Popen[bytes]] = []
        try:
            endpoint, procs = start(args.nodes, args.rep, home, profile)
            bulk_load(endpoint, args.keys, lambda _n: None)
            before = thread_cpu(procs[1].pid)
            roles_before = cpu_by_role(procs)
            run = measure_load(
                endpoint,
                rep=args.rep,
                ops=args.ops,
                keys=args.keys,
                read_ratio=0.5,
                clients=args.clients,
                window=args.window,
                batch=args.batch,
                nodes=args.nodes,
                advance=lambda _n: None,
            )
            after = thread_cpu(procs[1].pid)
            roles_after = cpu_by_role(procs)
        finally:
            stop(procs)
        print(
            f"{run.ops_per_s:,.0f} ops/s, p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms, failed {run.failed} "
            f"(nodes {args.nodes}, rep {args.rep}, batch {args.batch}, load phase {run.wall_s:.2f} s)"
        )
        spent = {name: roles_after[name] - roles_before[name] for name in roles_after}
        spent["clients"] = run.client_cpu_us_per_op * run.completed / 1e6
        print(f"CPU during the load phase, total {sum(spent.values()):.2f} s:")
        for name, seconds in spent.items():
            print(f"  {name:>8}: {seconds:6.2f} s  {seconds / args.ops * 1e6:6.1f} us per op")
        cpu = ", ".join(f"thread {tid}: {after[tid] - before.get(tid, 0.0):.2f} s" for tid in sorted(after))
        print(f"server{PROFILED_NODE} CPU during the load phase (the first thread runs the Python loop): {cpu}")
        print(f"server{PROFILED_NODE} heartbeats: {heartbeat_summary(profile)}")
        print(f"profile of server{PROFILED_NODE}'s loop thread, CPU time over its whole life:")
        pstats.Stats(str(profile)).sort_stats(args.sort).print_stats(args.top)


if __name__ == "__main__":
    main()
