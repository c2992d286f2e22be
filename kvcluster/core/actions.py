"""What a core asks its driver to do: the only way logic reaches the outside world.

A core never sends, sleeps or exits itself. Each event it is given
(a message, a timer, the start) appends actions to its outbox; the driver,
either the ZeroMQ runtime or the simulator, takes them and carries them out.
``Route`` is whatever the driver uses to answer the sender of a message (a
ZeroMQ envelope in a process, a simulated address in the simulator); the
core only hands it back.
"""

from __future__ import annotations

from typing import NamedTuple

from kvcluster.core.group_state import MasterState
from kvcluster.core.protocol import Message

Route = object


class ToMaster(NamedTuple):
    """Send ``message`` to the master."""

    message: Message


class ToPeer(NamedTuple):
    """Send ``message`` to storage node ``node_id`` (at ``endpoint``), in order with earlier ones."""

    node_id: int
    endpoint: str
    message: Message


class Answer(NamedTuple):
    """Send ``message`` back along ``route``; a ``durable`` one only once the changes before it are logged.

    ``arrived``: for a client's reply, when its request arrived (the driver counts the latency as it sends).
    """

    route: Route
    message: Message
    durable: bool = False
    arrived: float = 0.0


class DropPeer(NamedTuple):
    """Node ``node_id`` is dead: close whatever connects to it."""

    node_id: int


class Exit(NamedTuple):
    """Stop this process: it was fenced."""

    reason: str


class Propose(NamedTuple):
    """Append ``state`` to the master group's log; call ``MasterCore.on_committed`` with it once committed."""

    state: MasterState


Action = ToMaster | ToPeer | Answer | DropPeer | Exit | Propose
