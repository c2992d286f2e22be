"""Hosts for tests: one network namespace each, joined by a bridge, running real kvcluster processes.

``Hosts(count)`` builds ``count`` namespaces named ``kvh<run>-<i>``, each with
loopback up and an ``eth0`` at ``10.A.B.<i>/24``, whose veth peer sits on the
bridge ``br0`` of a switch namespace ``kvs<run>``. ``A.B`` is drawn per run
and checked unused on this machine, so runs side by side never share a
subnet. Processes start with ``ip netns exec NAME python -m kvcluster ...`` in
a working directory of their own per host; ``close`` kills every process in
every namespace and deletes the namespaces, whatever happened before.

Needs root and iproute2; ``skip_reason()`` says why not when it cannot run.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

COMMAND_TIMEOUT = 60.0


def skip_reason() -> str | None:
    """Why network-namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespace tests need root"
    if shutil.which("ip") is None:
        return "network namespace tests need iproute2's ip"
    probe = f"kvprobe{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def _free_subnet() -> str:
    """``10.A.B`` not used by any address of this machine's namespace."""
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=False).stdout
    while True:
        prefix = f"10.{secrets.randbelow(200) + 50}.{secrets.randbelow(250) + 1}"
        if f" {prefix}." not in used:
            return prefix


@dataclass
class Hosts:
    """``count`` hosts on one switch; host ``i`` (1-based) has address ``ip(i)``."""

    count: int
    base: Path
    run: str = field(default_factory=lambda: secrets.token_hex(2))
    subnet: str = field(default_factory=_free_subnet)
    made: list[str] = field(default_factory=list)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    @property
    def switch(self) -> str:
        return f"kvs{self.run}"

    def name(self, host: int) -> str:
        return f"kvh{self.run}-{host}"

    def ip(self, host: int) -> str:
        return f"{self.subnet}.{host}"

    def workdir(self, host: int) -> Path:
        path = self.base / f"host{host}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _build(self) -> None:
        _ip("netns", "add", self.switch)
        self.made.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for host in range(1, self.count + 1):
            ns, port = self.name(host), f"kv{self.run}p{host}"
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.switch)
            _ip("-n", ns, "addr", "add", f"{self.ip(host)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")

    def _argv(self, host: int, args: tuple[str, ...]) -> list[str]:
        return ["ip", "netns", "exec", self.name(host), sys.executable, "-m", "kvcluster", *args]

    def start(self, host: int, *args: str, log: str) -> subprocess.Popen[bytes]:
        """Start ``kvcluster ARGS`` on ``host`` in the background, its output in the host's ``log``."""
        workdir = self.workdir(host)
        with (workdir / log).open("ab") as out:
            proc = subprocess.Popen(
                self._argv(host, args), cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        self.started.append(proc)
        return proc

    def run_cli(self, host: int, *args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run ``kvcluster ARGS`` on ``host`` to completion; its output as text."""
        env = {k: v for k, v in os.environ.items() if k not in ("KVCLUSTER_HOME", "KVCLUSTER_CLUSTER")}
        return subprocess.run(
            self._argv(host, args),
            cwd=self.workdir(host),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )

    def log(self, host: int, log: str) -> str:
        path = self.workdir(host) / log
        return path.read_text(errors="replace") if path.exists() else ""

    def pids(self, host: int) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.name(host)], capture_output=True, text=True, check=False)
        return [int(p) for p in out.stdout.split()]

    def kill(self, host: int) -> list[int]:
        """SIGKILL every process of ``host``, as a host that loses power would stop; their pids."""
        pids = self.pids(host)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.pids(host) and time.monotonic() < deadline:
            time.sleep(0.02)
        return pids

    def close(self) -> None:
        """Kill every process in every namespace, reap what we started, delete the namespaces."""
        for ns in self.made:
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
            for pid in out.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        for proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.made.clear()
