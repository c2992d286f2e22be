"""The one pool of client processes: for ``kvcluster load``, benchmarks and chaos runs, with errors collected.

A ``ClientPool`` starts one process per job (``multiprocessing``, "spawn" by
default, so each builds its own ZeroMQ context; ``kvcluster load`` forks, before
it holds a context or a thread, so that its processes start at once). Each
process runs ``target(job, worker)`` and its result goes back to the parent on
one queue, with any ``worker.progress`` reports on the way. Benchmarks release
their processes together: each gets ready, waits on
``worker.wait_for_release()``, and the parent, the barrier's last party,
calls ``release``. A process that fails breaks the barrier and sends its error
in one line instead, and the parent raises ``WorkerError`` with it.

Also here: how the parent and its client processes take stop signals.
Ctrl-C reaches the whole process group, so the clients ignore SIGINT and
leave stopping them to the parent; the parent turns SIGTERM into
``KeyboardInterrupt`` so that every ``finally`` (pool, cluster) runs. A thread
in each client ends it when its parent is gone, wherever its main thread is
blocked: nobody would read what it does.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, NoReturn, TypeVar

from kvcluster.errors import KvclusterError

if TYPE_CHECKING:
    from multiprocessing.synchronize import Barrier

START_TIMEOUT = 120.0  # spawning client processes on a busy machine takes a while
POLL = 1.0  # seconds between looks at the processes' health while waiting on them

J = TypeVar("J")
R = TypeVar("R")


class WorkerError(KvclusterError):
    """A client process failed, or did not start or report in time."""


@dataclass(frozen=True)
class Worker:
    """A client process's side of its pool: the start barrier, and reports to the parent."""

    index: int
    barrier: Barrier
    queue: Any
    parent: int
    release_timeout: float = START_TIMEOUT

    def wait_for_release(self) -> None:
        """Block until every client of the pool is ready and the parent releases them all."""
        self.barrier.wait(self.release_timeout)

    def progress(self, done: Any) -> None:
        """Tell the parent how far this process got (operations done, or what a share came to)."""
        self.queue.put(("progress", self.index, done))


@dataclass(frozen=True)
class InlineWorker:
    """A job run in the parent itself (too small to be worth a process): released at once, progress handed on."""

    on_progress: Callable[[Any], None]

    def wait_for_release(self) -> None:
        """Nothing to wait for: nobody else takes part."""

    def progress(self, done: Any) -> None:
        self.on_progress(done)


def _serve(target: Callable[[J, Worker], object], job: J, worker: Worker) -> None:
    """Entry point of every client process: run ``target`` and hand its result, or its error, to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked copy of the parent's handler is not wanted here
    threading.Thread(target=_exit_without, args=(worker.parent,), daemon=True).start()
    try:
        worker.queue.put(("done", worker.index, target(job, worker)))
    except KvclusterError as exc:
        worker.barrier.abort()
        worker.queue.put(("error", worker.index, str(exc)))
    except Exception as exc:  # noqa: BLE001 - reported in one line by the parent, never as a traceback
        worker.barrier.abort()
        worker.queue.put(("error", worker.index, f"client process {worker.index} failed: {type(exc).__name__}: {exc}"))


def _exit_without(parent: int) -> None:
    """End this process once ``parent`` is gone."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


class ClientPool(Generic[J, R]):
    """Client processes, one per job; use as a context manager, which stops whichever still run.

    ``niceness``, when given, is set on every client process, so that the load
    they generate yields the CPU to the cluster processes on a busy machine.
    ``release_timeout`` bounds how long a ready client waits for the release:
    longer than the default when the parent does slow work (a bulk load) in
    between, so that the clients are ready the moment it ends.
    """

    def __init__(
        self,
        target: Callable[[J, Worker], R],
        jobs: Sequence[J],
        niceness: int | None = None,
        release_timeout: float = START_TIMEOUT,
        start_method: Literal["spawn", "fork"] = "spawn",
    ) -> None:
        import multiprocessing  # noqa: PLC0415

        ctx = multiprocessing.get_context("fork") if start_method == "fork" else multiprocessing.get_context("spawn")
        self.barrier = ctx.Barrier(len(jobs) + 1)
        self.queue = ctx.Queue()
        self.niceness = niceness
        self.release_timeout = release_timeout
        self.procs = [
            ctx.Process(
                target=_serve,
                args=(target, job, Worker(i, self.barrier, self.queue, os.getpid(), release_timeout)),
                daemon=True,
            )
            for i, job in enumerate(jobs)
        ]
        self.results: dict[int, R] = {}

    def __enter__(self) -> ClientPool[J, R]:
        for proc in self.procs:
            proc.start()
            if self.niceness is not None:
                assert proc.pid is not None
                os.setpriority(os.PRIO_PROCESS, proc.pid, self.niceness)
        return self

    def __exit__(self, *_exc: object) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.queue.cancel_join_thread()  # unread reports must not keep this process from exiting
        self.queue.close()

    def release(self) -> float:
        """Wait until every client is ready, release them all, and return the release time."""
        try:
            self.barrier.wait(self.release_timeout)
        except threading.BrokenBarrierError:
            self._raise_reported_error("a client process failed to start")
        return time.monotonic()

    def collect(self, on_progress: Callable[[Any], None] | None = None, timeout: float | None = None) -> list[R]:
        """Every client's result, in the order of the jobs; a failed client, or ``timeout`` passing, fails the run."""
        deadline = time.monotonic() + timeout if timeout is not None else None
        while len(self.results) < len(self.procs):
            if deadline is not None and time.monotonic() > deadline:
                raise WorkerError(f"client processes did not report within {timeout:g} s")
            self.poll(on_progress, POLL)
        return [self.results[i] for i in range(len(self.procs))]

    def poll(self, on_progress: Callable[[Any], None] | None, wait: float) -> None:
        """Handle every report that has come in, waiting up to ``wait`` s for the first one."""
        until = time.monotonic() + wait
        while True:
            try:
                kind, index, payload = self.queue.get(timeout=max(0.0, until - time.monotonic()))
            except queue.Empty:
                self._check_alive()
                return
            if kind == "progress" and on_progress is not None:
                on_progress(payload)
            elif kind == "done":
                self.results[index] = payload
            elif kind == "error":
                raise WorkerError(payload)
            until = time.monotonic()  # take whatever else is there, without waiting again

    def _check_alive(self) -> None:
        dead = [p for i, p in enumerate(self.procs) if i not in self.results and not p.is_alive()]
        if dead:
            self._raise_reported_error(f"a client process exited with code {dead[0].exitcode}")

    def _raise_reported_error(self, fallback: str) -> NoReturn:
        """Raise the error a client reported (it may still be on its way), else ``fallback``."""
        try:
            while True:
                kind, _, payload = self.queue.get(timeout=2.0)
                if kind == "error":
                    raise WorkerError(payload)
        except queue.Empty:
            raise WorkerError(fallback) from None


@contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into ``KeyboardInterrupt`` so every ``finally`` (cluster stop, client reaping) runs."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
