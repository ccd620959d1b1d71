"""Text sparklines and bars for CI logs."""

from __future__ import annotations

import math

from pytest_modelrules.textplot import bar, bar_chart, fmt_number, series_window, sparkline


def test_sparkline_maps_low_to_high() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([3, 3, 3]) == "▄▄▄"  # constant: a flat line
    assert sparkline([]) == ""


def test_sparkline_marks_nan_and_inf() -> None:
    assert sparkline([0.0, math.nan, 1.0, math.inf]) == "▁!█!"
    assert sparkline([math.nan]) == "!"


def test_sparkline_resamples_to_width_and_honours_bounds() -> None:
    line = sparkline(range(1000), width=20)
    assert len(line) == 20 and line[0] == "▁" and line[-1] == "█"
    assert sparkline([50], lo=0, hi=100) == "▅"


def test_bars() -> None:
    assert bar(10, 10, width=4) == "████"
    assert bar(0, 10) == "" and bar(5, 0) == ""
    assert bar(1, 16, width=4) == "▎"  # a quarter cell in eighths
    lines = bar_chart([("a", 10), ("long name", 5)], width=10, limit=8)
    assert lines[0] == "a          10  ██████████  <- over"
    assert lines[1] == "long name   5  █████"


def test_numbers_and_windows() -> None:
    assert fmt_number(3.0) == "3" and fmt_number(0.123456) == "0.1235" and fmt_number("x") == "x"
    window = series_window(range(10), [v * 2 for v in range(10)], 5, before=2, after=1)
    assert window == [(3, 6), (4, 8), (5, 10), (6, 12)]
    assert series_window([1, 2], [3, 4]) == [(1, 3), (2, 4)]
