"""What a run did, for people and for the determinism check: deliveries, faults, operations, core logs.

Every delivery (and every loss) is an entry. The last ``keep`` entries are
kept, unformatted, for the report of a failing run; with ``echo`` every
entry is printed as it happens (``kvcluster sim -v``). With ``digest`` every
entry, message contents included, is fed to a hash, so two runs of a seed
can be compared event for event.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from kvcluster.check.history import Operation
from kvcluster.core.protocol import (
    Commit,
    CopyDone,
    CopySlot,
    Heartbeat,
    HeartbeatAck,
    Message,
    Reconcile,
    Replicate,
    ReplicateAck,
    Reply,
    Request,
    SlotCopy,
    Table,
)
from kvcluster.core.wire import OpKind
from kvcluster.sim.network import Link

Entry = tuple[float, str, Message | None, str]  # (time, where, message, what happened)


class Trace:
    """The run's recent past, and optionally all of it (printed or hashed)."""

    def __init__(self, keep: int = 200, echo: Callable[[str], None] | None = None, digest: bool = False) -> None:
        self.recent: deque[Entry] = deque(maxlen=keep)
        self.echo = echo
        self.hash = hashlib.blake2b(digest_size=16) if digest else None
        self.entries = 0

    def delivery(self, now: float, link: Link, message: Message, what: str) -> None:
        entry = (now, link.name, message, what)
        self.recent.append(entry)
        self.entries += 1
        if self.hash is not None:
            self.hash.update(f"{now!r}|{link.name}|{message!r}|{what}\n".encode())
        if self.echo is not None:
            self.echo(format_entry(entry))

    def note(self, now: float, text: str) -> None:
        entry = (now, "", None, text)
        self.recent.append(entry)
        self.entries += 1
        if self.hash is not None:
            self.hash.update(f"{now!r}|{text}\n".encode())
        if self.echo is not None:
            self.echo(format_entry(entry))

    def operation(self, op: Operation) -> None:
        value = "" if op.value is None else f" {op.value}"
        text = f"client{op.client}: {op.kind} {op.key}{value} -> {op.outcome} (invoked {op.invoke:.4f})"
        self.note(op.complete, text)

    def digest(self) -> str:
        return "" if self.hash is None else self.hash.hexdigest()

    def lines(self) -> list[str]:
        return [format_entry(entry) for entry in self.recent]


def format_entry(entry: Entry) -> str:
    now, where, message, what = entry
    if message is None:
        return f"{now:10.6f}  {what}"
    suffix = f"  [{what}]" if what else ""
    return f"{now:10.6f}  {where:<22} {describe(message)}{suffix}"


def describe(message: Message) -> str:
    """A one-line summary of a message: enough to follow a run, short enough to read many."""
    match message:
        case Request(client, request_id, ops):
            shown = ", ".join(
                f"{OpKind(op.kind).name.lower()} {op.key}{'' if op.value is None else '=' + op.value}"
                f" e{op.epoch} #{op.op_id}"
                for op in ops
            )
            return f"Request c{client % 1000} r{request_id} [{shown}]"
        case Reply(request_id, node_id, results):
            return f"Reply r{request_id} from server{node_id} {[(int(r.status), r.value) for r in results]}"
        case Replicate(repl_id, sender, committed, writes):
            shown = ", ".join(f"{w.key}={w.value} v{w.version >> 40}.{w.version & ((1 << 40) - 1)}" for w in writes)
            return f"Replicate #{repl_id} from server{sender} commit {committed} [{shown}]"
        case Reconcile(repl_id, sender, tails):
            shown = "; ".join(f"slot {t.slot} e{t.epoch} high {t.high} {[w.value for w in t.writes]}" for t in tails)
            return f"Reconcile #{repl_id} from server{sender} [{shown}]"
        case ReplicateAck(repl_id, node_id, rejected):
            return f"ReplicateAck #{repl_id} from server{node_id}" + (f" rejected {rejected}" if rejected else "")
        case Table(data):
            return f"Table v{data.version} dead {list(data.dead)}"
        case Heartbeat(node_id, _, sent_at, version, _):
            return f"Heartbeat server{node_id} sent {sent_at:.4f} table v{version}"
        case HeartbeatAck(sent_at, version, _):
            return f"HeartbeatAck sent {sent_at:.4f} table v{version}"
        case Commit(sender, committed):
            return f"Commit from server{sender} up to {committed}"
        case CopySlot(slot, epoch, target):
            return f"CopySlot slot {slot} e{epoch} to server{target}"
        case SlotCopy(repl_id, sender, slot, epoch, high, entries, _):
            return f"SlotCopy #{repl_id} from server{sender} slot {slot} e{epoch} high {high} {len(entries)} keys"
        case CopyDone(node_id, slot, epoch, target, keys):
            return f"CopyDone server{node_id} slot {slot} e{epoch} to server{target} ({keys} keys)"
    text = repr(message)
    return text if len(text) <= 160 else text[:157] + "..."


class _ToTrace(logging.Handler):
    def __init__(self, trace: Trace, now: Callable[[], float]) -> None:
        super().__init__()
        self.trace = trace
        self.now = now

    def emit(self, record: logging.LogRecord) -> None:
        self.trace.note(self.now(), f"log {record.getMessage()}")


@contextmanager
def core_logs(trace: Trace | None, now: Callable[[], float]) -> Iterator[None]:
    """Route the cores' log records into ``trace`` (or silence them) for the duration of a run."""
    logger = logging.getLogger("kvcluster")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    handler = _ToTrace(trace, now) if trace is not None and trace.echo is not None else None
    logger.handlers = [handler] if handler is not None else []
    logger.propagate = False
    logger.setLevel(logging.INFO if handler is not None else logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers = saved[2]
