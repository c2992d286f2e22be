"""The client's event loop in isolation: a reply that closes another node's socket while both wait to be read."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq
from conftest import wait_until

from kvcluster.client import Connection, _Run
from kvcluster.core.protocol import Reply, encode


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


def test_a_socket_closed_by_an_earlier_reply_of_the_same_poll_does_not_break_the_poll(context: zmq.Context) -> None:
    """Every reply of a poll is read before any is handled, so one that closes another node's socket is safe."""
    with Connection("127.0.0.1:9") as client:  # no master: the run below never asks it anything
        nodes = client.nodes
        for node_id in (1, 2):
            node = context.socket(zmq.ROUTER)
            port = node.bind_to_random_port("tcp://127.0.0.1")
            sock = client.ctx.socket(zmq.DEALER)
            sock.connect(f"tcp://127.0.0.1:{port}")
            nodes.poller.register(sock, zmq.POLLIN)
            nodes.sockets[node_id] = sock
            sock.send(b"hello")
            route, _ = node.recv_multipart()
            node.send_multipart([route, encode(Reply(request_id=99, node_id=node_id, results=[]))])
        wait_until(lambda: len(nodes.poller.poll(0)) == 2, message="both nodes' replies are waiting")

        run = _Run(client, [], batch=1, window=1)
        handled: list[int] = []

        def on_reply(reply: Reply) -> None:
            # What a refresh does when the new table names the other node dead: its socket is closed.
            handled.append(reply.node_id)
            other = nodes.sockets.pop(3 - reply.node_id, None)
            if other is not None:
                nodes.poller.unregister(other)
                other.close(linger=0)

        run._on_reply = on_reply  # type: ignore[method-assign]
        run._wait(time.monotonic())

        assert sorted(handled) == [1, 2]
