"""Wall time of ``kvcluster get`` and ``put`` next to a bare interpreter and ``import zmq``, in milliseconds.

The commands run interleaved, one of each per round, so that load on the machine hits them alike;
each line gives the median and the 90th percentile over ``--runs`` rounds, the median's ratio to
that of ``import zmq``, and the median CPU time the command used (less sensitive to other load than
wall time, but blind to the time spent waiting for the cluster). Start a cluster first:

    kvcluster up --nodes 3 --rep 2 -d --home /tmp/quick-home
    python benchmarks/cli_startup.py --home /tmp/quick-home
    kvcluster down --home /tmp/quick-home

``--python`` and ``--kvcluster`` choose the interpreter and the entry point to time (by default, the ones
of this interpreter's environment), so an editable and a regular install can be compared. ``--before``
names a second entry point (another checkout's, say) whose get and put are timed in the same rounds, so a
change is measured side by side with its baseline.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", required=True, help="the state directory of a running cluster")
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--kvcluster", default=str(Path(sys.executable).with_name("kvcluster")))
    parser.add_argument("--before", help="another kvcluster entry point to time in the same rounds")
    args = parser.parse_args()
    commands = {
        "python -c pass": [args.python, "-c", "pass"],
        'python -c "import zmq"': [args.python, "-c", "import zmq"],
        # what any client of the wire protocol loads: the floor for a put or get
        "import zmq, msgspec": [args.python, "-c", "import zmq, msgspec"],
        "kvcluster get k": [args.kvcluster, "get", "k", "--home", args.home],
        "kvcluster put k v": [args.kvcluster, "put", "k", "v", "--home", args.home],
    }
    if args.before:
        commands["get k (before)"] = [args.before, "get", "k", "--home", args.home]
        commands["put k v (before)"] = [args.before, "put", "k", "v", "--home", args.home]
    for argv in commands.values():
        subprocess.run(argv, check=True, capture_output=True)  # warm the page cache
    times: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, argv in commands.items():
            used = _children_cpu()
            start = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True)
            times[name].append((time.perf_counter() - start) * 1000)
            cpu[name].append((_children_cpu() - used) * 1000)
    zmq_median = statistics.median(times['python -c "import zmq"'])
    print(f"{'command':<24} {'median ms':>10} {'p90 ms':>8} {'/ import zmq':>13} {'cpu ms':>7}")
    for name, samples in times.items():
        median = statistics.median(samples)
        p90 = statistics.quantiles(samples, n=10)[-1]
        used = statistics.median(cpu[name])
        print(f"{name:<24} {median:>10.1f} {p90:>8.1f} {median / zmq_median:>12.2f}x {used:>7.1f}")


def _children_cpu() -> float:
    """Seconds of CPU (user and system) used by the children waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
