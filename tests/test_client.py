"""The client driver in isolation: a poll that reads every reply first, and threads sharing one connection."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import zmq
from conftest import wait_until

from kvcluster.client import Connection
from kvcluster.core.placement import RoutingTable, initial_table
from kvcluster.core.protocol import Reply, encode
from kvcluster.errors import ClusterUnavailable


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


def test_a_socket_closed_by_an_earlier_reply_of_the_same_poll_does_not_break_the_poll(context: zmq.Context) -> None:
    """Every reply of a poll is read before any is handled, so one that closes another node's socket is safe."""
    with Connection("127.0.0.1:9") as client:  # no master: nothing below asks it anything
        nodes = client.nodes
        for node_id in (1, 2):
            node = context.socket(zmq.ROUTER)
            port = node.bind_to_random_port("tcp://127.0.0.1")
            sock = nodes.get(node_id, f"tcp://127.0.0.1:{port}")
            sock.send(b"hello")
            route, _ = node.recv_multipart()
            node.send_multipart([route, encode(Reply(request_id=99, node_id=node_id, results=[]))])
        ready = lambda: all(sock.poll(0) for sock in nodes.sockets.values())  # noqa: E731
        wait_until(ready, message="both nodes' replies are waiting")

        messages, _, _ = nodes.poll(0)
        # What a refresh does when the new table names a node dead: its socket is closed, after the poll.
        nodes.drop_stale(RoutingTable(initial_table({1: "tcp://elsewhere:1", 2: "tcp://elsewhere:2"}, 1, 8)))

        assert sorted(m.node_id for m in messages if isinstance(m, Reply)) == [1, 2]
        assert nodes.sockets == {}


def test_threads_sharing_a_connection_all_get_their_own_answers() -> None:
    """Without a master every operation ends unavailable at its deadline, for each thread, and none hangs."""
    with Connection("127.0.0.1:9", deadline=0.3) as client:
        errors: list[BaseException] = []

        def call() -> None:
            try:
                client.put("k", "v")
            except BaseException as error:  # noqa: BLE001 - collected for the assertion below
                errors.append(error)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads)
        assert [type(e) for e in errors] == [ClusterUnavailable] * 4
