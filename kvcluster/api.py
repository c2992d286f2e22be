"""The Python library: a redis-py-style client of a running cluster.

    from kvcluster import Client, KeyNotFound

    with Client() as kv:                  # the cluster `kvcluster up` started
        kv.put("user:1", "ada")
        kv.get("user:1")                  # 'ada'; None for a missing key
        kv.delete("user:1")               # True: the key existed
        kv.put_many({"user:2": "bob", "user:3": "cy"})
        kv.get_many(["user:2", "nobody"])  # ['bob', None]
        list(kv.scan("user:"))            # ['user:2', 'user:3']

Each call is bounded by ``timeout`` and retried across failovers as the CLI
does; ``docs/api.md`` documents every method, its errors and what a scan
guarantees.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from kvcluster.client import DEFAULT_PAGE, Completion, Connection, validate
from kvcluster.core.client_ops import DEFAULT_TRY_TIMEOUT
from kvcluster.core.protocol import check_key
from kvcluster.core.wire import OpKind
from kvcluster.errors import InvalidKey, UsageError

BATCH = 256  # operations per message in get_many and put_many
WINDOW = 32  # messages in flight


class Client:
    """A connection to one running cluster, which threads may share (their operations travel together).

    ``master`` is ``HOST:PORT`` of a master (or of every master, comma-separated); without it the
    cluster is found in the state directory ``home``, else ``$KVCLUSTER_HOME``, else
    ``~/.local/state/kvcluster``, as the CLI finds it; ``cluster`` names a cluster file instead
    (``kvcluster init``), whose CurveZMQ client key the connection then uses. ``timeout`` bounds every call in seconds
    (every page of a scan). ``on_event`` is called with a line per routing step (what ``-v`` prints).
    """

    def __init__(
        self,
        master: str | None = None,
        *,
        home: str | os.PathLike[str] | None = None,
        timeout: float = 5.0,
        on_event: Callable[[str], None] | None = None,
        cluster: str | os.PathLike[str] | None = None,
    ) -> None:
        if not timeout > 0:
            raise UsageError(f"timeout must be positive, got {timeout!r}")
        self._connection = _connect(master, home, timeout, on_event, cluster)
        self.last_server: str | None = None
        """The server that answered the latest ``put``, ``get``, ``get_with_server`` or ``delete``."""

    def close(self) -> None:
        """Close the sockets; the client cannot be used afterwards."""
        self._connection.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def put(self, key: str, value: str) -> str:
        """Store ``value`` under ``key``; return the server (``serverN``) that acknowledged it."""
        self.last_server = self._connection.put(key, value)
        return self.last_server

    def get(self, key: str) -> str | None:
        """The value of ``key``, or None if it has none."""
        return self.get_with_server(key)[0]

    def get_with_server(self, key: str) -> tuple[str | None, str]:
        """``(value or None, server)``: the value of ``key`` and the server that answered."""
        value, self.last_server = self._connection.read(key)
        return value, self.last_server

    def delete(self, key: str) -> bool:
        """Delete ``key``; True if it held a value (like redis ``DEL`` returning 1), False if it had none."""
        existed, self.last_server = self._connection.delete(key)
        return existed

    def get_many(self, keys: Iterable[str]) -> list[str | None]:
        """The values of ``keys`` in their order, None for a key without one (like redis ``MGET``).

        The gets travel in batches, many in flight; each is read from its slot's primary, so the
        result is no snapshot across keys.
        """
        wanted = list(keys)
        for key in wanted:
            validate(key)
        results = self._connection.execute([(OpKind.GET, key, None) for key in wanted], batch=BATCH, window=WINDOW)
        for key, result in zip(wanted, results, strict=True):
            if result.completion not in (Completion.OK, Completion.NOT_FOUND):
                raise self._connection.failure(OpKind.GET, key, result)
        return [result.value for result in results]

    def put_many(self, mapping: Mapping[str, str]) -> None:
        """Store every ``key: value`` of ``mapping`` (like redis ``MSET``, but not atomic).

        The puts travel in batches, many in flight. If any fails, the error of the first such key
        is raised once all have finished: every other put was either acknowledged or failed too.
        """
        items = list(mapping.items())
        for key, value in items:
            validate(key, value)
        results = self._connection.execute([(OpKind.PUT, k, v) for k, v in items], batch=BATCH, window=WINDOW)
        for (key, _), result in zip(items, results, strict=True):
            if result.completion != Completion.OK:
                raise self._connection.failure(OpKind.PUT, key, result)

    def scan(self, prefix: str = "", limit: int | None = None, *, page: int = DEFAULT_PAGE) -> Iterator[str]:
        """The keys that start with ``prefix``, in order, at most ``limit`` of them (all when None).

        Pages of ``page`` keys per node are fetched as the iterator is consumed. Every key present
        for the whole scan is yielded exactly once; a key written or deleted meanwhile may or may
        not be. Each page is read from its slots' primary: the scan is no snapshot.
        """
        check_prefix(prefix)
        if limit is not None and limit < 0:
            raise UsageError(f"limit must be at least 0, got {limit}")
        if page < 1:
            raise UsageError(f"page must be at least 1, got {page}")
        from kvcluster.scan import scan  # noqa: PLC0415 - a put or get does not need the scanner

        return scan(self._connection, prefix, limit, page)


def check_prefix(prefix: str) -> None:
    """Raise ``InvalidKey`` for a prefix no key can start with: whitespace, or longer than a key. Empty is fine."""
    problem = check_key(prefix) if prefix else None
    if problem is not None:
        raise InvalidKey(problem.replace("key", "prefix", 1))


def _connect(
    master: str | None,
    home: str | os.PathLike[str] | None,
    timeout: float,
    on_event: Callable[[str], None] | None,
    cluster: str | os.PathLike[str] | None = None,
) -> Connection:
    if cluster is not None and master is None:
        return connect_file(Path(cluster), timeout, on_event)
    if master is not None:
        from kvcluster.addresses import parse_addresses  # noqa: PLC0415

        parse_addresses(master)  # a bad address is a usage error before anything is sent
        return Connection(master, deadline=timeout, on_event=on_event)
    from kvcluster.state import TABLE_CACHE, ClusterState, default_home  # noqa: PLC0415

    chosen = home if home is not None else os.environ.get("KVCLUSTER_HOME") or default_home()
    state_home = Path(chosen).expanduser().resolve()
    state = ClusterState.load(state_home)
    curve = None
    if state.curve:
        from kvcluster.local_file import state_curve  # noqa: PLC0415

        curve = state_curve(state)
    cache = state_home / TABLE_CACHE
    return Connection(state.master_endpoint, deadline=timeout, table_cache=cache, on_event=on_event, curve=curve)


def connect_file(
    path: Path,
    timeout: float,
    on_event: Callable[[str], None] | None = None,
    try_timeout: float = DEFAULT_TRY_TIMEOUT,
) -> Connection:
    """A connection to the cluster a cluster file describes, with its client key when CurveZMQ is on."""
    from kvcluster.clusterfile import load  # noqa: PLC0415
    from kvcluster.curve import for_process  # noqa: PLC0415

    cluster = load(path)
    return Connection(
        cluster.master_endpoints(),
        deadline=timeout,
        try_timeout=try_timeout,
        on_event=on_event,
        curve=for_process(cluster, "client"),
    )
