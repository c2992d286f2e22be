"""A local cluster on separate hosts: one Linux network namespace per process, on one bridge.

``up --netns`` (root only) gives every master and storage node a namespace of
its own, ``kv<run>-<name>``, with loopback and an ``eth0`` at ``10.A.B.<i>/24``
whose veth peer sits on the bridge ``br0`` of a switch namespace
``kvs<run>``. This machine's own namespace joins the bridge too, as the
``clients`` host at ``10.A.B.254``, so ``kvcluster put/get/...`` and the
supervisor reach every process as they do on loopback. ``A.B`` is drawn per
cluster and checked unused here. Each host has its own network stack, so the
``net`` commands (``netcuts.py``) cut links between them with nftables rules
inside their namespaces, as Jepsen does between machines.

The layout is kept in ``hosts.json`` in the state directory; ``down`` deletes
every namespace and the clients' veth with it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kvcluster.errors import UsageError

HOSTS_FILE = "hosts.json"
MASTER_PORT = 7000  # each host has an address of its own: fixed ports cannot collide
RAFT_PORT = 7100
CLIENTS = "clients"
CLIENTS_HOST = 254  # the last address of the subnet: this machine's own namespace


def check_can_build() -> None:
    """Refuse, in one line, where namespaces cannot be made."""
    if os.geteuid() != 0:
        raise UsageError("--netns needs root: it creates network namespaces (run it with sudo)")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            package = "iproute2" if tool == "ip" else "nftables"
            raise UsageError(f"--netns needs the {tool} command (apt-get install {package})")


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)  # noqa: S603, S607 - ip and nft from PATH, with arguments built here
    if proc.returncode != 0:
        raise UsageError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def _free_subnet() -> str:
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=False).stdout  # noqa: S607 - ip and nft from PATH, with arguments built here
    while True:
        prefix = f"10.{secrets.randbelow(200) + 50}.{secrets.randbelow(250) + 1}"
        if f" {prefix}." not in used:
            return prefix


@dataclass
class NetHosts:
    """The namespaces of one cluster: host name (``master1``, ``server3``) -> its number on the subnet."""

    run: str = field(default_factory=lambda: secrets.token_hex(2))
    subnet: str = field(default_factory=_free_subnet)
    numbers: dict[str, int] = field(default_factory=dict)

    @property
    def switch(self) -> str:
        return f"kvs{self.run}"

    @property
    def clients_link(self) -> str:
        return f"kvc{self.run}"

    def namespace(self, name: str) -> str:
        return f"kv{self.run}-{name}"

    def ip(self, name: str) -> str:
        return f"{self.subnet}.{CLIENTS_HOST if name == CLIENTS else self.numbers[name]}"

    def names(self) -> list[str]:
        return list(self.numbers)

    def master_bind(self, name: str) -> str:
        return f"{self.ip(name)}:{MASTER_PORT}"

    def raft_addresses(self, names: list[str]) -> list[str]:
        return [f"{self.ip(name)}:{RAFT_PORT}" for name in names]

    def wrap(self, name: str, argv: list[str]) -> list[str]:
        """``argv`` run inside host ``name``."""
        return ["ip", "netns", "exec", self.namespace(name), *argv]

    def build(self, names: list[str]) -> None:
        """The switch, this machine's link to it, and a host for each of ``names``."""
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        peer = f"kvc{self.run}p"
        _ip("link", "add", self.clients_link, "type", "veth", "peer", "name", peer, "netns", self.switch)
        _ip("addr", "add", f"{self.ip(CLIENTS)}/24", "dev", self.clients_link)
        _ip("link", "set", self.clients_link, "up")
        _ip("-n", self.switch, "link", "set", peer, "master", "br0", "up")
        for name in names:
            self.add(name)

    def add(self, name: str) -> None:
        """One more host (a node added later gets one too)."""
        number = self.numbers.get(name) or max(self.numbers.values(), default=0) + 1
        if number >= CLIENTS_HOST:
            raise UsageError(f"no address left on {self.subnet}.0/24 for {name}")
        self.numbers[name] = number
        ns, port = self.namespace(name), f"kv{self.run}p{number}"
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.switch)
        _ip("-n", ns, "addr", "add", f"{self.ip(name)}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")

    def delete(self) -> None:
        """Every namespace and the clients' link; what is already gone is skipped."""
        for ns in [*(self.namespace(n) for n in self.numbers), self.switch]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)  # noqa: S603, S607 - ip and nft from PATH, with arguments built here
        subprocess.run(["ip", "link", "del", self.clients_link], capture_output=True, check=False)  # noqa: S603, S607 - ip and nft from PATH, with arguments built here

    def save(self, home: Path) -> None:
        (home / HOSTS_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, home: Path) -> NetHosts | None:
        try:
            raw = json.loads((home / HOSTS_FILE).read_text())
        except FileNotFoundError:
            return None
        return cls(raw["run"], raw["subnet"], {str(k): int(v) for k, v in raw["numbers"].items()})


def remove(home: Path) -> bool:
    """Delete the namespaces a cluster in ``home`` made, if any; True if there were."""
    hosts = NetHosts.load(home)
    if hosts is None:
        return False
    hosts.delete()
    (home / HOSTS_FILE).unlink(missing_ok=True)
    return True
