"""The state directory as every command after ``up`` reads it: ``cluster.json`` and the routing-table cache.

``up`` records each process of the cluster here (``ClusterState``); a put or
get needs only the masters' endpoints and the table cache from it, so this
module stays apart from ``supervisor.py``, which starts and watches the
processes and imports what that takes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import Struct, field

from kvcluster.core.protocol import Timing
from kvcluster.errors import ClusterNotRunning, UnknownNode

if TYPE_CHECKING:
    from kvcluster.datadir import Storage

STATE_FILE = "cluster.json"
TABLE_CACHE = "table.cache"
CLUSTER_ENV = "KVCLUSTER_CLUSTER"  # names a cluster file when no --cluster or --home is given


def default_home() -> Path:
    """The per-user state directory (``KVCLUSTER_HOME`` overrides it at the CLI)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "kvcluster"


class ProcessInfo(Struct):
    """One process of the cluster as recorded in the state file."""

    name: str
    pid: int
    create_time: float
    endpoint: str = ""

    def alive(self) -> bool:
        """True while this very process (not a reuse of its PID) runs and is not a zombie."""
        import psutil  # noqa: PLC0415 - 100 ms import kept off the put/get path

        try:
            proc = psutil.Process(self.pid)
            same = abs(proc.create_time() - self.create_time) < 0.01
            return bool(same and proc.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False


class ClusterState(Struct):
    """What ``up`` records in ``cluster.json`` for every later command."""

    home: str
    nodes: int
    rep: int
    master_endpoint: str  # every master's endpoint, comma-separated, as ``--master`` takes them
    supervisor: ProcessInfo
    masters: list[ProcessInfo]
    servers: list[ProcessInfo] = field(default_factory=list)
    raft_addresses: list[str] = field(default_factory=list)  # empty for a lone master
    timing: Timing = field(default_factory=Timing)
    started_at: float = 0.0
    storage: dict[str, Any] = field(default_factory=dict)  # a ``datadir.Storage``: where the nodes keep data
    curve: bool = False  # CurveZMQ (up --curve) with the keys of HOME/cluster.toml; off by default on loopback

    def node_storage(self) -> Storage:
        from kvcluster.datadir import Storage  # noqa: PLC0415 - only up and restart need it, not a put or get

        return Storage(**self.storage)

    @staticmethod
    def path(home: Path) -> Path:
        return home / STATE_FILE

    def save(self) -> None:
        path = self.path(Path(self.home))
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.format(msgspec.json.encode(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, home: Path) -> ClusterState:
        try:
            return msgspec.json.decode(cls.path(home).read_bytes(), type=cls)
        except FileNotFoundError:
            raise ClusterNotRunning(f"no cluster running in {home} (start one with: kvcluster up)") from None
        except msgspec.DecodeError as exc:  # a ValidationError too: the file is checked against these types
            raise ClusterNotRunning(f"unreadable cluster state in {cls.path(home)}: {exc}") from None

    def server(self, name: str) -> ProcessInfo:
        return self._named(name, self.servers)

    def master(self, name: str) -> ProcessInfo:
        return self._named(name, self.masters)

    def _named(self, name: str, infos: list[ProcessInfo]) -> ProcessInfo:
        for info in infos:
            if info.name == name:
                return info
        names = ", ".join(p.name for p in [*self.masters, *self.servers])
        raise UnknownNode(f"unknown node {name!r}: this cluster has {names}")

    def master_endpoints(self) -> list[str]:
        return [m.endpoint for m in self.masters]

    def processes(self) -> list[ProcessInfo]:
        return [self.supervisor, *self.masters, *self.servers]

    def running(self) -> bool:
        return any(p.alive() for p in self.processes())
