"""The failures a caller of kvcluster can handle, one class each.

The CLI turns every one of them into a single line on stderr and an exit code
(see ``cli.py``); library users catch the specific class they care about.
"""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class KvclusterError(Exception):
    """Base class: a failure with a one-line message meant for a person."""

    exit_code = EXIT_FAILURE


class UsageError(KvclusterError):
    """The request itself is malformed; nothing was sent or stored."""

    exit_code = EXIT_USAGE


class InvalidKey(UsageError):
    """A key is empty, contains whitespace, or is longer than 256 bytes."""


class InvalidValue(UsageError):
    """A value contains whitespace or is larger than 1 MiB."""


class InvalidAddress(UsageError):
    """A ``HOST:PORT`` address could not be parsed."""


class UnknownNode(UsageError):
    """A node name such as ``server9`` names no node of the cluster."""


class ClusterAlreadyRunning(UsageError):
    """``up`` was asked to start a cluster where one is already running."""


class UnreadableFile(UsageError):
    """An input file cannot be opened or read; nothing from it was stored."""


class KeyNotFound(KvclusterError):
    """The key has never been written."""

    def __init__(self, key: str) -> None:
        super().__init__(f"key {key!r} not found")
        self.key = key


class ClusterNotRunning(KvclusterError):
    """No cluster state exists in the state directory."""


class NodeNotRunning(KvclusterError):
    """The named storage node is not running: it was killed or has exited."""


class NodeStillRunning(UsageError):
    """``restart`` of a node whose process is alive: kill it first."""


class ClusterUnavailable(KvclusterError):
    """The master did not answer within the deadline."""

    def __init__(self, address: str, seconds: float) -> None:
        super().__init__(f"cluster unavailable: master at {address} did not answer within {seconds:g} s")
        self.address = address


class NoLiveReplica(KvclusterError):
    """Every replica of a slot is dead, so its keys cannot be served: a key of it, or a scan, fails."""

    def __init__(self, what: str, dead: list[str]) -> None:
        super().__init__(f"no live replica for {what} ({', '.join(dead)} down)")
        self.dead = dead


class OperationTimedOut(KvclusterError):
    """The operation did not complete before its deadline; a put may or may not have been applied."""


class ProtocolError(KvclusterError):
    """A message on the wire is malformed; it is rejected and the process keeps serving."""


class StartupFailed(KvclusterError):
    """A process of the cluster did not start or did not become ready in time."""


class LoadIncomplete(KvclusterError):
    """``load`` did not store every line of its input: lines were rejected, puts failed, or it stopped partway."""


class SimulationFailed(KvclusterError):
    """A simulated schedule broke a guarantee: linearizability, a lost write, a crash or a stuck run."""


class Interrupted(KvclusterError):
    """Ctrl-C or SIGTERM stopped a command that first reported what it had done."""

    exit_code = EXIT_INTERRUPTED


class DataCorrupt(KvclusterError):
    """A node's log or snapshot holds damage that is not a cut tail: what it says cannot be trusted."""


class ClusterShapeMismatch(UsageError):
    """``up`` was asked for another shape than the cluster whose data the state directory holds."""


class LogUnwritable(KvclusterError):
    """A node refused a write because it cannot write its log (a full disk, an unwritable directory)."""


class ClusterFileInvalid(UsageError):
    """A cluster file does not parse, lacks a field or holds a value that is no cluster; nothing was started."""


class KeyRefused(KvclusterError):
    """The cluster's servers refused this client's CurveZMQ key: the handshake failed, nothing was sent."""

    def __init__(self) -> None:
        super().__init__("the cluster refused this client's key (check --cluster FILE)")


class AddressUnusable(UsageError):
    """A process cannot bind the address it was given: not on this host, or the port is taken."""


class NameInUse(KvclusterError):
    """A node asked to join under a name whose earlier incarnation the master does not hold dead."""
