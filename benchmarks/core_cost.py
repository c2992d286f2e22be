"""CPU per operation of a storage node's state machine alone: no sockets, no other process, no log.

A ``NodeCore`` that is the only node (rep 1) is fed requests of ``--batch``
operations (half gets, half puts of 100-byte values, over ``--keys`` keys),
each followed by the end of a pass; the journal is on, as with a log, and
emptied each pass. With ``--backup`` the node is instead the backup of a
two-node table and is fed ``REPLICATE`` messages of ``--batch`` puts from its
primary, each carrying a commit watermark; the figure is then per replicated
write. It is the process CPU time, the median of ``--runs`` runs, so it moves
only with the code (and the CPU), not with what else the machine runs, unlike
``kvcluster bench throughput``.

    python benchmarks/core_cost.py --batch 1
    python benchmarks/core_cost.py --batch 64
    python benchmarks/core_cost.py --backup --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import time

from kvcluster.bench.bulk import bulk_value
from kvcluster.core.node import NodeCore
from kvcluster.core.placement import RoutingTable, initial_table
from kvcluster.core.protocol import HeartbeatAck, Message, Replicate, Request, Table, Timing
from kvcluster.core.replica import make_version
from kvcluster.core.wire import Op, OpKind, Write

ENDPOINTS = {1: "tcp://127.0.0.1:9001", 2: "tcp://127.0.0.1:9002"}


def serving_core(node_id: int, nodes: int) -> tuple[NodeCore, RoutingTable]:
    """Node ``node_id`` of a table of ``nodes`` nodes, with a lease that never runs out and its journal on."""
    table = RoutingTable(initial_table({n: ENDPOINTS[n] for n in range(1, nodes + 1)}, nodes))
    core = NodeCore(node_id, ENDPOINTS[node_id], 100, Timing(lease=1e9, dead_after=2e9))
    core.replica.journal = []
    core.on_master(0.0, Table(table.data))
    core.on_master(0.0, HeartbeatAck(0.0, 1, 1))
    core.take()
    return core, table


def timed(core: NodeCore, messages: list[Message], ops: int) -> float:
    """Feed ``messages`` one pass each; the CPU microseconds per operation."""
    journal = core.replica.journal
    assert journal is not None
    started = time.process_time()
    for message in messages:
        core.on_router(1.0, [b"sender"], message)
        core.flush(1.0)
        core.take()
        journal.clear()
    return (time.process_time() - started) / ops * 1e6


def primary_run(ops: int, batch: int, keys: int) -> float:
    core, table = serving_core(1, 1)
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
    return timed(core, list(requests), ops)


def backup_run(ops: int, batch: int, keys: int) -> float:
    core, table = serving_core(2, 2)
    slots = [s for s in range(table.slots) if table.primary(s) == 1]
    messages: list[Message] = []
    for start in range(0, ops, batch):
        writes = [
            Write(slots[i % len(slots)], 0, f"key{i % keys}", bulk_value(i), make_version(0, i + 1), 7, i)
            for i in range(start, min(ops, start + batch))
        ]
        messages.append(Replicate(start, 1, start, writes))  # the writes before this message are committed
    return timed(core, messages, ops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backup", action="store_true", help="replicated puts at a backup instead of requests")
    args = parser.parse_args()
    run = backup_run if args.backup else primary_run
    costs = sorted(round(run(args.ops, args.batch, args.keys), 2) for _ in range(args.runs))
    role = "replicated write at a backup" if args.backup else "op at a primary"
    print(f"batch {args.batch}: {statistics.median(costs):.2f} us per {role} (median of {args.runs}: {costs})")


if __name__ == "__main__":
    main()
