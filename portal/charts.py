"""Charts as data for server-rendered SVG: the geometry is computed here, the markup is a template macro.

No script and no external library: a chart is a few ``<rect>`` elements whose coordinates come from here,
each with a ``<title>`` (its value, read by screen readers and shown on hover), and a data table beside it.
Pure functions of their inputs, so tests check the geometry directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import date

__all__ = ["Bar", "BarChart", "Gauge", "Tick", "daily_bars", "gauge", "nice_ceiling"]

_LEFT = 64  # room for the y axis labels
_BOTTOM = 24  # room for the x axis labels
_TOP = 8


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar: its box in SVG user units and what it shows."""

    x: float
    y: float
    width: float
    height: float
    label: str


@dataclass(frozen=True, slots=True)
class Tick:
    """An axis label at ``x`` / ``y``."""

    x: float
    y: float
    text: str


@dataclass(frozen=True, slots=True)
class BarChart:
    """A bar chart of ``width`` x ``height`` user units."""

    title: str
    description: str
    width: int
    height: int
    bars: tuple[Bar, ...]
    y_ticks: tuple[Tick, ...]
    x_ticks: tuple[Tick, ...]
    baseline: float
    plot_left: float
    plot_right: float


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 or 10 times a power of ten that is >= ``value`` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * power * (1 + 1e-12):
            return step * power
    return 10.0 * power  # pragma: no cover - the loop always returns


def _short(value: float) -> str:
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}" if value != int(value) else str(int(value))


def daily_bars(
    title: str,
    days: Sequence[date],
    values: Mapping[date, int],
    *,
    unit: str,
    width: int = 640,
    height: int = 180,
) -> BarChart:
    """A bar per day of ``days`` (in order), as tall as its value (missing days are 0).

    Args:
        title: the chart's accessible name. unit: what the values count (``tokens``), for the labels.
    """
    plot_w = width - _LEFT - 8
    plot_h = height - _TOP - _BOTTOM
    top = nice_ceiling(max((values.get(d, 0) for d in days), default=0))
    slot = plot_w / max(len(days), 1)
    bar_w = max(slot * 0.7, 1.0)
    baseline = _TOP + plot_h
    bars = []
    x_ticks = []
    every = max(1, math.ceil(len(days) / 8))  # at most ~8 date labels
    for i, day in enumerate(days):
        value = values.get(day, 0)
        h = plot_h * value / top
        x = _LEFT + i * slot + (slot - bar_w) / 2
        bars.append(Bar(round(x, 2), round(baseline - h, 2), round(bar_w, 2), round(h, 2), f"{day}: {value:,} {unit}"))
        if i % every == 0:
            x_ticks.append(Tick(round(x + bar_w / 2, 2), height - 6, day.strftime("%b %d")))
    y_ticks = tuple(Tick(_LEFT - 6, round(baseline - plot_h * f, 2), _short(top * f)) for f in (0.0, 0.5, 1.0))
    total = sum(values.get(d, 0) for d in days)
    first, last = (days[0], days[-1]) if days else ("", "")
    description = f"{total:,} {unit} from {first} to {last}; the largest day is at most {_short(top)}."
    return BarChart(
        title, description, width, height, tuple(bars), y_ticks, tuple(x_ticks), baseline, _LEFT, width - 8.0
    )


@dataclass(frozen=True, slots=True)
class Gauge:
    """A horizontal gauge: ``fill`` of ``width`` used; ``level`` ``ok`` / ``warn`` (80%+) / ``over`` (100%+)."""

    label: str
    width: int
    height: int
    fill: float
    percent: float
    level: str


def gauge(label: str, used: int, limit: int, *, width: int = 400, height: int = 24) -> Gauge:
    """How much of ``limit`` ``used`` is (``limit`` > 0), capped at a full bar."""
    ratio = used / limit if limit > 0 else 1.0
    level = "over" if ratio >= 1 else "warn" if ratio >= 0.8 else "ok"
    return Gauge(label, width, height, round(width * min(ratio, 1.0), 2), round(100 * ratio, 1), level)
