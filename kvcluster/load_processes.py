"""The client processes of ``kvcluster load`` (a ``ClientPool``): each stores its share of every chunk, in order.

A single client process tops out well below what the cluster can take, so
``load`` hands the puts to several ``Connection`` processes. The parent reads and
checks the input; ``Loaders.send`` splits each chunk's puts by key, so all
puts of one key go to the same process, which stores its shares one after the
other: the last line of a key still wins. Each share is one ``execute`` call,
so the deadline bounds a share. Every process has a short queue of shares, so
it starts the next share the moment one is done while the parent reads ahead,
and the parent blocks (instead of reading the whole input into memory) when
the processes fall behind.

The processes are forked, before the parent has started a thread or holds a
ZeroMQ context: each builds its own, and none pays for importing kvcluster
again. (Spawned processes would also bring multiprocessing's resource
tracker, which can warn on stderr about the queues' semaphores at exit.)

Outcomes come back as the pool's progress reports, per process in the order
of its shares, and are turned back into line numbers here. The pool handles
signals and a parent that is gone (a share half written into its queue by a
parent killed with SIGKILL is never finished).
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvcluster.client_pool import ClientPool, Worker

if TYPE_CHECKING:
    from kvcluster.curve import Curve

QUEUED_SHARES = 1  # shares waiting for each process beyond the one it is storing: enough to never idle
POLL = 0.2  # seconds between looks at the processes' health while waiting on them
TRY_TIMEOUT = 2.0  # a node working through a full window answers late, not never: resending early only adds load
FAILURES = {
    "no_replica": "not stored: every replica of its slot is down",
    "timed_out": "not acknowledged within the deadline (it may or may not have been stored)",
    "invalid": "refused by the node as malformed",
}


@dataclass(frozen=True, slots=True)
class Stored:
    """The outcome of one share: how many of its lines were stored, and each failed line with its reason."""

    stored: int
    failed: list[tuple[int, str]]  # (line number, reason)


class Loaders:
    """Client processes (a forked ``ClientPool``) that store shares of chunks; use as a context manager."""

    def __init__(
        self, master: str, count: int, *, deadline: float, batch: int, window: int, curve: Curve | None = None
    ) -> None:
        import multiprocessing  # noqa: PLC0415

        ctx = multiprocessing.get_context("fork")  # see the module docstring
        self.inboxes: list[Any] = [ctx.Queue(maxsize=QUEUED_SHARES) for _ in range(count)]
        jobs = [_Job(master, deadline, batch, window, inbox, curve) for inbox in self.inboxes]
        self.pool: ClientPool[_Job, None] = ClientPool(_store_shares, jobs, start_method="fork")
        self.lines: list[deque[list[int]]] = [deque() for _ in range(count)]  # per process: each share's lines

    def __enter__(self) -> Loaders:
        self.pool.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.__exit__(*exc)
        for inbox in self.inboxes:
            inbox.cancel_join_thread()  # unread shares must not keep this process from exiting
            inbox.close()

    @property
    def pending(self) -> int:
        """Shares sent whose outcome has not come back yet."""
        return sum(len(lines) for lines in self.lines)

    def send(self, entries: dict[str, tuple[str, int]], on_stored: Callable[[Stored], None]) -> None:
        """Split a chunk's puts (key -> value, line) by key and queue each share, handling outcomes meanwhile."""
        count = len(self.inboxes)
        shares: list[tuple[list[tuple[str, str]], list[int]]] = [([], []) for _ in range(count)]
        for key, (value, line) in entries.items():
            puts, lines = shares[hash(key) % count]
            puts.append((key, value))
            lines.append(line)
        for index, (puts, lines) in enumerate(shares):
            if puts:
                while not self._offer(index, puts):
                    self.collect(on_stored, POLL)
                self.lines[index].append(lines)

    def finish(self, on_stored: Callable[[Stored], None]) -> None:
        """Wait for the outcome of every share sent, then let the processes exit."""
        while self.pending:
            self.collect(on_stored, POLL)
        for index in range(len(self.inboxes)):
            while not self._offer(index, None):
                self.collect(on_stored, POLL)

    def collect(self, on_stored: Callable[[Stored], None], wait: float) -> None:
        """Hand every outcome that has come back to ``on_stored``, waiting up to ``wait`` s for the first one."""

        def outcome(report: tuple[int, int, list[tuple[int, str]]]) -> None:
            index, stored, failed = report
            lines = self.lines[index].popleft()
            on_stored(Stored(stored, [(lines[i], FAILURES.get(reason, reason)) for i, reason in failed]))

        self.pool.poll(outcome, wait)

    def _offer(self, index: int, share: list[tuple[str, str]] | None) -> bool:
        try:
            self.inboxes[index].put(share, timeout=POLL)
        except queue.Full:
            return False
        return True


@dataclass(frozen=True, slots=True)
class _Job:
    """What a client process needs to know, handed to it when it starts."""

    master: str
    deadline: float
    batch: int
    window: int
    inbox: Any
    curve: Curve | None = None  # the client's CurveZMQ keys, for a cluster file with CURVE on


def _store_shares(job: _Job, worker: Worker) -> None:
    """Entry point of a client process: store each share from its inbox and report its outcome."""
    from kvcluster.client import Completion, Connection  # noqa: PLC0415
    from kvcluster.core.wire import OpKind  # noqa: PLC0415

    put, ok = OpKind.PUT, Completion.OK  # enum members cost a lookup each time: once per put adds up
    with Connection(job.master, deadline=job.deadline, try_timeout=TRY_TIMEOUT, curve=job.curve) as client:
        while (share := job.inbox.get()) is not None:
            outcome = client.execute([(put, key, value) for key, value in share], batch=job.batch, window=job.window)
            failed = [(i, result.completion.value) for i, result in enumerate(outcome) if result.completion is not ok]
            worker.progress((worker.index, len(share) - len(failed), failed))
