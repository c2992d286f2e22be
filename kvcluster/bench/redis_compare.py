"""Redis's own throughput beside kvcluster's, for ``kvcluster bench throughput --redis`` and the report.

Only when ``redis-server`` and ``redis-benchmark`` are on PATH: kvcluster does
not depend on Redis. For each fsync policy a redis-server is started in a
temporary directory on a free loopback port, with the matching persistence:
``always`` and ``everysec`` as ``--appendonly yes --appendfsync always|everysec``,
``no`` as persistence off (``--save '' --appendonly no``: Redis then writes
nothing, while kvcluster's nodes still write their log, unsynced). Then
``redis-benchmark -q -c 16 -n N -t set,get`` measures it, and the server is
always stopped, whatever happens. The 50/50 rate is the harmonic mean of the
SET and GET rates: what a mix of half of each would do, to compare with
kvcluster's 50/50 load.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvcluster.bench.common import BenchmarkError, ThroughputRun

if TYPE_CHECKING:
    from rich.progress import Progress


REDIS_CLIENTS = 16
START_TIMEOUT = 10.0
STOP_GRACE = 5.0
RATE_LINE = re.compile(r"(SET|GET): ([\d.]+) requests per second")
PERSISTENCE = {
    "always": ["--appendonly", "yes", "--appendfsync", "always"],
    "everysec": ["--appendonly", "yes", "--appendfsync", "everysec"],
    "no": ["--save", "", "--appendonly", "no"],
}
CONFIG_LABEL = {"always": "AOF, appendfsync always", "everysec": "AOF, appendfsync everysec", "no": "persistence off"}


@dataclass
class RedisRun:
    """redis-benchmark against one redis-server: requests per second of SET and GET, and of a 50/50 mix."""

    fsync: str
    config: str
    requests: int
    clients: int
    set_ops_per_s: float
    get_ops_per_s: float
    mixed_ops_per_s: float


def redis_available() -> bool:
    return shutil.which("redis-server") is not None and shutil.which("redis-benchmark") is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _executable(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BenchmarkError(f"{name} is not installed")
    return path


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def run_redis(fsync: str, requests: int, clients: int = REDIS_CLIENTS) -> RedisRun:
    """Start a redis-server with the persistence matching ``fsync``, benchmark it, stop it."""
    with tempfile.TemporaryDirectory(prefix="kvcluster-bench-redis-") as tmp:
        port = _free_port()
        server_argv = [
            _executable("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp,
            "--daemonize", "no", "--logfile", str(Path(tmp) / "redis.log"), *PERSISTENCE[fsync],
        ]  # fmt: skip
        bench_argv = [
            _executable("redis-benchmark"), "-h", "127.0.0.1", "-p", str(port), "-q",
            "-c", str(clients), "-n", str(requests), "-t", "set,get",
        ]  # fmt: skip
        server = subprocess.Popen(server_argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)  # noqa: S603
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not _answers_ping(port):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise BenchmarkError(f"redis-server did not start on port {port}")
                time.sleep(0.05)
            bench = subprocess.run(bench_argv, capture_output=True, text=True, timeout=600, check=False)  # noqa: S603
        finally:
            _stop(server)
    rates = {m.group(1): float(m.group(2)) for m in RATE_LINE.finditer(bench.stdout.replace("\r", "\n"))}
    if bench.returncode != 0 or set(rates) != {"SET", "GET"}:
        output = (bench.stdout + bench.stderr)[-300:]
        raise BenchmarkError(f"redis-benchmark exited {bench.returncode} without both rates: {output}")
    mixed = 2 / (1 / rates["SET"] + 1 / rates["GET"])
    return RedisRun(fsync, CONFIG_LABEL[fsync], requests, clients, rates["SET"], rates["GET"], round(mixed, 1))


def run_redis_for(progress: Progress, fsyncs: Sequence[str], requests: int) -> list[RedisRun]:
    """redis-benchmark under each policy's persistence, one after the other."""
    task = progress.add_task("redis-benchmark", total=len(fsyncs))
    runs = []
    for fsync in fsyncs:
        progress.update(task, description=f"redis-benchmark: {CONFIG_LABEL[fsync]}")
        runs.append(run_redis(fsync, requests))
        progress.advance(task)
    return runs


def versus_redis(run: ThroughputRun, redis: RedisRun) -> dict[str, Any]:
    ratio = round(run.ops_per_s / redis.mixed_ops_per_s, 3) if redis.mixed_ops_per_s else None
    return {"rep": run.rep, "batch": run.batch, "window": run.window, "ops_per_s": run.ops_per_s, "ratio": ratio}


def redis_rows(runs: Sequence[ThroughputRun], redis: Sequence[RedisRun]) -> tuple[list[str], list[list[str]]]:
    """Redis under each policy's persistence, beside kvcluster's runs of that policy: ops/s and kvcluster / Redis."""
    modes = sorted({run.mode for run in runs})
    header = ["fsync", "Redis", "Redis SET / GET ops/s", "Redis 50/50 ops/s", "kvcluster replicas"]
    header += [f"kvcluster {mode.label} ops/s (/ Redis)" for mode in modes]
    rows = []
    for r in redis:
        for rep in sorted({run.rep for run in runs if run.fsync == r.fsync}):
            cells = []
            for mode in modes:
                run = next((x for x in runs if (x.fsync, x.rep, x.mode) == (r.fsync, rep, mode)), None)
                ratio = None if run is None else versus_redis(run, r)["ratio"]
                cells.append("-" if run is None or ratio is None else f"{run.ops_per_s:,.0f} ({ratio:.2f})")
            sets_gets = f"{r.set_ops_per_s:,.0f} / {r.get_ops_per_s:,.0f}"
            rows.append([r.fsync, r.config, sets_gets, f"{r.mixed_ops_per_s:,.0f}", str(rep), *cells])
    return header, rows
