"""Time ``encode`` and ``decode`` of the batch messages that dominate a loaded cluster's traffic.

Each figure is the best of ``--repeat`` runs of ``--number`` calls, in microseconds per message, for:
a REQUEST of 64 puts with 100-byte values, the REPLY to it (64 OK results), a REPLY to 64 gets (64 OK results
with 100-byte values), a REPLICATE of 64 writes with 100-byte values, and (timed with 100 times fewer calls) the
TABLE of a 7-node cluster with 3 replicas and 4096 slots. It uses only the message
constructors, ``encode`` and ``decode``, so the same script times any version of ``kvcluster.core.protocol``
that is first on the import path:

    python benchmarks/wire_codec.py
    # the msgpack version 2 (commit 06e1490), put first on the path as kvcluster.core.protocol:
    mkdir -p /tmp/kv-old/kvcluster/core && touch /tmp/kv-old/kvcluster/__init__.py \
        && touch /tmp/kv-old/kvcluster/core/__init__.py \
        && git show 06e1490:kvcluster/protocol.py > /tmp/kv-old/kvcluster/core/protocol.py \
        && git show 06e1490:kvcluster/errors.py > /tmp/kv-old/kvcluster/errors.py \
        && PYTHONPATH=/tmp/kv-old python benchmarks/wire_codec.py
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from functools import partial

from kvcluster.core import protocol, wire
from kvcluster.core.protocol import Replicate, Reply, Request, Table, decode, encode
from kvcluster.core.wire import Op, OpKind, Result, Status, TableData, Write

BATCH = 64
VALUE = "v" * 100
CLIENT = 2**62 - 1
NODES, REP, SLOTS = 7, 3, 4096
TABLE = "Table, 4096 slots"


def table() -> Table:
    """A first table as the master makes it: each slot on REP consecutive nodes."""
    replicas = [[(s + j) % NODES + 1 for j in range(REP)] for s in range(SLOTS)]
    endpoints = {n: f"tcp://127.0.0.1:{40000 + n}" for n in range(1, NODES + 1)}
    return Table(
        TableData(version=1, rep=REP, slots=SLOTS, endpoints=endpoints, dead=[], replicas=replicas, epochs=[0] * SLOTS)
    )


def samples() -> dict[str, protocol.Message]:
    keys = [f"key{i:06d}" for i in range(BATCH)]
    return {
        "Request, 64 puts": Request(
            CLIENT, 12345, [Op(OpKind.PUT, k, VALUE, i, 2, 1000 + i) for i, k in enumerate(keys)]
        ),
        "Reply, 64 put results": Reply(12345, 3, [Result(Status.OK, None) for _ in keys]),
        "Reply, 64 get results": Reply(12345, 3, [Result(Status.OK, VALUE) for _ in keys]),
        "Replicate, 64 writes": Replicate(
            77, 3, 4000, [Write(i, 2, k, VALUE, (2 << 40) | (4000 + i), CLIENT, 1000 + i) for i, k in enumerate(keys)]
        ),
        TABLE: table(),
    }


def best_us(call: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=20_000, help="calls per timed run")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs; the best is reported")
    args = parser.parse_args()
    print(f"kvcluster.core.protocol from {protocol.__file__}, PROTOCOL_VERSION {wire.PROTOCOL_VERSION}")
    print(f"{'message':<24} {'bytes':>6} {'encode us':>10} {'decode us':>10}")
    for name, message in samples().items():
        frame = encode(message)
        assert decode(frame) == message
        number = max(1, args.number // 100) if name == TABLE else args.number
        enc = best_us(partial(encode, message), number, args.repeat)
        dec = best_us(partial(decode, frame), number, args.repeat)
        print(f"{name:<24} {len(frame):>6} {enc:>10.2f} {dec:>10.2f}")


if __name__ == "__main__":
    main()
