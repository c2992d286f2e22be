"""Watching the storage node processes of this host, so the masters hear the moment one exits.

A node whose process exited (a crash, ``kill -9``, the OOM killer) can never
serve again, so there is no lease to wait out before its backups take over:
the masters need not wait ``dead_after`` of missed heartbeats, which exists
for the faults that look alike from outside but leave the process alive (a
pause, a hang, a cut network). The supervisor runs an ``ExitWatch``: a thread
holding a pidfd for every node process recorded in the cluster state, which
becomes readable the moment the process exits, child or not. It then sends
``NODE_EXITED`` to every master; the leader declares the node dead at once.
Nodes started later (``restart``, ``add-node``) are picked up when the state
file changes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import zmq

from kvcluster.addresses import parse_addresses
from kvcluster.core.protocol import NodeExited, encode

if TYPE_CHECKING:
    from kvcluster.curve import Curve

log = logging.getLogger(__name__)

RELOAD_EVERY = 0.05  # seconds between looks at the state file for nodes started since


class NodeProcess(Protocol):
    """A node process as the cluster state records it."""

    pid: int

    def alive(self) -> bool: ...


class ExitWatch:
    """A thread that tells the masters at ``master_endpoint`` when a node process exits.

    ``servers`` reads the node processes of the state file ``state``, in node id order, whenever it changes.
    """

    def __init__(
        self,
        state: Path,
        servers: Callable[[], Sequence[NodeProcess]],
        master_endpoint: str,
        curve: Curve | None = None,
    ) -> None:
        self.state = state
        self.curve = curve
        self.servers = servers
        self.master_endpoint = master_endpoint
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="exit-watch", daemon=True)
        self.watched: dict[int, tuple[int, int]] = {}  # pidfd -> (node id, pid)
        self.state_mtime = 0.0

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=2.0)

    def _run(self) -> None:
        ctx = zmq.Context()
        masters = master_sockets(ctx, self.master_endpoint, self.curve)
        poller = select.poll()
        try:
            while not self.stopping.is_set():
                self._watch_new_nodes(poller)
                for fd, _ in poller.poll(RELOAD_EVERY * 1000):
                    node_id, pid = self.watched.pop(fd)
                    poller.unregister(fd)
                    os.close(fd)
                    self._tell(masters, NodeExited(node_id, pid))
        finally:
            for fd in self.watched:
                os.close(fd)
            ctx.destroy(linger=0)

    def _tell(self, masters: list[zmq.Socket[bytes]], message: NodeExited) -> None:
        if not self.stopping.is_set():  # the cluster is being stopped: nothing to fail over
            tell(masters, message)

    def _watch_new_nodes(self, poller: select.poll) -> None:
        try:
            mtime = self.state.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self.state_mtime:
            return
        self.state_mtime = mtime
        try:
            servers = self.servers()
        except Exception:  # noqa: BLE001 - a state file being replaced: read it on the next look
            self.state_mtime = 0.0
            return
        known = {pid for _, pid in self.watched.values()}
        for node_id, info in enumerate(servers, start=1):
            if info.pid in known:
                continue
            try:
                fd = os.pidfd_open(info.pid)
            except OSError:
                continue  # already gone: its heartbeats will be missed
            if not info.alive():  # the pid was reused by another process: not ours to watch
                os.close(fd)
                continue
            self.watched[fd] = (node_id, info.pid)
            poller.register(fd, select.POLLIN)


def master_sockets(
    ctx: zmq.Context[zmq.Socket[bytes]], master_endpoint: str, curve: Curve | None
) -> list[zmq.Socket[bytes]]:
    """A DEALER to every master: ``NODE_EXITED`` goes to all of them, and the acting one acts on it."""
    masters = []
    for index, address in enumerate(parse_addresses(master_endpoint)):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.connect_to(sock, curve.masters[index])
        sock.connect(address)
        masters.append(sock)
    return masters


def tell(masters: list[zmq.Socket[bytes]], message: NodeExited) -> None:
    log.info("server%d (pid %d) exited; telling the masters", message.node_id, message.pid)
    frame = encode(message)
    for sock in masters:
        with contextlib.suppress(zmq.Again):
            sock.send(frame, zmq.NOBLOCK)


def announce_exit(master_endpoint: str, curve: Curve | None, node_id: int, pid: int) -> None:
    """Tell the masters once, from outside a watch: a node that refused to start (its data is damaged)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        tell(master_sockets(ctx, master_endpoint, curve), NodeExited(node_id, pid))
    finally:
        ctx.destroy(linger=500)  # long enough for the frames to leave; a master that is not up yet misses it
