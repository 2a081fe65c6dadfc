"""Chart geometry (portal/charts.py)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from portal.charts import daily_bars, gauge, nice_ceiling


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 1), (1, 1), (3, 5), (7, 10), (11, 20), (24, 25), (25, 25), (26, 50), (999, 1000), (1001, 2000), (0.3, 0.5)],
)
def test_nice_ceiling(value: float, expected: float) -> None:
    assert nice_ceiling(value) == pytest.approx(expected)


def test_daily_bars_scale_to_the_top_and_keep_the_order() -> None:
    days = [date(2026, 12, 1) + timedelta(days=i) for i in range(10)]
    chart = daily_bars("t", days, {days[0]: 50, days[3]: 100, days[9]: 25}, unit="tokens", width=640, height=180)
    assert len(chart.bars) == 10
    plot_h = chart.baseline - 8
    heights = [b.height for b in chart.bars]
    assert heights[3] == pytest.approx(plot_h) and heights[0] == pytest.approx(plot_h / 2)
    assert heights[9] == pytest.approx(plot_h / 4) and heights[1] == 0
    assert all(b.y + b.height == pytest.approx(chart.baseline) for b in chart.bars)
    xs = [b.x for b in chart.bars]
    assert xs == sorted(xs) and xs[0] >= chart.plot_left and xs[-1] + chart.bars[-1].width <= chart.plot_right
    assert chart.bars[3].label == "2026-12-04: 100 tokens"
    assert [t.text for t in chart.y_ticks] == ["0", "50", "100"]
    assert "175 tokens from 2026-12-01 to 2026-12-10" in chart.description
    assert 1 <= len(chart.x_ticks) <= 10


def test_empty_chart() -> None:
    chart = daily_bars("t", [date(2026, 1, 1)], {}, unit="tokens")
    assert chart.bars[0].height == 0 and [t.text for t in chart.y_ticks] == ["0", "0.5", "1"]


@pytest.mark.parametrize(
    ("used", "level", "fill"),
    [(0, "ok", 0), (50, "ok", 200), (80, "warn", 320), (100, "over", 400), (300, "over", 400)],
)
def test_gauge(used: int, level: str, fill: float) -> None:
    g = gauge("q", used, 100, width=400)
    assert g.level == level and g.fill == fill and g.percent == pytest.approx(used)
