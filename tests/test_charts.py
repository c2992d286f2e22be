"""Terminal charts: round y ticks labelled as the tables print numbers, and colour only for a terminal."""

from __future__ import annotations

import io
import itertools
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvcluster.bench import balance
from kvcluster.bench.output import nice_ticks, tick_labels

COUNTS = {"server1": 2030, "server2": 1691, "server3": 1353, "server4": 1870, "server5": 1056}


def round_step(step: float, tol: float) -> float | None:
    """The 1, 2 or 5 times a power of ten that ``step`` is, up to float noise; None if it is none of them."""
    power = 10.0 ** math.floor(math.log10(step))
    return next((m * power for m in (1, 2, 5, 10) if math.isclose(step, m * power, rel_tol=1e-6, abs_tol=tol)), None)


def chart_values(low: float) -> st.SearchStrategy[float]:
    """Values a chart shows (counts, ms, ops/s): zero, or not so close to it that dividing underflows."""
    return st.floats(min_value=low, max_value=1e7, allow_nan=False).filter(lambda v: v == 0 or abs(v) >= 1e-6)


@given(chart_values(-1e7), chart_values(0), st.integers(min_value=2, max_value=10))
def test_ticks_are_round_evenly_spaced_and_cover_the_data(lo: float, width: float, target: int) -> None:
    hi = lo + width
    ticks = nice_ticks(lo, hi, target)
    assert len(ticks) >= 2
    # Floats of a large magnitude hold a small step only to within their own precision.
    tol = 1e-14 * max(1.0, *map(abs, ticks))
    step = round_step(ticks[1] - ticks[0], tol)
    assert step is not None, ticks
    for a, b in itertools.pairwise(ticks):
        assert math.isclose(b - a, step, rel_tol=1e-6, abs_tol=tol), ticks
    for tick in ticks:
        assert math.isclose(tick, round(tick / step) * step, abs_tol=tol), (tick, step)
    assert ticks[0] <= lo
    assert ticks[-1] >= hi
    assert len(ticks) <= 2 * target + 2


def test_balance_ticks_are_the_ones_a_person_would_choose() -> None:
    ticks = nice_ticks(0, 2030, 5)
    assert ticks == [0, 500, 1000, 1500, 2000, 2500]
    assert tick_labels(ticks) == ["0", "500", "1,000", "1,500", "2,000", "2,500"]
    assert tick_labels(nice_ticks(0, 0.37, 4)) == ["0.0", "0.1", "0.2", "0.3", "0.4"]
    assert tick_labels(nice_ticks(0, 123_456, 5))[-1] == "150,000"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def balance_chart(monkeypatch: pytest.MonkeyPatch, stdout: io.StringIO) -> str:
    monkeypatch.setattr("sys.stdout", stdout)
    balance._plot_balance(balance._balance_stats(7900, 5, 1, COUNTS))
    return stdout.getvalue()


def test_balance_chart_has_round_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    chart = balance_chart(monkeypatch, io.StringIO())
    labels = [m.group(1) for line in chart.splitlines() if (m := re.match(r"\s*([-\d,.]+)┤", line))]
    assert labels == ["2,500", "2,000", "1,500", "1,000", "500", "0"], chart
    assert "server1" in chart
    assert "7,900 keys" in chart


def test_chart_into_a_pipe_has_no_escape_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert "\x1b" not in balance_chart(monkeypatch, io.StringIO())


def test_no_color_means_no_escape_codes_in_a_terminal_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b" not in balance_chart(monkeypatch, Terminal())


def test_a_terminal_gets_colours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert "\x1b[" in balance_chart(monkeypatch, Terminal())
