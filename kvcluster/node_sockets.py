"""A client's sockets to the storage nodes: a DEALER each, and a monitor that says when a node is lost.

When a node's process dies, the kernel closes its TCP connections at once,
and connecting to its endpoint afterwards is refused at once. A ZeroMQ
socket monitor reports either within a millisecond (``EVENT_DISCONNECTED``,
``EVENT_CONNECT_RETRIED``), so the client can ask the master for a new table
right away instead of waiting out its try timeout. A lost connection is only
a reason to ask: the table, not the socket, decides where operations go.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import zmq

from kvcluster.core.placement import RoutingTable
from kvcluster.core.protocol import Message, NodeAnswer, decode
from kvcluster.errors import ProtocolError

if TYPE_CHECKING:
    from kvcluster.curve import Curve

LOST = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED


class NodeSockets:
    """One DEALER per node the client talks to, with its monitor, all in one poller."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], curve: Curve | None = None) -> None:
        self.ctx = ctx
        self.curve = curve
        self.poller = zmq.Poller()
        self.sockets: dict[int, zmq.Socket[bytes]] = {}
        self.endpoints: dict[int, str] = {}
        self.monitors: dict[zmq.Socket[bytes], int] = {}  # monitor socket -> node id
        self.others: set[zmq.Socket[bytes]] = set()  # sockets polled along, whose messages the caller reads

    def watch(self, sock: zmq.Socket[bytes]) -> None:
        """Poll ``sock`` too: ``poll`` names it when it is readable, and leaves reading it to the caller."""
        self.others.add(sock)
        self.poller.register(sock, zmq.POLLIN)

    def get(self, node_id: int, endpoint: str) -> zmq.Socket[bytes]:
        """The socket to ``node_id`` (at ``endpoint``), connected on first use."""
        sock = self.sockets.get(node_id)
        if sock is None:
            sock = self.ctx.socket(zmq.DEALER)
            if self.curve is not None:
                self.curve.connect_to(sock, self.curve.node)  # every node serves with the one node key
            monitor = sock.get_monitor_socket(LOST)
            sock.connect(endpoint)
            self.poller.register(sock, zmq.POLLIN)
            self.poller.register(monitor, zmq.POLLIN)
            self.sockets[node_id] = sock
            self.endpoints[node_id] = endpoint
            self.monitors[monitor] = node_id
        return sock

    def drop_stale(self, table: RoutingTable) -> None:
        """Close the sockets to nodes that died, or that restarted at another endpoint."""
        for node_id in [n for n in self.sockets if table.is_dead(n) or table.endpoint(n) != self.endpoints[n]]:
            self._close(node_id)

    def _close(self, node_id: int) -> None:
        sock = self.sockets.pop(node_id)
        del self.endpoints[node_id]
        monitor = next(m for m, n in self.monitors.items() if n == node_id)
        del self.monitors[monitor]
        for each in (sock, monitor):
            self.poller.unregister(each)
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)

    def poll(self, timeout_ms: int) -> tuple[list[Message], list[int], list[zmq.Socket[bytes]]]:
        """Wait up to ``timeout_ms``: the messages the nodes sent, the nodes whose connection was lost, and
        the watched sockets that are readable.

        A garbled frame is left out: to the caller it is a lost answer, which times out and is resent.
        """
        messages: list[Message] = []
        lost = []
        others = []
        for sock, _ in self.poller.poll(timeout_ms):
            node_id = self.monitors.get(sock)
            if sock in self.others:
                others.append(sock)
            elif node_id is None:
                messages.extend(self._drain(sock))
            elif self._drain_events(sock):
                lost.append(node_id)
        return messages, lost, others

    @staticmethod
    def _drain(sock: zmq.Socket[bytes]) -> Iterator[Message]:
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            with contextlib.suppress(ProtocolError):
                yield decode(frame, NodeAnswer)

    @staticmethod
    def _drain_events(monitor: zmq.Socket[bytes]) -> bool:
        seen = False
        while monitor.poll(0):
            # Which event it was does not matter, so it is not parsed: zmq.utils.monitor, which would, imports asyncio.
            monitor.recv_multipart(zmq.NOBLOCK)
            seen = True
        return seen
