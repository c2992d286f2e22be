"""CPU per operation of a storage node's state machine alone: no sockets, no other process, no log.

A ``NodeCore`` that is the only node (rep 1) is fed requests of ``--batch``
operations (half gets, half puts of 100-byte values, over ``--keys`` keys),
each followed by the end of a pass; the journal is on, as with a log, and
emptied each pass. The figure is the process CPU time per operation, the
median of ``--runs`` runs, so it moves only with the code (and the CPU), not
with what else the machine runs, unlike ``kvcluster bench throughput``.

    python benchmarks/core_cost.py --batch 1
    python benchmarks/core_cost.py --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import time

from kvcluster.bench.bulk import bulk_value
from kvcluster.core.node import NodeCore
from kvcluster.core.placement import RoutingTable, initial_table
from kvcluster.core.protocol import HeartbeatAck, Op, OpKind, Request, Table, Timing

ENDPOINT = "tcp://127.0.0.1:9001"


def one_run(ops: int, batch: int, keys: int) -> float:
    table = RoutingTable(initial_table({1: ENDPOINT}, 1))
    core = NodeCore(1, ENDPOINT, 100, Timing(lease=1e9, dead_after=2e9))
    core.replica.journal = []
    core.on_master(0.0, Table(table.data))
    core.on_master(0.0, HeartbeatAck(0.0, 1, 1))
    core.take()
    names = [f"key{i}" for i in range(keys)]
    slots = [table.slot_of(name) for name in names]
    requests = []
    for start in range(0, ops, batch):
        batch_ops = []
        for i in range(start, min(ops, start + batch)):
            k = i % keys
            kind, value = (OpKind.GET, None) if i % 2 else (OpKind.PUT, bulk_value(i))
            batch_ops.append(Op(kind, names[k], value, slots[k], 0, i))
        requests.append(Request(7, start, batch_ops))
    route = [b"client"]
    started = time.process_time()
    for request in requests:
        core.on_router(1.0, route, request)
        core.flush(1.0)
        core.take()
        core.replica.journal.clear()
    return (time.process_time() - started) / ops * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    costs = [one_run(args.ops, args.batch, args.keys) for _ in range(args.runs)]
    print(f"batch {args.batch}: {statistics.median(costs):.2f} us per op (median of {args.runs}; runs {costs})")


if __name__ == "__main__":
    main()
