"""The cluster file: one TOML file, copied to every host and client, that says what a cluster is.

``kvcluster init`` writes it; ``kvcluster master``, ``kvcluster node`` and
every client command (``--cluster FILE``) read it. It holds each master's
client endpoint and Raft address, the shape (``rep``, ``nodes``), the timing
and fsync policy, the master group's Raft secret, and the CurveZMQ keys: a key
pair per master, one key pair shared by every storage node, one for clients,
and the allowlist of public keys the servers accept.

Why one key pair for all nodes: a node is a server to clients and to the
other nodes (replication), so whoever connects to it must know its public
key before the handshake. The routing table carries endpoints only; with one
node key a client or a node added later needs nothing but this file, and a
node joins without first publishing a key. The cost: a node's secret key is
every node's, so a stolen node host means rotating the node key pair.

Writing uses a few lines of our own rather than a TOML library: every value
is a string of the z85 alphabet, a host name, a number or a list of those, and
strings go out JSON-escaped, which TOML's basic strings accept. Reading uses
the standard library's ``tomllib``.
"""

from __future__ import annotations

import json
import os
import secrets
import tomllib
from pathlib import Path

import msgspec
import zmq

from kvcluster.addresses import parse_address
from kvcluster.core.protocol import Timing
from kvcluster.datadir import FSYNC_POLICIES
from kvcluster.errors import ClusterFileInvalid, InvalidAddress, UsageError
from kvcluster.master_group import MASTER_COUNTS
from kvcluster.state import CLUSTER_ENV

RAFT_PORT_OFFSET = 1000  # a master's Raft port is its client port plus this, unless --raft-ports names them
KEY_CHARS = 40  # a z85-encoded CurveZMQ key


class KeyPair(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    public: str
    secret: str


class MasterEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    endpoint: str  # HOST:PORT that nodes and clients connect to
    raft: str  # HOST:PORT of its Raft traffic (pysyncobj)
    public: str
    secret: str


class FileTiming(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    heartbeat: float
    lease: float
    dead_after: float


class ClusterFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A parsed, validated cluster file."""

    rep: int
    nodes: int
    fsync: str
    curve: bool
    raft_secret: str
    allowed: list[str]
    timing: FileTiming
    masters: list[MasterEntry]
    node_key: KeyPair
    client_key: KeyPair

    def master_endpoints(self) -> str:
        """Every master, comma-separated, as ``--master`` takes them."""
        return ",".join(f"tcp://{m.endpoint}" for m in self.masters)

    def raft_addresses(self) -> list[str]:
        return [m.raft for m in self.masters]

    def run_timing(self) -> Timing:
        return Timing(self.timing.heartbeat, self.timing.lease, self.timing.dead_after)

    def master(self, member_id: int) -> MasterEntry:
        if not 1 <= member_id <= len(self.masters):
            raise UsageError(f"--id {member_id} names no master of this cluster file: it lists 1..{len(self.masters)}")
        return self.masters[member_id - 1]


def _problem(cluster: ClusterFile) -> str | None:
    """Why a file that parsed is still no cluster, or None."""
    if len(cluster.masters) not in MASTER_COUNTS:
        return f"masters: {len(cluster.masters)} listed, expected 1, 3 or 5"
    if not 1 <= cluster.rep <= cluster.nodes:
        return f"rep {cluster.rep} must be in 1..nodes ({cluster.nodes})"
    if cluster.fsync not in FSYNC_POLICIES:
        return f"fsync {cluster.fsync!r} must be one of {', '.join(FSYNC_POLICIES)}"
    try:
        cluster.run_timing()
    except ValueError as exc:
        return f"timing: {exc}"
    keys = [cluster.node_key.public, cluster.node_key.secret, cluster.client_key.public, cluster.client_key.secret]
    keys += [k for m in cluster.masters for k in (m.public, m.secret)] + cluster.allowed
    if any(len(key) != KEY_CHARS for key in keys):
        return f"a CurveZMQ key is not {KEY_CHARS} z85 characters"
    try:
        for address in [m.endpoint for m in cluster.masters] + cluster.raft_addresses():
            parse_address(address)
    except InvalidAddress as exc:
        return str(exc)
    return None


def load(path: Path) -> ClusterFile:
    """Read and check the cluster file at ``path``; ``ClusterFileInvalid`` (exit 2) names what is wrong."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterFileInvalid(f"no cluster file at {path} (write one with: kvcluster init)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClusterFileInvalid(f"cannot read cluster file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ClusterFileInvalid(f"cluster file {path} is not TOML: {exc}") from None
    try:
        cluster = msgspec.convert(raw, ClusterFile)
    except msgspec.ValidationError as exc:
        raise ClusterFileInvalid(f"cluster file {path}: {exc}") from None
    problem = _problem(cluster)
    if problem is not None:
        raise ClusterFileInvalid(f"cluster file {path}: {problem}")
    return cluster


def resolve(path: Path | str | None) -> Path | None:
    """``--cluster`` if given, else ``$KVCLUSTER_CLUSTER``, else None (the state directory decides)."""
    chosen = path if path is not None else os.environ.get(CLUSTER_ENV) or None
    return Path(chosen).expanduser() if chosen is not None else None


def _keypair() -> KeyPair:
    public, secret = zmq.curve_keypair()
    return KeyPair(public.decode("ascii"), secret.decode("ascii"))


def create(
    masters: list[str],
    rep: int,
    nodes: int,
    *,
    raft_ports: list[int] | None = None,
    fsync: str = "everysec",
    timing: Timing | None = None,
    curve: bool = True,
) -> ClusterFile:
    """A new cluster with fresh keys and secret; ``masters`` are ``HOST:PORT``, Raft on PORT+1000 by default."""
    if len(masters) not in MASTER_COUNTS:
        raise UsageError(f"--masters lists {len(masters)} masters; a group has 1, 3 or 5")
    if raft_ports is not None and len(raft_ports) != len(masters):
        raise UsageError(f"--raft-ports lists {len(raft_ports)} ports for {len(masters)} masters")
    entries = []
    for index, address in enumerate(masters):
        host, port = parse_address(address).removeprefix("tcp://").rsplit(":", 1)
        raft_port = raft_ports[index] if raft_ports is not None else int(port) + RAFT_PORT_OFFSET
        if not 0 < raft_port < 65536:
            raise UsageError(f"Raft port {raft_port} of {address} is not a port (give --raft-ports)")
        pair = _keypair()
        entries.append(MasterEntry(f"{host}:{port}", f"{host}:{raft_port}", pair.public, pair.secret))
    timing = timing or Timing()
    node_key, client_key = _keypair(), _keypair()
    cluster = ClusterFile(
        rep=rep,
        nodes=nodes,
        fsync=fsync,
        curve=curve,
        raft_secret=secrets.token_hex(32),
        allowed=[m.public for m in entries] + [node_key.public, client_key.public],
        timing=FileTiming(timing.heartbeat, timing.lease, timing.dead_after),
        masters=entries,
        node_key=node_key,
        client_key=client_key,
    )
    problem = _problem(cluster)
    if problem is not None:
        raise UsageError(problem)
    return cluster


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[\n" + "".join(f"    {_value(v)},\n" for v in value) + "]"
    return json.dumps(str(value))


def render(cluster: ClusterFile) -> str:
    """The TOML text of ``cluster``: plain keys first, then its tables (TOML's order)."""
    lines = [
        "# A kvcluster cluster file: every host and client of the cluster gets a copy.",
        "# It holds secret keys and the Raft secret: keep it readable by its owner only.",
        f"rep = {cluster.rep}",
        f"nodes = {cluster.nodes}  # the first table forms once this many nodes joined",
        f"fsync = {_value(cluster.fsync)}",
        f"curve = {_value(cluster.curve)}  # CurveZMQ on every socket between masters, nodes and clients",
        f"raft_secret = {_value(cluster.raft_secret)}",
        f"allowed = {_value(cluster.allowed)}",
        "",
        "[timing]  # seconds",
        f"heartbeat = {cluster.timing.heartbeat!r}",
        f"lease = {cluster.timing.lease!r}",
        f"dead_after = {cluster.timing.dead_after!r}",
    ]
    for name, pair in (("node_key", cluster.node_key), ("client_key", cluster.client_key)):
        lines += ["", f"[{name}]", f"public = {_value(pair.public)}", f"secret = {_value(pair.secret)}"]
    for index, master in enumerate(cluster.masters, start=1):
        lines += [
            "",
            f"[[masters]]  # master{index}",
            f"endpoint = {_value(master.endpoint)}",
            f"raft = {_value(master.raft)}",
            f"public = {_value(master.public)}",
            f"secret = {_value(master.secret)}",
        ]
    return "\n".join(lines) + "\n"


def write_new(path: Path, cluster: ClusterFile) -> None:
    """Write ``cluster`` to ``path``, mode 0600, refusing to replace any existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists; not overwriting it (it may hold a running cluster's keys)") from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as out:
        out.write(render(cluster))


def write_replacing(path: Path, cluster: ClusterFile) -> None:
    """Write ``cluster`` to ``path`` (mode 0600) through a temporary file: ``up`` rewrites its own on every start."""
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(render(cluster))
    tmp.replace(path)
