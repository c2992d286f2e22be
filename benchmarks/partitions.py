"""How long each kind of partition keeps a key unavailable, on real processes in network namespaces (root).

    sudo python benchmarks/partitions.py --tries 5

For each case a fresh ``kvcluster up --nodes 5 --rep 3 --netns`` cluster; a client puts to one key
in a loop (each put's deadline 3 s), and the longest stretch without an acknowledged put, from the
last one before the cut on, is the unavailability. After the heal every acknowledged value of the key must
read back (the last one, or a later unacknowledged one), and the fenced nodes must come back alone.

Cases: the key's primary cut off from the masters (still reachable by clients); the primary cut
off from its backups only; a minority (the primary, one more node and one master) cut off from the
rest; the leading master cut off from the other masters but not from the nodes.
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
from pathlib import Path

from kvcluster.client import Connection
from kvcluster.errors import KvclusterError

KEY = "probe"
CASES = (
    "primary from the masters",
    "primary from its backups",
    "minority (primary, a node, a master)",
    "leader master from the other masters",
)


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvcluster", *args, "--home", str(home)], capture_output=True, text=True, check=False
    )


def status(home: Path) -> dict[str, object]:
    return dict(json.loads(cli(home, "status", "--json").stdout))


def backups_of(home: Path, primary: str) -> list[str]:
    from kvcluster.core.placement import RoutingTable, slot_of  # noqa: PLC0415
    from kvcluster.state import ClusterState  # noqa: PLC0415

    with Connection(ClusterState.load(home).master_endpoint, deadline=5.0) as client:
        table = RoutingTable(client.status().table)  # type: ignore[arg-type]
    live = table.live(slot_of(KEY, table.slots))
    return [f"server{n}" for n in live if f"server{n}" != primary]


def case_cuts(home: Path, primary: str) -> dict[str, list[str]]:
    others = [f"server{i}" for i in range(1, 6) if f"server{i}" != primary]
    leader = str(status(home)["master"]["leader"])  # type: ignore[index]
    masters = [f"master{i}" for i in range(1, 4)]
    cuts = (
        [primary, "--from", ",".join(masters)],
        [primary, "--from", ",".join(backups_of(home, primary))],
        [f"{primary},{others[0]},master1"],
        [leader, "--from", ",".join(m for m in masters if m != leader)],
    )
    return dict(zip(CASES, cuts, strict=True))


def one_try(case: str, home: Path) -> dict[str, object]:
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
        cut = case_cuts(home, primary)[case]
        started = time.monotonic()
        cli(home, "net", "partition", *cut)
        time.sleep(4.0)
        cli(home, "net", "heal")
        time.sleep(2.0)
    finally:
        stop.set()
        thread.join()
    times = [t for t, _ in acknowledged]
    during = [t for t in times if t >= started]
    last_before = max((t for t in times if t < started), default=started)
    # The longest stretch without an acknowledged put, from the last one before the cut on.
    gap = max((b - a for a, b in zip([last_before, *during], during, strict=False)), default=float("nan"))
    final = cli(home, "get", KEY).stdout.strip().split(", ")[1]
    last = acknowledged[-1][1]
    lost = int(int(final.removeprefix("v")) < int(last.removeprefix("v")))
    cli(home, "down", "--purge")
    return {"case": case, "unavailable_s": round(gap, 3), "lost": lost}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=5)
    args = parser.parse_args()
    print(f"{'case':40} {'median s':>9} {'max s':>7} {'lost':>5}")
    for case in CASES:
        gaps, lost = [], 0
        for _ in range(args.tries):
            with tempfile.TemporaryDirectory(prefix="kvcluster-cut-") as tmp:
                result = one_try(case, Path(tmp))
            gaps.append(float(result["unavailable_s"]))  # type: ignore[arg-type]
            lost += int(result["lost"])  # type: ignore[call-overload]
        print(f"{case:40} {statistics.median(gaps):>9.3f} {max(gaps):>7.3f} {lost:>5}")


if __name__ == "__main__":
    main()
