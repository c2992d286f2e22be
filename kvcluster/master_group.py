"""The master group on disk and on the command line: its size, Raft addresses, secret and journals.

``up --masters N`` starts N master processes (1, 3 or 5: an even group
tolerates no more failures than the odd one below it and only adds a vote
to lose). Each member gets a loopback Raft address, the path of the secret
that authenticates the group's traffic (written once, readable by the owner
only) and a journal of its own under ``<home>/raft``, which keeps its term and
vote across a ``restart``. With one master there is no group: it acts alone,
as it always has.
"""

from __future__ import annotations

import secrets
import shutil
import socket
from pathlib import Path

from kvcluster.errors import UsageError

MASTER_COUNTS = (1, 3, 5)
DEFAULT_MASTERS = 3
RAFT_DIR = "raft"
SECRET_FILE = "secret"  # noqa: S105 - the name of the file that holds it


def check_master_count(count: int) -> None:
    if count not in MASTER_COUNTS:
        even = count > 0 and count % 2 == 0
        hint = " (an even group survives no more failures than one master fewer)" if even else ""
        raise UsageError(f"--masters must be 1, 3 or 5, got {count}{hint}")


def master_name(member_id: int) -> str:
    return f"master{member_id}"


RAFT_PORTS = (20000, 32767)  # below the kernel's ephemeral ports and ZeroMQ's random ones (49152 up)


def free_loopback_port() -> int:
    """A free port for a member's Raft traffic, drawn where no random bind of the cluster's processes lands.

    Members must know each other's addresses before they start, so the port is
    chosen here and bound later; drawn from the ephemeral range, a node's or
    master's own random bind could take it in between, and the member would
    never start.
    """
    draw = secrets.SystemRandom()
    while True:
        port = draw.randint(*RAFT_PORTS)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def prepare_group(home: Path, count: int, addresses: list[str] | None = None) -> list[str]:
    """Fresh Raft addresses (loopback ports, unless ``addresses`` are given), secret and empty journals for
    ``count`` masters; none are needed for one."""
    raft = home / RAFT_DIR
    shutil.rmtree(raft, ignore_errors=True)
    if count == 1:
        return []
    raft.mkdir(parents=True)
    secret = raft / SECRET_FILE
    secret.touch(mode=0o600)
    secret.write_text(secrets.token_hex(32))
    return addresses or [f"127.0.0.1:{free_loopback_port()}" for _ in range(count)]


def group_args(home: Path, raft_addresses: list[str], member_id: int) -> list[str]:
    """The ``_master`` options that make a process member ``member_id`` of the group (none for a lone master)."""
    if not raft_addresses:
        return []
    raft = home / RAFT_DIR
    return [
        "--id",
        str(member_id),
        "--group",
        ",".join(raft_addresses),
        "--secret-file",
        str(raft / SECRET_FILE),
        "--journal",
        str(raft / f"{master_name(member_id)}.journal"),
    ]
