"""How benchmark results are shown and kept: progress bars, tables, terminal and PNG charts, JSON, report prose.

rich, plotext and matplotlib are imported inside the functions that use them,
so importing a benchmark module stays cheap. matplotlib comes with the
``report`` extra (``pip install 'kvcluster[report]'``): without it, a command
that would draw a PNG says so before it runs anything (``require_png``). The
report's fixed prose is in ``report_template.md``, one block per section
(``template``).
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from kvcluster.client_pool import interrupt_on_sigterm
from kvcluster.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.progress import Progress
    from rich.table import Table


def progress_bar() -> Progress:
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


def stdout_console() -> Console:
    from rich.console import Console  # noqa: PLC0415

    return Console()


def color_allowed(stream: TextIO) -> bool:
    """Colours only for a terminal, and never with NO_COLOR set (https://no-color.org)."""
    return not os.environ.get("NO_COLOR") and stream.isatty()


def nice_ticks(lo: float, hi: float, target_count: int = 5) -> list[float]:
    """About ``target_count`` steps of 1, 2 or 5 times a power of ten, from at most ``lo`` to at least ``hi``."""
    span = hi - lo or abs(hi) or 1.0
    exponent = math.floor(math.log10(span / max(1, target_count)))
    base = 10.0**exponent
    step = next(m * base for m in (1, 2, 5, 10) if m * base * target_count >= span)
    first, last = math.floor(lo / step), math.ceil(hi / step)
    # Whole multiples of the step, rounded to its decimals, so no tick carries float noise like 0.30000000000000004.
    decimals = max(0, -math.floor(math.log10(step)))
    return [round(i * step, decimals) for i in range(first, max(last, first + 1) + 1)]


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """Ticks as the tables print numbers: thousands separated, and only the decimals the step needs."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return [f"{t:,.{decimals}f}" for t in ticks]


@contextmanager
def terminal_chart(title: str, ys: Sequence[float], width: int = 70) -> Iterator[Any]:
    """plotext, cleared for a new chart of values ``ys``, which is drawn on stdout on the way out.

    The y axis runs from zero (or below, for negative values) over round ticks.
    Colours go to a terminal only, and not with NO_COLOR set.
    """
    import plotext as plt  # noqa: PLC0415

    plt.clear_figure()
    yield plt
    ticks = nice_ticks(min([0.0, *ys]), max([0.0, *ys]))
    plt.ylim(ticks[0], ticks[-1])
    plt.yticks(ticks, tick_labels(ticks))
    plt.title(title)
    plt.plotsize(width, 20)
    plt.theme("clear")
    chart = plt.build()
    sys.stdout.write(chart if color_allowed(sys.stdout) else plt.uncolorize(chart))
    sys.stdout.flush()


def require_png() -> None:
    """Refuse, before anything runs, to draw PNG charts without matplotlib (the ``report`` extra)."""
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        raise UsageError("PNG charts need matplotlib: pip install 'kvcluster[report]'") from None


@contextmanager
def png_chart(path: Path, width: float = 7, rows: int = 1) -> Iterator[Any]:
    """The axes of a new matplotlib figure (no display needed), saved to ``path`` as PNG on the way out.

    With ``rows`` above 1, a sequence of that many axes stacked over one shared x axis.
    """
    require_png()
    import matplotlib as mpl  # noqa: PLC0415

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(rows, 1, figsize=(width, 4.2 if rows == 1 else 2.6 * rows), dpi=120, sharex=True)
    try:
        yield ax
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def measure_table(title: str) -> Table:
    """A two-column table of named measures and their values, the shape of every single-run summary."""
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    return table


def rich_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> Table:
    """``rows`` under ``header`` as a rich table: the first ``left`` columns aligned left and kept on one line (the
    headers of the figures wrap instead on a narrow terminal), the others aligned right."""
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < left else "right", no_wrap=i < left)
    for row in rows:
        table.add_row(*row)
    return table


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """The same rows as a Markdown table (rich's red markup becomes bold), and a blank line after it."""
    import re  # noqa: PLC0415

    def cells(row: Sequence[str]) -> str:
        return "| " + " | ".join(re.sub(r"\[bold red\](.*?)\[/\]", r"**\1**", c).replace("\n", " ") for c in row) + " |"

    rule = "| " + " | ".join("---" if i < left else "---:" for i in range(len(header))) + " |"
    return [cells(header), rule, *(cells(row) for row in rows), ""]


def ms_pair(pair: dict[str, float | None]) -> str:
    if pair["median"] is None or pair["max"] is None:
        return "n/a"
    return f"{pair['median']:.0f} ms / {pair['max']:.0f} ms"


def to_json(value: Any) -> Any:
    from dataclasses import asdict, is_dataclass  # noqa: PLC0415

    if isinstance(value, list):
        return [to_json(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


Result = TypeVar("Result")


def run_benchmark(
    run: Callable[[Progress], Result],
    table: Callable[[Result], RenderableType],
    chart: Callable[[Result], None],
    as_json: Callable[[Result], Any],
    *,
    plot: bool,
    json_out: Path | None,
) -> Result:
    """Run a benchmark under a progress bar, then print its table, draw its chart if asked and write its JSON."""
    with interrupt_on_sigterm(), progress_bar() as progress:
        result = run(progress)
    stdout_console().print(table(result))
    if plot:
        chart(result)
    write_json(json_out, as_json(result))
    return result


def section_markers(name: str) -> tuple[str, str]:
    """The HTML comments around a section that ``--only-NAME`` rewrites in place."""
    return f"<!-- {name}: written by kvcluster bench report -->", f"<!-- end of {name} -->"


def write_section(out: Path, name: str, lines: Sequence[str], data: dict[str, Any]) -> None:
    """Put section ``name`` (its lines, without markers) into the report ``out``, kept or created, in place of
    its previous version, and ``data`` into the report's JSON copy."""
    begin, end = section_markers(name)
    data_path = out.with_suffix(".json")
    merged: dict[str, Any] = json.loads(data_path.read_text()) if data_path.exists() else {}
    merged.update(data)
    data_path.write_text(json.dumps(merged, indent=2) + "\n")
    existing = out.read_text() if out.exists() else "# kvcluster performance report\n"
    out.write_text(splice(existing, "\n".join([begin, *lines, end, ""]), begin, end))


def splice(report: str, section: str, begin: str, end: str) -> str:
    """``report`` with the section between ``begin`` and ``end`` replaced by ``section`` (which carries both
    markers), or ``section`` put before ``## Reproduce``, or appended: one section of a report rewritten alone."""
    if begin in report and end in report:
        head, rest = report.split(begin, 1)
        _, tail = rest.split(end, 1)
        return head + section.rstrip("\n") + tail
    if "\n## Reproduce" in report:
        head, tail = report.split("\n## Reproduce", 1)
        return head + "\n" + section + "\n## Reproduce" + tail
    return report.rstrip("\n") + "\n\n" + section


def template(name: str, **values: Any) -> list[str]:
    """The prose block ``name`` of ``report_template.md`` as lines, its ``{fields}`` filled in from ``values``."""
    return [*_template_blocks()[name].format(**values).strip("\n").split("\n"), ""]


@functools.cache
def _template_blocks() -> dict[str, str]:
    from importlib.resources import files  # noqa: PLC0415

    text = files("kvcluster.bench").joinpath("report_template.md").read_text(encoding="utf-8")
    blocks: dict[str, str] = {}
    for part in text.split("<!-- block: ")[1:]:
        name, _, body = part.partition(" -->\n")
        blocks[name] = body
    return blocks
