"""Bulk loading for ``kvcluster load``: the file format, its parser, and storing a file chunk by chunk.

This module owns the ``KEY VALUE`` line format and its parser (``parse_lines``,
a pure function), reading a file or standard input in chunks, storing the good
lines of each chunk with ``Connection.execute`` (many puts per message, many
messages in flight), and the outcome: keys stored, rejected lines with their
numbers and reasons, time taken, as text or JSON. The Typer command is in
``commands.py``; rich is imported only to draw a progress bar on a terminal.

The format: one ``KEY VALUE`` pair per line, two fields separated by
whitespace, each checked with the rules ``put`` applies (``check_key`` and
``check_value``). Lines holding only whitespace are skipped. A line with one
field or more than two, or that is not UTF-8, is rejected, and the load goes
on. When a key appears on several lines, the last one wins.

The parent process reads and checks the input chunk by chunk and hands each
chunk's puts to client processes (``load_processes.py``), split by key so that the
puts of a key stay in order, each share stored by one ``execute`` call whose
deadline (``--timeout``) therefore bounds it. The chunk size follows the rate
measured so far, so that a chunk takes a fifth of the deadline: a machine
that turns five times slower halfway through a chunk still stores it in time.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import stat
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from kvcluster.errors import Interrupted, KvclusterError, LoadIncomplete, UnreadableFile
from kvcluster.load_processes import TRY_TIMEOUT, Loaders, Stored

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from kvcluster.client import Connection
    from kvcluster.data_commands import Target

STDIN = "-"
FIRST_CHUNK = 10_000  # lines in the first chunk, before any rate is known
MIN_CHUNK = 1_000
MAX_CHUNK = 200_000  # bounds the memory a chunk takes (about 250 bytes a line beyond its text)
CHUNK_SHARE = 1 / 5  # of the deadline, that one chunk should take at the rate measured so far
KEPT_PROBLEMS = 1_000  # rejected or failed lines kept with their reasons; the rest are only counted
SHOWN_PROBLEMS = 10  # of those, listed in the text summary


@dataclass(frozen=True, slots=True)
class Problem:
    """A line that was not stored, and why."""

    line: int
    reason: str


@dataclass(slots=True)
class ParsedChunk:
    """The lines of one chunk, sorted into puts to make, rejected lines, and blank lines."""

    entries: dict[str, tuple[str, int]]  # key -> (value, number of the last line that set it)
    rejected: list[Problem]
    lines: int
    blank: int

    @property
    def good(self) -> int:
        """Lines to store, counting those whose key a later line of the chunk sets again."""
        return self.lines - self.blank - len(self.rejected)


def parse_lines(lines: Iterable[bytes], first_line: int = 1) -> ParsedChunk:
    """Sort raw lines (numbered from ``first_line``) into puts, rejected lines and blank lines.

    Fields are split on whitespace as ``str.split`` does, so a trailing ``\\r``
    or extra spaces between the fields are fine. Keys and values are then
    checked with the same rules as ``put``.
    """
    from kvcluster.core.protocol import check_key, check_value  # noqa: PLC0415 - keeps ``commands`` import cheap

    entries: dict[str, tuple[str, int]] = {}
    rejected: list[Problem] = []
    blank = 0
    number = first_line - 1
    for number, raw in enumerate(lines, first_line):
        try:
            fields = raw.decode().split()
        except UnicodeDecodeError:
            rejected.append(Problem(number, "not valid UTF-8"))
            continue
        if len(fields) != 2:
            if fields:
                count = f"{len(fields)} fields" if len(fields) > 1 else "1 field"
                rejected.append(Problem(number, f"expected KEY VALUE, got {count}"))
            else:
                blank += 1
            continue
        key, value = fields
        problem = check_key(key) or check_value(value)
        if problem is not None:
            rejected.append(Problem(number, problem))
            continue
        entries[key] = (value, number)
    return ParsedChunk(entries, rejected, number - first_line + 1, blank)


@dataclass
class LoadReport:
    """What a load did, line by line: every line read is blank, rejected, stored or failed.

    A line whose key a later line of the same chunk sets again counts as
    stored once that later line's put is acknowledged.
    """

    source: str
    lines: int = 0
    blank: int = 0
    stored: int = 0
    rejected: int = 0
    failed: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)  # the first KEPT_PROBLEMS, in line order
    stopped: str | None = None  # why the load stopped before the end of its input

    @property
    def keys_per_second(self) -> float:
        return self.stored / self.seconds if self.seconds > 0 else 0.0

    @property
    def complete(self) -> bool:
        return self.stopped is None and not self.rejected and not self.failed

    def add_problems(self, problems: list[Problem]) -> None:
        """Keep the first ``KEPT_PROBLEMS`` by line number (failed puts come back after later lines are read)."""
        if problems:
            self.problems = sorted(self.problems + problems[:KEPT_PROBLEMS], key=lambda p: p.line)[:KEPT_PROBLEMS]

    def document(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "complete": self.complete,
            "lines": self.lines,
            "stored": self.stored,
            "rejected": self.rejected,
            "failed": self.failed,
            "blank": self.blank,
            "seconds": round(self.seconds, 3),
            "keys_per_second": round(self.keys_per_second, 1),
            "problems": [{"line": p.line, "reason": p.reason} for p in self.problems],
            "stopped": self.stopped,
        }

    def text(self) -> str:
        out = [
            f"stored {self.stored:,} of {self.lines:,} {_lines(self.lines)} of {self.source} "
            f"in {self.seconds:.1f} s ({self.keys_per_second:,.0f} keys/s)"
        ]
        if self.blank:
            out.append(f"({self.blank:,} blank {_lines(self.blank)} skipped)")
        missing = self.rejected + self.failed
        if missing:
            kinds = [f"{n:,} {what}" for n, what in ((self.rejected, "rejected"), (self.failed, "failed")) if n]
            out.append(f"{missing:,} {_lines(missing)} not stored ({', '.join(kinds)}):")
            out.extend(f"  line {p.line}: {p.reason}" for p in self.problems[:SHOWN_PROBLEMS])
            if missing > SHOWN_PROBLEMS:
                out.append(f"  ... and {missing - SHOWN_PROBLEMS:,} more")
        if self.stopped is not None:
            out.append(f"stopped after line {self.lines:,}: {self.stopped}")
        return "\n".join(out)

    def error(self) -> str:
        """The one ``error:`` line for an incomplete load."""
        if self.stopped is not None:
            return f"{self.stopped}; stopped after line {self.lines:,} with {self.stored:,} lines stored"
        first = self.problems[0].line if self.problems else 0
        kinds = [f"{n:,} {what}" for n, what in ((self.rejected, "rejected"), (self.failed, "failed")) if n]
        missing = self.rejected + self.failed
        return (
            f"{missing:,} of {self.lines:,} {_lines(self.lines)} not stored ({', '.join(kinds)}; "
            f"the first is line {first}); the other lines are stored"
        )


def _lines(count: int) -> str:
    return "line" if count == 1 else "lines"


def run(target: Target, source: str, *, batch: int, window: int, clients: int, as_json: bool) -> None:
    """Store every good line of ``source`` (a path, or ``-`` for stdin), then print the summary.

    Raises ``UnreadableFile`` (nothing stored) when the file cannot be opened,
    the cluster's errors when it cannot be reached before anything is stored,
    and ``LoadIncomplete`` after the summary when some line was not stored.
    """
    from kvcluster.client_pool import interrupt_on_sigterm  # noqa: PLC0415

    stream, size = _open(source)
    interrupted = False
    with stream, interrupt_on_sigterm():
        report = LoadReport(source="standard input" if source == STDIN else source)
        with _client(target) as client:
            client.refresh_table()  # an unreachable cluster fails here, before a line is read
            master, curve = client.address, client.curve
        try:
            with (
                Loaders(master, clients, deadline=target.timeout, batch=batch, window=window, curve=curve) as loaders,
                _progress_bar(size) as progress,
            ):
                _load(loaders, stream, report, target.timeout, progress)
        except UnreadableFile:
            raise  # nothing was stored
        except KvclusterError as exc:
            report.stopped = str(exc)
        except KeyboardInterrupt:
            report.stopped, interrupted = "interrupted", True
    sys.stdout.write(json.dumps(report.document(), indent=2) + "\n" if as_json else report.text() + "\n")
    if interrupted:
        raise Interrupted(report.error())
    if not report.complete:
        raise LoadIncomplete(report.error())


def _open(source: str) -> tuple[IO[bytes], int | None]:
    """The binary stream to read, and its size when it is a regular file; ``UnreadableFile`` if it cannot be opened."""
    try:
        stream = _stream(source)
        info = os.fstat(stream.fileno())
    except (OSError, ValueError) as exc:  # ValueError: stdin is closed
        raise UnreadableFile(f"cannot read {source}: {getattr(exc, 'strerror', None) or exc}") from None
    return stream, info.st_size if stat.S_ISREG(info.st_mode) else None


def _stream(source: str) -> IO[bytes]:
    if source == STDIN:
        # ``run`` closes the stream it reads: that must not close the process's standard input.
        return open(sys.stdin.fileno(), "rb", closefd=False)
    return Path(source).open("rb")


def _client(target: Target) -> Connection:
    """A client for the load: like ``Target.client``, with tries that wait long enough for a loaded node."""
    from kvcluster.client import Connection  # noqa: PLC0415
    from kvcluster.data_commands import home_dir  # noqa: PLC0415
    from kvcluster.state import TABLE_CACHE, ClusterState  # noqa: PLC0415

    if target.master is not None:
        return Connection(target.master, deadline=target.timeout, try_timeout=TRY_TIMEOUT)
    if target.cluster is not None:
        from kvcluster.api import connect_file  # noqa: PLC0415

        return connect_file(target.cluster, target.timeout, try_timeout=TRY_TIMEOUT)
    from kvcluster.local_file import state_curve  # noqa: PLC0415

    home = home_dir(target.home)
    state = ClusterState.load(home)
    cache = home / TABLE_CACHE
    curve = state_curve(state)
    return Connection(
        state.master_endpoint, deadline=target.timeout, try_timeout=TRY_TIMEOUT, table_cache=cache, curve=curve
    )


def _load(loaders: Loaders, stream: IO[bytes], report: LoadReport, deadline: float, progress: _Bar) -> None:
    """Read and check chunk after chunk, hand the puts to ``loaders``, and add every outcome to ``report``."""
    started = time.monotonic()
    chunk = FIRST_CHUNK
    done = 0  # lines whose put came back, stored or failed: the rate that sizes the next chunk

    def on_stored(outcome: Stored) -> None:
        nonlocal done
        done += outcome.stored + len(outcome.failed)
        report.stored += outcome.stored
        report.failed += len(outcome.failed)
        report.add_problems([Problem(line, reason) for line, reason in outcome.failed[:KEPT_PROBLEMS]])
        if outcome.failed and not outcome.stored:
            lines = [line for line, _ in outcome.failed]
            raise LoadIncomplete(f"no put of lines {min(lines):,}-{max(lines):,} was stored ({outcome.failed[0][1]})")
        report.seconds = time.monotonic() - started
        progress.update(report)

    try:
        while raw := _read(stream, chunk, report):
            parsed = parse_lines(raw, report.lines + 1)
            report.lines += parsed.lines
            report.blank += parsed.blank
            report.rejected += len(parsed.rejected)
            report.stored += parsed.good - len(parsed.entries)  # lines a later line of the same key overrides
            report.add_problems(parsed.rejected)
            loaders.send(parsed.entries, on_stored)
            progress.update(report, consumed=sum(map(len, raw)))
            loaders.collect(on_stored, 0)
            chunk = _next_chunk(chunk, done, time.monotonic() - started, deadline)
        loaders.finish(on_stored)
    finally:
        report.seconds = time.monotonic() - started


def _read(stream: IO[bytes], lines: int, report: LoadReport) -> list[bytes]:
    """The next ``lines`` raw lines (fewer at the end of the input, none after it)."""
    try:
        return list(itertools.islice(stream, lines))
    except OSError as exc:
        reason = f"cannot read {report.source}: {exc.strerror or exc}"
        if report.stored:
            raise LoadIncomplete(reason) from None
        raise UnreadableFile(reason) from None


def _next_chunk(current: int, puts: int, seconds: float, deadline: float) -> int:
    """Lines for the next chunk: what the rate so far stores in a share of the deadline, growing at most 2x."""
    if puts <= 0 or seconds <= 0:
        return current  # no outcome yet: no rate to go by
    wanted = int(puts / seconds * deadline * CHUNK_SHARE)
    return max(MIN_CHUNK, min(MAX_CHUNK, current * 2, wanted))


class _Bar:
    """The progress bar on stderr, drawn only when stderr is a terminal (rich decides)."""

    def __init__(self, progress: Progress | None, task: TaskID | None) -> None:
        self.progress = progress
        self.task = task

    def update(self, report: LoadReport, consumed: int = 0) -> None:
        """Show the counts of ``report``, and ``consumed`` more bytes of the input read."""
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, advance=consumed, stored=report.stored, rate=report.keys_per_second)


@contextlib.contextmanager
def _progress_bar(total: int | None) -> Iterator[_Bar]:
    if not sys.stderr.isatty():
        yield _Bar(None, None)  # nothing to draw: rich is not even imported
        return
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    console = Console(stderr=True)
    if not console.is_terminal:
        yield _Bar(None, None)
        return
    with Progress(
        TextColumn("loading"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[stored]:,} keys stored, {task.fields[rate]:,.0f} keys/s"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        yield _Bar(progress, progress.add_task("loading", total=total, stored=0, rate=0.0))
