"""A cluster on many hosts: one master or storage node per command, each configured by the cluster file.

``kvcluster master FILE --id I`` and ``kvcluster node FILE --listen HOST``
run the same ``MasterProcess`` and ``NodeProcess`` that ``kvcluster up``
starts, in the foreground, logging to stderr, until SIGTERM or Ctrl-C. What
the file adds: the addresses, the Raft secret and the CurveZMQ keys.

A node started this way asks the acting master which id it takes (``JOIN``,
see ``core/joins.py``) before its first hello: the next free one, or the one
``--name serverN`` asks for if no live incarnation holds it. A refusal can be
a node that is dying right now, so it asks again for ``JOIN_WAIT`` seconds
and then exits with the master's reason rather than wait forever.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from kvcluster import clusterfile
from kvcluster.core.placement import node_name
from kvcluster.core.protocol import Join, JoinAnswer
from kvcluster.curve import for_process
from kvcluster.errors import ClusterUnavailable, NameInUse, UsageError
from kvcluster.master_group import master_name
from kvcluster.runtime.wal import FsyncPolicy

log = logging.getLogger(__name__)

DATA_ROOT = Path("kvcluster-data")  # relative to the working directory: masterI/ and serverN/ go under it
JOIN_WAIT = 10.0  # seconds a refused node keeps asking: long enough for a killed predecessor to be declared dead
ASK_EVERY = 2.0  # seconds one question to the masters may take before it is asked again
WAITING_NOTE_EVERY = 10.0  # seconds between log lines while no master answers


def start_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)


def run_master(path: Path, member_id: int, data_dir: Path | None) -> None:
    """Run member ``member_id`` of the file's master group until stopped."""
    from kvcluster.runtime import master  # noqa: PLC0415

    cluster = clusterfile.load(path)
    entry = cluster.master(member_id)
    directory = (data_dir or DATA_ROOT / master_name(member_id)).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    membership = None
    if len(cluster.masters) > 1:
        journal = directory / f"{master_name(member_id)}.journal"
        membership = master.Membership(member_id, cluster.raft_addresses(), cluster.raft_secret, journal)
    _check_bindable(entry.endpoint)
    _check_bindable(entry.raft)
    start_logging()
    log.info("CurveZMQ is %s", "on" if cluster.curve else "off (curve = false in the cluster file)")
    curve = for_process(cluster, "master", member_id)
    master.serve(cluster.nodes, cluster.rep, entry.endpoint, cluster.run_timing(), membership, curve)


def _check_bindable(address: str) -> None:
    """Refuse an address this host cannot listen on before anything starts (pysyncobj would retry for seconds)."""
    from kvcluster.errors import AddressUnusable  # noqa: PLC0415

    host, _, port = address.rpartition(":")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            raise AddressUnusable(f"cannot listen on {address}: {exc.strerror}") from None


@dataclass(frozen=True)
class NodeOptions:
    listen: str
    advertise: str | None
    name: str | None
    data_dir: Path | None


def split_host_port(text: str, what: str) -> tuple[str, int]:
    """``HOST`` or ``HOST:PORT`` (0 or no port: a free one)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, 0
    if not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"{what} {text!r}: expected HOST or HOST:PORT")
    return host, int(port)


def name_to_id(name: str) -> int:
    number = name.removeprefix("server")
    if not number.isdigit() or int(number) < 1:
        raise UsageError(f"--name {name!r}: expected serverN, e.g. server4")
    return int(number)


def run_node(path: Path, options: NodeOptions) -> None:
    """Run one storage node of the file's cluster until stopped."""
    from kvcluster.runtime import node  # noqa: PLC0415

    cluster = clusterfile.load(path)
    host, port = split_host_port(options.listen, "--listen")
    advertise_host, advertise_port = split_host_port(options.advertise, "--advertise") if options.advertise else ("", 0)
    if host in ("0.0.0.0", "*", "::") and not advertise_host:  # noqa: S104 - checking, not binding
        raise UsageError(f"--listen {options.listen} needs --advertise HOST: other hosts cannot connect to {host}")
    wanted = name_to_id(options.name) if options.name else 0
    curve = for_process(cluster, "node")
    policy = FsyncPolicy(cluster.fsync)
    start_logging()

    def claim(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> tuple[int, node.NodeStorage]:
        node_id = claim_id(ctx, cluster, wanted, endpoint)
        directory = (options.data_dir or DATA_ROOT / node_name(node_id)).absolute()
        log.info("joining as %s, data in %s", node_name(node_id), directory)
        return node_id, node.NodeStorage(directory, policy)

    listen = node.Listen(host, port, advertise_host, advertise_port)
    process = node.NodeProcess(
        wanted, cluster.master_endpoints(), cluster.run_timing(), listen=listen, curve=curve, claim=claim
    )
    process.run()


def claim_id(ctx: zmq.Context[zmq.Socket[bytes]], cluster: clusterfile.ClusterFile, wanted: int, endpoint: str) -> int:
    """The node id the acting master gives this process; ``NameInUse`` once refused for ``JOIN_WAIT`` seconds."""
    from kvcluster.leader_link import MasterLink  # noqa: PLC0415

    link = MasterLink(ctx, cluster.master_endpoints(), ASK_EVERY, for_process(cluster, "node"))
    try:
        refused_since: float | None = None
        next_note = time.monotonic() + WAITING_NOTE_EVERY
        while True:
            now = time.monotonic()
            try:
                answer = link.ask(Join(wanted, endpoint, os.getpid()), JoinAnswer, now + ASK_EVERY)
            except ClusterUnavailable:
                if time.monotonic() >= next_note:
                    log.info("waiting for a master of %s to answer", cluster.master_endpoints())
                    next_note = time.monotonic() + WAITING_NOTE_EVERY
                continue
            assert isinstance(answer, JoinAnswer)
            if not answer.refusal:
                return answer.node_id
            refused_since = refused_since if refused_since is not None else now
            if now - refused_since >= JOIN_WAIT:
                raise NameInUse(f"the master refused {node_name(answer.node_id)}: {answer.refusal}")
            time.sleep(1.0)
    finally:
        link.close()
