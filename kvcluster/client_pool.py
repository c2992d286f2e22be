"""Client processes for benchmarks and chaos runs: started together, released by one barrier, collected with errors.

A ``ClientPool`` spawns one process per job (``multiprocessing`` with the
"spawn" context, so each one builds its own ZeroMQ context and ``Client``).
Each process runs ``target(job, worker)``: it gets ready (connects, fetches
the table), waits on ``worker.wait_for_release()``, does its share of the
load and returns its result, which goes back to the parent on a queue. A
process that fails breaks the barrier and sends its traceback instead, and
the parent raises ``WorkerError`` with its last line.

Also here: how the parent and its client processes take stop signals.
Ctrl-C reaches the whole process group, so the clients ignore SIGINT and
leave stopping them to the parent; the parent turns SIGTERM into
``KeyboardInterrupt`` so that every ``finally`` (pool, cluster) runs.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

from kvcluster.errors import KvclusterError

if TYPE_CHECKING:
    from multiprocessing.synchronize import Barrier

START_TIMEOUT = 120.0  # spawning client processes on a busy machine takes a while

J = TypeVar("J")
R = TypeVar("R")


class WorkerError(KvclusterError):
    """A client process failed, or did not start or report in time."""


@dataclass(frozen=True)
class Worker:
    """A client process's side of its pool: the start barrier, and progress reports to the parent."""

    index: int
    barrier: Barrier
    queue: Any
    release_timeout: float = START_TIMEOUT

    def wait_for_release(self) -> None:
        """Block until every client of the pool is ready and the parent releases them all."""
        self.barrier.wait(self.release_timeout)

    def progress(self, done: int) -> None:
        """Tell the parent that ``done`` more operations are finished."""
        self.queue.put(("progress", self.index, done))


def _serve(target: Callable[[J, Worker], object], job: J, worker: Worker) -> None:
    """Entry point of every client process: run ``target`` and hand its result, or its traceback, to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        worker.queue.put(("done", worker.index, target(job, worker)))
    except BaseException:
        worker.barrier.abort()
        worker.queue.put(("error", worker.index, traceback.format_exc()))
        raise


class ClientPool(Generic[J, R]):
    """Client processes started together and released by one barrier (the parent is its last party).

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
    ) -> None:
        import multiprocessing  # noqa: PLC0415

        ctx = multiprocessing.get_context("spawn")
        self.barrier = ctx.Barrier(len(jobs) + 1)
        self.queue = ctx.Queue()
        self.niceness = niceness
        self.release_timeout = release_timeout
        self.procs = [
            ctx.Process(
                target=_serve, args=(target, job, Worker(i, self.barrier, self.queue, release_timeout)), daemon=True
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
        self.queue.close()

    def release(self) -> float:
        """Wait until every client is ready, release them all, and return the release time."""
        import threading  # noqa: PLC0415

        try:
            self.barrier.wait(self.release_timeout)
        except threading.BrokenBarrierError:
            self._raise_reported_error("a client process failed to start")
        return time.monotonic()

    def collect(self, on_progress: Callable[[int], None] | None = None, timeout: float | None = None) -> list[R]:
        """Every client's result, in the order of the jobs; a failed client, or ``timeout`` passing, fails the run."""
        import queue as queue_module  # noqa: PLC0415

        deadline = time.monotonic() + timeout if timeout is not None else None
        while len(self.results) < len(self.procs):
            if deadline is not None and time.monotonic() > deadline:
                raise WorkerError(f"client processes did not report within {timeout:g} s")
            try:
                kind, index, payload = self.queue.get(timeout=1.0)
            except queue_module.Empty:
                dead = [p for i, p in enumerate(self.procs) if i not in self.results and not p.is_alive()]
                if dead:
                    self._raise_reported_error(f"a client process exited with code {dead[0].exitcode}")
                continue
            if kind == "progress" and on_progress is not None:
                on_progress(payload)
            elif kind == "done":
                self.results[index] = payload
            elif kind == "error":
                raise _failed(index, payload)
        return [self.results[i] for i in range(len(self.procs))]

    def _raise_reported_error(self, fallback: str) -> NoReturn:
        """Raise the error a client reported (it may still be on its way), else ``fallback``."""
        import queue as queue_module  # noqa: PLC0415

        try:
            while True:
                kind, index, payload = self.queue.get(timeout=2.0)
                if kind == "error":
                    raise _failed(index, payload)
        except queue_module.Empty:
            raise WorkerError(fallback) from None


def _failed(index: int, trace: str) -> WorkerError:
    lines = trace.strip().splitlines()
    return WorkerError(f"client process {index} failed: {lines[-1] if lines else trace}")


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
