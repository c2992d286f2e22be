"""The client-process pool shared by benchmarks and chaos runs: results in job order, progress, failures, niceness."""

from __future__ import annotations

import os

import pytest

from kvcluster.client_pool import ClientPool, Worker, WorkerError


def square(job: int, worker: Worker) -> tuple[int, int]:
    worker.wait_for_release()
    worker.progress(job)
    return job * job, os.getpriority(os.PRIO_PROCESS, 0)


def fail(job: int, worker: Worker) -> int:
    raise ValueError(f"job {job} fails")


def test_results_come_back_in_job_order_with_progress_and_niceness() -> None:
    nicer = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 1)
    done: list[int] = []
    with ClientPool(square, [3, 1, 2], niceness=nicer) as pool:
        pool.release()
        results = pool.collect(done.append)
    assert results == [(9, nicer), (1, nicer), (4, nicer)]
    assert sorted(done) == [1, 2, 3]


def test_a_failed_client_fails_the_release_with_its_error() -> None:
    expected = "client process 0 failed: ValueError: job 7 fails"
    with ClientPool(fail, [7]) as pool, pytest.raises(WorkerError, match=expected):
        pool.release()
