"""The cluster file of a local cluster: ``up`` writes ``HOME/cluster.toml``, and with ``--curve`` its keys are used.

The file is the one ``kvcluster init`` writes, so ``--cluster
HOME/cluster.toml`` works against a local cluster like against any other. On
loopback CurveZMQ is off by default (``curve = false``): nothing leaves the
machine. ``up --curve`` turns it on: the supervisor writes a draft of the file
with fresh keys before it starts anything (the masters' ports are not known
yet), hands it to every master and node (``--cluster FILE``), and rewrites it
with the real endpoints, same keys, once the masters are up. Every client of
the state directory then uses the file's client key.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kvcluster.master_group import RAFT_DIR, SECRET_FILE

if TYPE_CHECKING:
    from kvcluster.clusterfile import ClusterFile
    from kvcluster.curve import Curve
    from kvcluster.state import ClusterState

CLUSTER_FILE = "cluster.toml"
DRAFT_ADDRESS = "127.0.0.1:1"  # stands in for a master's endpoint until it has bound one


def cluster_args(home: Path, curve: bool) -> list[str]:
    """The ``_master``/``_node`` options that give a process its keys: none without CurveZMQ."""
    return ["--cluster", str(home / CLUSTER_FILE)] if curve else []


def draft_keys(home: Path, masters: int, rep: int, nodes: int) -> ClusterFile:
    """Write a draft cluster file with fresh keys, CurveZMQ on, before any process starts; return it."""
    from kvcluster.clusterfile import create, write_replacing  # noqa: PLC0415

    draft = create([DRAFT_ADDRESS] * masters, rep, nodes, raft_ports=[1] * masters, curve=True)
    home.mkdir(parents=True, exist_ok=True)
    write_replacing(home / CLUSTER_FILE, draft)
    return draft


def write_cluster_file(state: ClusterState, fsync: str, keys: ClusterFile | None = None) -> None:
    """Write ``HOME/cluster.toml`` for the running cluster ``state``: its endpoints, and ``keys``' keys if given."""
    import msgspec  # noqa: PLC0415

    from kvcluster.clusterfile import create, write_replacing  # noqa: PLC0415

    addresses = [m.endpoint.removeprefix("tcp://") for m in state.masters]
    # A lone master has no Raft traffic; its own port stands in for the address the file format asks for.
    raft = state.raft_addresses or addresses
    cluster = create(
        addresses,
        state.rep,
        state.nodes,
        raft_ports=[int(a.rpartition(":")[2]) for a in raft],
        fsync=fsync,
        timing=state.timing,
        curve=state.curve,
    )
    changes: dict[str, object] = {}
    secret = Path(state.home) / RAFT_DIR / SECRET_FILE
    if secret.exists():
        changes["raft_secret"] = secret.read_text().strip()
    if keys is not None:
        masters = [
            msgspec.structs.replace(old, endpoint=new.endpoint, raft=new.raft)
            for old, new in zip(keys.masters, cluster.masters, strict=True)
        ]
        changes.update(masters=masters, node_key=keys.node_key, client_key=keys.client_key, allowed=keys.allowed)
    write_replacing(Path(state.home) / CLUSTER_FILE, msgspec.structs.replace(cluster, **changes))


def state_curve(where: ClusterState | Path) -> Curve | None:
    """The client keys for a local cluster (its state, or its home while it starts); None without CurveZMQ."""
    from kvcluster.state import ClusterState  # noqa: PLC0415

    if isinstance(where, ClusterState):
        if not where.curve:
            return None
        where = Path(where.home)
    from kvcluster.clusterfile import load  # noqa: PLC0415
    from kvcluster.curve import for_process  # noqa: PLC0415

    return for_process(load(where / CLUSTER_FILE), "client")
