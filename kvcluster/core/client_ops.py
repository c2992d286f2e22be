"""What a client core deals in: operations and their results, the lanes that bound them, and its actions.

``core/client.py`` holds the rules; this module holds the types its drivers
and callers see (``Completion``, ``OpResult``, ``Lane``, the actions) and the
per-operation records it keeps.
"""

from __future__ import annotations

import enum

from msgspec import Struct, field

from kvcluster.core.client_masters import AskMaster
from kvcluster.core.protocol import Request, Table
from kvcluster.core.wire import OpKind

DEFAULT_DEADLINE = 5.0  # seconds an operation may take, retries included, unless its caller says otherwise
DEFAULT_TRY_TIMEOUT = 0.3  # seconds the first try of an operation waits for its answer

Spec = tuple[OpKind, str, str | None]  # (kind, key, value) of one operation


class Completion(enum.Enum):
    """How one operation ended."""

    OK = "ok"
    NOT_FOUND = "not_found"
    NO_REPLICA = "no_replica"  # every replica of the slot is dead: definitely not applied
    TIMED_OUT = "timed_out"  # the deadline passed: a put may or may not have been applied
    INVALID = "invalid"  # a node refused the operation as malformed
    UNWRITABLE = "unwritable"  # the primary cannot write its log (value: why): not applied
    UNAVAILABLE = "unavailable"  # no master gave a table before the deadline: nothing was sent


class OpResult(Struct):
    """The result of one operation: for a get the value read, and the node that served it."""

    completion: Completion = Completion.TIMED_OUT
    value: str | None = None
    node_id: int = 0
    latency: float = 0.0


class Lane(Struct, eq=False):
    """Limits shared by the operations submitted to it: per request, in flight, and in flight per node."""

    batch: int = 1
    window: int = 1
    per_node: int = 1
    flights: int = 0
    node_flights: dict[int, int] = field(default_factory=dict)

    def may_send(self, node_id: int) -> bool:
        return self.flights < self.window and self.node_flights.get(node_id, 0) < self.per_node

    def count(self, node_id: int, change: int) -> None:
        self.flights += change
        self.node_flights[node_id] = self.node_flights.get(node_id, 0) + change


class PendingOp(Struct, eq=False):
    """One submitted operation, until it completes; ``tag`` is the submitter's, handed back untouched."""

    kind: OpKind
    key: str
    value: str | None
    op_id: int
    lane: Lane
    deadline: float
    submission: Submission
    tag: object = None
    slot: int = -1
    attempts: int = 0
    first_sent: float = 0.0
    done: bool = False
    result: OpResult | None = None  # once done


class Submission(Struct, eq=False):
    """Operations submitted together, hence with one deadline; ``remaining``: how many have not completed."""

    deadline: float
    ops: list[PendingOp]
    remaining: int


class Flight(Struct):
    node_id: int
    ops: list[PendingOp]
    lanes: list[Lane]
    sent_at: float
    expires: float


class SendRequest(Struct, frozen=True):
    """Send ``request`` to node ``node_id`` at ``endpoint``."""

    node_id: int
    endpoint: str
    request: Request


class WakeAt(Struct, frozen=True):
    """Call ``on_timer`` at ``at`` (replaces any earlier wake-up)."""

    at: float


class Complete(Struct, frozen=True):
    """``ops`` have ended; each one's ``result`` says how."""

    ops: list[PendingOp]


class NewTable(Struct, frozen=True):
    """A newer table arrived: close sockets to nodes it names dead or moved, and cache it."""

    message: Table


class Note(Struct, frozen=True):
    """A routing step worth telling a curious user (what ``-v`` prints)."""

    text: str


ClientAction = SendRequest | AskMaster | WakeAt | Complete | NewTable | Note


class ClientConfig(Struct, frozen=True):
    deadline: float = DEFAULT_DEADLINE
    try_timeout: float = DEFAULT_TRY_TIMEOUT
    notes: bool = False  # emit ``Note`` actions; off, the hot path builds no strings
