"""How long each kind of partition keeps a key unavailable, on real processes in network namespaces (root).

    sudo python benchmarks/partitions.py --tries 5
    sudo python benchmarks/partitions.py --tries 5 --only backups,nodes --heal-keys 0

For each case a fresh ``kvcluster up --nodes 5 --rep 3 --netns`` cluster; a client puts to one key
in a loop (each put's deadline 3 s), and the longest stretch without an acknowledged put, from the
last one before the cut on, is the unavailability. After the heal the key must read back its last
acknowledged value or a later one (else the try lost a write).

Cases: the key's primary cut off from the masters (still reachable by clients); the primary cut
off from its backups only; a minority (the primary, one more node and one master) cut off from the
rest; the leading master cut off from the other masters but not from the nodes; the leading master
cut off from the nodes but not from the other masters.

Then, unless ``--heal-keys 0``: with that many keys loaded, a node cut off from the masters until
it is declared dead, and the time from the heal until it is back as a new incarnation, every slot
has ``rep`` live replicas, no copy is under way and the nodes are balanced.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvcluster.client import Connection
from kvcluster.errors import KvclusterError

KEY = "probe"
NODES = [f"server{i}" for i in range(1, 6)]
MASTERS = [f"master{i}" for i in range(1, 4)]
SETTLE_LIMIT = 120.0  # seconds to wait for a healed cluster to settle before reporting it never did


def cli(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvcluster", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        check=False,
        input=stdin,
    )


def status(home: Path) -> dict[str, Any]:
    out = cli(home, "status", "--json").stdout
    return dict(json.loads(out)) if out.strip() else {}


def backups_of(home: Path, primary: str) -> list[str]:
    from kvcluster.core.placement import RoutingTable, slot_of  # noqa: PLC0415
    from kvcluster.state import ClusterState  # noqa: PLC0415

    with Connection(ClusterState.load(home).master_endpoint, deadline=5.0) as client:
        table = RoutingTable(client.status().table)  # type: ignore[arg-type]
    live = table.live(slot_of(KEY, table.slots))
    return [f"server{n}" for n in live if f"server{n}" != primary]


def leader(home: Path) -> str:
    return str(status(home)["master"]["leader"])


# Each case: its short name, what it cuts, and the `net partition` arguments given the home and the key's primary.
CASES: list[tuple[str, str, Callable[[Path, str], list[str]]]] = [
    ("masters", "primary from the masters", lambda _h, p: [p, "--from", ",".join(MASTERS)]),
    ("backups", "primary from its backups", lambda h, p: [p, "--from", ",".join(backups_of(h, p))]),
    (
        "minority",
        "minority (primary, a node, a master)",
        lambda _h, p: [f"{p},{next(n for n in NODES if n != p)},master1"],
    ),
    ("leader", "leader master from the other masters", lambda h, _p: _leader_from(h, MASTERS)),
    ("nodes", "leader master from the nodes", lambda h, _p: _leader_from(h, NODES)),
]


def _leader_from(home: Path, others: list[str]) -> list[str]:
    name = leader(home)
    return [name, "--from", ",".join(o for o in others if o != name)]


def one_try(cut_args: Callable[[Path, str], list[str]], home: Path, cut_s: float) -> dict[str, float]:
    cli(home, "up", "-d", "--nodes", "5", "--rep", "3", "--netns")
    master = json.loads((home / "cluster.json").read_text())["master_endpoint"]
    acknowledged: list[tuple[float, str]] = []
    stop = threading.Event()

    def writer() -> None:
        with Connection(master, deadline=3.0) as client:
            count = 0
            while not stop.is_set():
                value = f"v{count}"
                try:
                    client.put(KEY, value)
                    acknowledged.append((time.monotonic(), value))
                except KvclusterError:
                    pass
                count += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while not acknowledged:
            time.sleep(0.01)
        primary = cli(home, "get", KEY).stdout.strip().rsplit(", ", 1)[-1]
        cut = cut_args(home, primary)
        started = time.monotonic()
        cli(home, "net", "partition", *cut)
        time.sleep(cut_s)
        cli(home, "net", "heal")
        time.sleep(2.0)
    finally:
        stop.set()
        thread.join()
    try:
        times = [t for t, _ in acknowledged]
        during = [t for t in times if t >= started]
        last_before = max((t for t in times if t < started), default=started)
        # The longest stretch without an acknowledged put, from the last one before the cut on.
        gap = max((b - a for a, b in zip([last_before, *during], during, strict=False)), default=float("nan"))
        read = cli(home, "get", KEY)
        final = read.stdout.strip().split(", ")[1] if read.returncode == 0 else None
        if final is None:
            print(f"  the key did not read back after the heal: {read.stderr.strip()}", flush=True)
        last = acknowledged[-1][1]
        lost = int(final is None or int(final.removeprefix("v")) < int(last.removeprefix("v")))
    finally:
        cli(home, "down", "--purge")
    return {"unavailable_s": round(gap, 3), "lost": lost}


def settled(doc: dict[str, Any], victim: str, old_pid: int) -> dict[str, bool]:
    """Which of the heal's milestones ``status --json`` shows reached."""
    nodes = doc.get("nodes", [])
    back = any(n["name"] == victim and n["alive"] and n["pid"] != old_pid for n in nodes) and not doc.get("dead")
    replicas = back and doc.get("under_replicated_slots") == 0
    loads = [n["primary_slots"] + n["backup_slots"] for n in nodes]
    primaries = [n["primary_slots"] for n in nodes]
    moving = (doc.get("healing") or {}).get("copies_under_way", 1)
    balanced = replicas and not moving and max(loads) - min(loads) <= 1 and max(primaries) - min(primaries) <= 1
    return {"back": back, "replicas": replicas, "balanced": balanced}


def heal_try(home: Path, keys: int, cut_s: float) -> dict[str, float]:
    """Seconds from the heal until the fenced node is back, every slot has rep replicas, and all is balanced."""
    cli(home, "up", "-d", "--nodes", "5", "--rep", "3", "--netns")
    try:
        loaded = cli(home, "load", "-", stdin="".join(f"key{i} value{i}\n" for i in range(keys)))
        if loaded.returncode != 0:
            raise SystemExit(f"load failed: {loaded.stderr.strip()}")
        victim = "server1"
        old_pid = next(n["pid"] for n in status(home)["nodes"] if n["name"] == victim)
        cli(home, "net", "partition", victim, "--from", ",".join(MASTERS))
        time.sleep(cut_s)
        cli(home, "net", "heal")
        healed = time.monotonic()
        reached: dict[str, float] = {}
        while len(reached) < 3 and time.monotonic() - healed < SETTLE_LIMIT:
            for milestone, done in settled(status(home), victim, old_pid).items():
                if done and milestone not in reached:
                    reached[milestone] = round(time.monotonic() - healed, 2)
            time.sleep(0.2)
        return {m: reached.get(m, float("inf")) for m in ("back", "replicas", "balanced")}
    finally:
        cli(home, "down", "--purge")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--cut", type=float, default=4.0, help="seconds each cut is held")
    parser.add_argument("--only", default="", help="comma-separated case names: " + ", ".join(c[0] for c in CASES))
    parser.add_argument("--heal-keys", type=int, default=100_000, help="keys for the heal measurement; 0 skips it")
    args = parser.parse_args()
    wanted = set(filter(None, args.only.split(",")))
    results: dict[str, Any] = {}
    print(f"{'case':40} {'median s':>9} {'max s':>7} {'lost':>5}", flush=True)
    for name, title, cut_args in CASES:
        if wanted and name not in wanted:
            continue
        gaps, lost = [], 0
        for _ in range(args.tries):
            with tempfile.TemporaryDirectory(prefix="kvcluster-cut-") as tmp:
                result = one_try(cut_args, Path(tmp), args.cut)
            gaps.append(result["unavailable_s"])
            lost += int(result["lost"])
        results[name] = {"gaps_s": gaps, "median_s": statistics.median(gaps), "max_s": max(gaps), "lost": lost}
        print(f"{title:40} {statistics.median(gaps):>9.3f} {max(gaps):>7.3f} {lost:>5}", flush=True)
    if args.heal_keys:
        heals = []
        for _ in range(args.tries):
            with tempfile.TemporaryDirectory(prefix="kvcluster-heal-") as tmp:
                heals.append(heal_try(Path(tmp), args.heal_keys, args.cut))
        results["heal"] = heals
        for milestone in ("back", "replicas", "balanced"):
            figures = [h[milestone] for h in heals]
            print(f"heal at {args.heal_keys} keys: {milestone:9} median {statistics.median(figures):.2f} s, "
                  f"max {max(figures):.2f} s", flush=True)  # fmt: skip
    print(json.dumps(results))


if __name__ == "__main__":
    main()
