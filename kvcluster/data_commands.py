"""What the data commands do for the user: which cluster to talk to, and the one line each prints.

Shared by the fast path in ``cli.py`` and the Typer app in ``commands.py``,
so neither imports the other's module at load time.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from msgspec import Struct

from kvcluster.errors import KeyNotFound, UsageError

if TYPE_CHECKING:
    from kvcluster.api import Client

DEFAULT_TIMEOUT = 5.0


def say(text: str) -> None:
    """Tell the user something on stderr, keeping stdout for results."""
    sys.stderr.write(f"{text}\n")


def home_dir(home: Path | None) -> Path:
    """The state directory: ``--home``, else ``KVCLUSTER_HOME``, else the per-user default."""
    from kvcluster.state import default_home  # noqa: PLC0415

    return (home or default_home()).expanduser().resolve()


class Target(Struct, frozen=True):
    """Which cluster a data command talks to, and how."""

    home: Path | None
    master: str | None
    verbose: bool
    timeout: float
    cluster: Path | None = None  # a cluster file (--cluster or KVCLUSTER_CLUSTER)

    def client(self) -> Client:
        """A client for ``--master``, the cluster file, or the cluster recorded in the state directory."""
        from kvcluster.api import Client  # noqa: PLC0415

        on_event = say if self.verbose else None
        return Client(self.master, home=self.home, timeout=self.timeout, on_event=on_event, cluster=self.cluster)


def target_for(
    home: Path | None, master: str | None, verbose: bool, timeout: float, cluster: Path | None = None
) -> Target:
    """``--master`` wins, then ``--cluster`` (or ``KVCLUSTER_CLUSTER``, unless ``--home`` is given), then the home."""
    if master is not None:
        from kvcluster.addresses import parse_addresses  # noqa: PLC0415

        parse_addresses(master)  # a bad address is a usage error before anything else happens
    if cluster is None and home is None:
        from kvcluster.state import CLUSTER_ENV  # noqa: PLC0415 - not clusterfile: a get need not parse TOML

        chosen = os.environ.get(CLUSTER_ENV)
        cluster = Path(chosen).expanduser() if chosen else None
    return Target(home, master, verbose, timeout, cluster)


def put_and_print(target: Target, key: str, value: str) -> None:
    from kvcluster.client import validate  # noqa: PLC0415

    validate(key, value)
    with target.client() as client:
        server = client.put(key, value)
    sys.stdout.write(f"OK, {server}\n")


def get_and_print(target: Target, key: str) -> None:
    from kvcluster.client import validate  # noqa: PLC0415

    validate(key)
    with target.client() as client:
        value, server = client.get_with_server(key)
    if value is None:
        raise KeyNotFound(key)
    sys.stdout.write(f"{key}, {value}, {server}\n")


def delete_and_print(target: Target, key: str) -> None:
    """``OK, serverN`` when the key held a value; a missing key fails like a get of it (exit 1)."""
    from kvcluster.client import validate  # noqa: PLC0415

    validate(key)
    with target.client() as client:
        existed = client.delete(key)
        server = client.last_server
    if not existed:
        raise KeyNotFound(key)
    sys.stdout.write(f"OK, {server}\n")


def scan_and_print(target: Target, prefix: str, limit: int | None) -> None:
    """One key per line, in order, as the pages arrive."""
    from kvcluster.api import check_prefix  # noqa: PLC0415

    check_prefix(prefix)
    with target.client() as client:
        sys.stdout.writelines(f"{key}\n" for key in client.scan(prefix, limit))


def run_client_form(put_key: str | None, val: str | None, get_key: str | None, target: Target) -> None:
    """The GTStore-style client form, ``client --put K --val V`` / ``client --get K``, printing what put and get do."""
    if (put_key is None) == (get_key is None):
        raise UsageError("give exactly one of --put KEY --val VALUE or --get KEY")
    if put_key is not None:
        if val is None:
            raise UsageError("--put needs --val VALUE")
        put_and_print(target, put_key, val)
    else:
        if val is not None:
            raise UsageError("--val goes with --put, not --get")
        assert get_key is not None
        get_and_print(target, get_key)
