"""kvcluster: a replicated, sharded key-value store you can run as a whole cluster on a laptop.

``from kvcluster import Client`` gives the Python library (``kvcluster/api.py``,
``docs/api.md``). ``Client`` is imported on first use, so that ``import
kvcluster`` stays cheap for the CLI, which imports this package on every run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvcluster.errors import (
    ClusterFileInvalid,
    ClusterNotRunning,
    ClusterUnavailable,
    InvalidAddress,
    InvalidKey,
    InvalidValue,
    KeyNotFound,
    KeyRefused,
    KvclusterError,
    NoLiveReplica,
    OperationTimedOut,
    ProtocolError,
    UsageError,
)

if TYPE_CHECKING:
    from kvcluster.api import Client

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ClusterFileInvalid",
    "ClusterNotRunning",
    "ClusterUnavailable",
    "InvalidAddress",
    "InvalidKey",
    "InvalidValue",
    "KeyNotFound",
    "KeyRefused",
    "KvclusterError",
    "NoLiveReplica",
    "OperationTimedOut",
    "ProtocolError",
    "UsageError",
]


def __getattr__(name: str) -> object:
    if name == "Client":
        from kvcluster.api import Client  # noqa: PLC0415

        return Client
    raise AttributeError(f"module 'kvcluster' has no attribute {name!r}")
