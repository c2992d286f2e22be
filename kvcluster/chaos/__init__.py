"""Chaos runs: a Jepsen-style tester of real clusters, kept apart from the benchmarks.

A run starts a cluster, puts client processes on a few shared keys, injects
faults from a seeded schedule, and checks the recorded history with the
linearizability checker (``check/``). The fault kinds are the simulator's
(``check/faults.py``), so a fault seen here can be replayed there.

``run`` (the cluster, the clients, the loop that injects), ``injection`` (the
node faults: schedule and injection), ``masters`` (faults of the leading
master), ``membership`` (restarts, additions and removals), ``report`` (the
analysis and its tables), ``command`` (``kvcluster bench chaos``, which
``bench.register`` wires in).
"""
