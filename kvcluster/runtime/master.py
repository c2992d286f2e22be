"""The master process: ``MasterCore`` driven over one ZeroMQ ROUTER socket with the real clock."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

import zmq

from kvcluster.core.actions import Answer
from kvcluster.core.master import TICK, MasterCore
from kvcluster.core.protocol import Timing, decode, encode
from kvcluster.errors import ProtocolError

log = logging.getLogger("kvcluster.master")


class MasterProcess:
    """Runs one ``MasterCore`` until SIGTERM."""

    def __init__(self, nodes: int, rep: int, bind: str, timing: Timing) -> None:
        self.ctx = zmq.Context()
        self.ctx.linger = 0
        self.router = self.ctx.socket(zmq.ROUTER)
        host, _, port = bind.rpartition(":")
        if port == "0":
            chosen = self.router.bind_to_random_port(f"tcp://{host}")
        else:
            self.router.bind(f"tcp://{bind}")
            chosen = int(port)
        self.endpoint = f"tcp://{'127.0.0.1' if host in ('0.0.0.0', '*') else host}:{chosen}"  # noqa: S104 - matching, not binding
        self.core = MasterCore(nodes, rep, timing, os.getpid())
        self.stopping = False

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        log.info("master for %d nodes x %d replicas on %s", self.core.expected, self.core.rep, self.endpoint)
        try:
            while not self.stopping:
                self.router.poll(int(TICK * 1000))
                self._drain()
                self.core.tick(time.monotonic())
                self._act()
        finally:
            self.ctx.destroy(linger=0)
            log.info("master stopped")

    def _stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def _drain(self) -> None:
        while True:
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self.core.on_message(time.monotonic(), tuple(frames[:-1]), decode(frames[-1]))
            except ProtocolError as exc:
                log.warning("rejected a malformed message: %s", exc)
            self._act()

    def _act(self) -> None:
        for action in self.core.take():
            assert isinstance(action, Answer)
            assert isinstance(action.route, tuple)
            self.router.send_multipart([*action.route, encode(action.message)])


def serve(nodes: int, rep: int, bind: str, timing: Timing) -> None:
    """Run the master in this process; announce its endpoint on stdout once bound."""
    master = MasterProcess(nodes, rep, bind, timing)
    sys.stdout.write(f"READY {master.endpoint}\n")
    sys.stdout.flush()
    master.run()
