"""The one vocabulary of faults, shared by the simulator (``sim/faults.py``) and the chaos runs (``chaos/``).

A fault kind names what happens to the processes, not how a harness makes
it happen: the simulator holds a link's messages where a chaos run adds an
nftables rule, and both call it ``isolate``. Every kind a chaos run injects
is one the simulator can plan, so a fault seen on real processes can be
tried again, seeded, in the simulator. ``CHAOS_KINDS`` lists them; the
others need a model that only the simulator has (a slow CPU, the whole
master group stopped, a power cut, messages held and released at will).
"""

from __future__ import annotations

import enum


class FaultKind(enum.StrEnum):
    """What a fault does to its victims."""

    KILL = "kill"  # SIGKILL of a node: gone for good
    DOUBLE_KILL = "double-kill"  # two nodes killed less than 0.3 s apart: the second while the first fails over
    PAUSE = "pause"  # SIGSTOP of a node, then SIGCONT (long enough, the master declares it dead meanwhile)
    STALL = "stall"  # SIGSTOP of a node for about its lease, shorter than the failure detector, then SIGCONT
    SLOW = "slow"  # every message costs the node extra CPU time
    ISOLATE = "isolate"  # a node and the masters cannot reach each other, both ways
    ONEWAY = "oneway"  # one direction between two processes is cut; the other still works
    CUT_PEERS = "cut-peers"  # a node and every other node cannot reach each other
    FLAKY = "flaky"  # a node's packets are lost at random: TCP sends them again, so its messages come late
    LATE = "late"  # a link's messages are held long, then delivered at once, after the world has moved on
    PAUSE_MASTER = "pause-master"  # SIGSTOP of the whole master group (a machine-wide stall), then SIGCONT
    LEADER_CRASH = "leader-crash"  # SIGKILL of the leading master: another leads after an election
    LEADER_PAUSE = "leader-pause"  # SIGSTOP of the leading master past an election: it must step down on SIGCONT
    LEADER_CUT = "leader-cut"  # the leader cut off from the other masters, not the nodes: it acts on for a while
    RESTART = "restart"  # a node declared dead starts again under its id, from its disk
    POWER_CUT = "power-cut"  # every process dies at once, unsynced log records may be lost; all start again
    ADD_NODE = "add-node"  # a node joins under the next id, with no data
    REMOVE_NODE = "remove-node"  # the node is drained, then stopped for good


NODE_FAULTS = (FaultKind.KILL, FaultKind.DOUBLE_KILL, FaultKind.PAUSE, FaultKind.STALL)  # signals to storage nodes
MEMBERSHIP = (FaultKind.RESTART, FaultKind.ADD_NODE, FaultKind.REMOVE_NODE)  # changes made with the CLI's commands
LEADER_FAULTS = (FaultKind.LEADER_CRASH, FaultKind.LEADER_PAUSE, FaultKind.LEADER_CUT)  # the leading master's
NETWORK_FAULTS = (FaultKind.ISOLATE, FaultKind.CUT_PEERS, FaultKind.ONEWAY, FaultKind.FLAKY, FaultKind.LEADER_CUT)
"""What ``bench chaos --partitions`` injects with nftables rules, on hosts of their own, in its order."""
CHAOS_KINDS = frozenset((*NODE_FAULTS, *MEMBERSHIP, *LEADER_FAULTS, *NETWORK_FAULTS))
DOUBLE_KILL_GAP = (0.05, 0.25)  # seconds between the two kills of a double kill
FLAKY_LOSS = (0.05, 0.3)  # the share of a flaky host's packets lost, drawn per fault
