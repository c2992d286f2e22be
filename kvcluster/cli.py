"""The ``kvcluster`` entry point: errors mapped to exit codes, and fast paths past the Typer app.

``main`` is the one place where a ``KvclusterError`` becomes a single
``error: ...`` line on stderr and the exit code its class names. The commands
themselves live in ``commands.py`` (a Typer app). ``put``, ``get``,
``delete``, ``scan`` and ``client`` are what people run over and over, so ``main`` first reads
their documented argument shapes itself and runs them without importing Typer
or argparse, whose start-up costs more than the request itself; anything it
does not recognise (``--help``, a usage error) goes to the Typer app, which
owns the help text and the error messages; and they end with ``os._exit`` once
their output is flushed, skipping the interpreter's teardown. The processes
``up`` starts take the same kind of shortcut past Typer (``_run_process``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from msgspec import Struct

from kvcluster.data_commands import (
    DEFAULT_TIMEOUT,
    delete_and_print,
    get_and_print,
    put_and_print,
    run_client_form,
    scan_and_print,
    target_for,
)
from kvcluster.errors import KvclusterError

if TYPE_CHECKING:
    import argparse

    from kvcluster.curve import Curve

# The data commands' arguments: positionals (fewest, most), and the options that take a value.
FAST_POSITIONALS = {"put": (2, 2), "get": (1, 1), "delete": (1, 1), "scan": (0, 1), "client": (0, 0)}
COMMON_OPTIONS = ("--home", "--master", "--cluster", "--timeout")
FAST_OPTIONS = {"scan": ("--limit",), "client": ("--put", "--val", "--get")}


def _fast_args(argv: list[str]) -> tuple[list[str], dict[str, str], bool] | None:
    """``argv`` of a data command as (positionals, options, verbose), or ``None`` for anything unusual.

    Only the documented shapes are read here, without argparse, whose import and translation lookups cost
    more than the request; anything else (``--help``, a missing or unknown argument, a value that looks like
    an option) is ``None``, and the Typer app reports it with its own message.
    """
    command, rest = argv[0], argv[1:]
    takes_value = (*COMMON_OPTIONS, *FAST_OPTIONS.get(command, ()))
    positionals: list[str] = []
    options: dict[str, str] = {}
    verbose = False
    args = iter(rest)
    for arg in args:
        name, has_value, value = arg.partition("=")
        if arg in ("-v", "--verbose"):
            verbose = True
        elif name in takes_value:
            value = value if has_value else next(args, "-")
            if value.startswith("-"):
                return None
            options[name] = value
        elif arg.startswith("-"):
            return None
        else:
            positionals.append(arg)
    fewest, most = FAST_POSITIONALS[command]
    return (positionals, options, verbose) if fewest <= len(positionals) <= most else None


class _FastCommand(Struct, frozen=True):
    """A data command read without Typer, with what ``target_for`` and the command need."""

    command: str
    positionals: list[str]
    options: dict[str, str]
    verbose: bool
    timeout: float
    limit: int | None


def _fast_command(argv: list[str]) -> _FastCommand | None:
    """A plain data command in ``argv``, or ``None`` when it needs the full CLI."""
    if not argv or argv[0] not in FAST_POSITIONALS:
        return None
    read = _fast_args(argv)
    if read is None:
        return None
    positionals, options, verbose = read
    try:
        timeout = float(options.get("--timeout", DEFAULT_TIMEOUT))
        limit = int(options["--limit"]) if "--limit" in options else None
    except ValueError:  # Typer's message says what a number must look like
        return None
    if timeout < 0.1 or (limit is not None and limit < 1):
        return None
    return _FastCommand(argv[0], positionals, options, verbose, timeout, limit)


def _run_fast(fast: _FastCommand) -> None:
    """Run a plain data command without Typer."""
    options, positionals = fast.options, fast.positionals
    home = options.get("--home") or os.environ.get("KVCLUSTER_HOME") or None
    cluster = options.get("--cluster")
    target = target_for(
        Path(home) if home else None,
        options.get("--master"),
        fast.verbose,
        fast.timeout,
        Path(cluster) if cluster else None,
    )
    if fast.command == "put":
        put_and_print(target, *positionals)
    elif fast.command == "get":
        get_and_print(target, positionals[0])
    elif fast.command == "delete":
        delete_and_print(target, positionals[0])
    elif fast.command == "scan":
        scan_and_print(target, positionals[0] if positionals else "", fast.limit)
    else:
        run_client_form(options.get("--put"), options.get("--val"), options.get("--get"), target)


def _leave_now(code: int) -> NoReturn:
    """End a data command without the interpreter's teardown, once what it printed is flushed.

    By now its sockets are closed and its table cache is written, so the
    teardown would only free memory; freeing that of zmq, msgspec and typing
    takes longer than the request did (about 9 of a get's 67 ms on this
    machine), and scripts call these commands in loops.
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        code = code or 1  # stdout closed early, e.g. piped into head: nothing left to say
    except OSError as exc:  # a full disk under a redirected stdout, say
        code = _error(str(exc), 1)
    os._exit(code)


def _process_parser() -> argparse.ArgumentParser:
    import argparse  # noqa: PLC0415 - not on the path of a get

    timing = argparse.ArgumentParser(add_help=False)
    for name in ("--heartbeat", "--lease", "--dead-after"):
        timing.add_argument(name, type=float, required=True)
    parser = argparse.ArgumentParser(prog="kvcluster", add_help=False)
    processes = parser.add_subparsers(dest="process", required=True)
    master = processes.add_parser("_master", parents=[timing])
    master.add_argument("--nodes", type=int, required=True)
    master.add_argument("--rep", type=int, required=True)
    master.add_argument("--bind", required=True)
    master.add_argument("--id", type=int, default=1)
    master.add_argument("--group", default="", help="every member's Raft address, comma-separated")
    master.add_argument("--secret-file", type=Path)
    master.add_argument("--journal", type=Path)
    master.add_argument("--cluster", type=Path, help="a cluster file whose CurveZMQ keys to use (up --curve)")
    node = processes.add_parser("_node", parents=[timing])
    node.add_argument("--id", type=int, required=True)
    node.add_argument("--master", required=True)
    node.add_argument("--host", default="127.0.0.1", help="the address to bind and advertise")
    node.add_argument("--data-dir", type=Path)
    node.add_argument("--fsync", choices=("always", "everysec", "no"), default="everysec")
    node.add_argument("--snapshot-after", type=int, default=64 << 20)
    node.add_argument("--cluster", type=Path, help="a cluster file whose CurveZMQ keys to use (up --curve)")
    supervise = processes.add_parser("_supervise", parents=[timing])
    supervise.add_argument("--home", type=Path, required=True)
    supervise.add_argument("--nodes", type=int, required=True)
    supervise.add_argument("--rep", type=int, required=True)
    supervise.add_argument("--bind", required=True)
    supervise.add_argument("--masters", type=int, required=True)
    supervise.add_argument("--storage", required=True, help="the cluster's Storage, as JSON")
    supervise.add_argument("--curve", action="store_true")
    supervise.add_argument("--netns", action="store_true")
    return parser


def _run_process(argv: list[str]) -> bool:
    """Run one of the processes ``up`` starts (``_master``, ``_node``, ``_supervise``); False for anything else.

    They are internal, spawned with exact arguments, and nine of them start
    with every cluster, so they skip the Typer app and its start-up cost.
    """
    if not argv or argv[0] not in ("_master", "_node", "_supervise"):
        return False
    import logging  # noqa: PLC0415

    from kvcluster.core.protocol import Timing  # noqa: PLC0415

    args = _process_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    timing = Timing(args.heartbeat, args.lease, args.dead_after)
    if args.process == "_master":
        from kvcluster.runtime import master  # noqa: PLC0415

        membership = None
        if args.group:
            secret = args.secret_file.read_text().strip()
            membership = master.Membership(args.id, args.group.split(","), secret, args.journal)
        master.serve(args.nodes, args.rep, args.bind, timing, membership, _keys(args.cluster, "master", args.id))
    elif args.process == "_node":
        from kvcluster.runtime import node  # noqa: PLC0415
        from kvcluster.runtime.wal import FsyncPolicy  # noqa: PLC0415

        kept = None
        if args.data_dir is not None:
            kept = node.NodeStorage(args.data_dir, FsyncPolicy(args.fsync), args.snapshot_after)
        if node.serve(args.id, args.master, timing, args.host, kept, _keys(args.cluster, "node")):
            from kvcluster.runtime.exits import FENCED_EXIT  # noqa: PLC0415

            sys.exit(FENCED_EXIT)
    else:
        import json  # noqa: PLC0415

        from kvcluster import supervisor  # noqa: PLC0415
        from kvcluster.datadir import Storage  # noqa: PLC0415

        storage = Storage(**json.loads(args.storage))
        supervisor.supervise(
            args.home, args.nodes, args.rep, args.masters, args.bind, timing, storage, args.curve, args.netns
        )
    return True


def _keys(cluster: Path | None, role: str, member_id: int = 0) -> Curve | None:
    """The CurveZMQ keys of a process ``up --curve`` started, from the cluster file it was handed."""
    if cluster is None:
        return None
    from kvcluster import clusterfile  # noqa: PLC0415
    from kvcluster.curve import for_process  # noqa: PLC0415

    return for_process(clusterfile.load(cluster), role, member_id)


def _error(message: str, code: int) -> int:
    sys.stderr.write(f"error: {message}\n")
    return code


def _run(argv: list[str], fast: _FastCommand | None) -> int:
    """Run the command in ``argv``; its exit code, after one ``error:`` line on stderr for a failure."""
    try:
        if fast is not None:
            _run_fast(fast)
            return 0
        if _run_process(argv):
            return 0
        from kvcluster import commands  # noqa: PLC0415

        if argv[:1] == ["bench"]:
            commands.register_benchmarks()
        return commands.run(argv)
    except KvclusterError as exc:
        return _error(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _error("interrupted", 130)
    except BrokenPipeError:
        os._exit(1)  # stdout closed early, e.g. piped into head: nothing left to say
    except OSError as exc:
        return _error(str(exc), 1)


def main() -> None:
    """Run the CLI; every ``KvclusterError`` becomes one line on stderr and its exit code."""
    argv = sys.argv[1:]
    fast = _fast_command(argv)
    code = _run(argv, fast)
    if fast is not None:
        _leave_now(code)
    sys.exit(code)
