"""A node fenced on loopback comes back by itself: the supervisor starts it again once the master has reached it.

On separate hosts tests/test_partitions.py covers the same after a cut heals (root only); here a pause stands
in for the cut, so the default suite covers the loopback case on every machine.
"""

from __future__ import annotations

import os
import signal

from conftest import ClusterLauncher, wait_until


def test_a_node_fenced_after_a_pause_comes_back_as_a_new_incarnation(cluster: ClusterLauncher) -> None:
    c = cluster(3, 2)
    c.put("kept", "before")
    old_pid = c.node("server2")["pid"]
    os.kill(old_pid, signal.SIGSTOP)
    try:
        wait_until(lambda: c.declared_dead("server2"), message="server2 declared dead while paused")
    finally:
        os.kill(old_pid, signal.SIGCONT)

    def back() -> bool:
        node = c.node("server2")
        return bool(node["alive"]) and node["pid"] != old_pid and "server2" not in c.status()["dead"]

    wait_until(back, timeout=60, message="server2 back under a new pid")
    assert c.get("kept")[0] == "before"
