"""A small PromQL reader for checking dashboards and rules against a live ``/metrics``: the metric names and the
grouping labels an expression uses, and the sample names an exposition really has.

It is no parser: it strips what cannot be a metric name (strings, label matchers, ranges, grouping lists,
Grafana variables, numbers and durations) and reads the identifiers left; an identifier followed by ``(`` is a
function or an aggregation, which must be one PromQL knows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from prometheus_client import Metric


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


AGGREGATIONS = _words("sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio")
FUNCTIONS = _words(
    """abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp clamp_max
    clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month deg delta deriv exp floor
    histogram_avg histogram_count histogram_fraction histogram_quantile histogram_stddev histogram_stdvar
    histogram_sum holt_winters double_exponential_smoothing hour idelta increase info irate label_join
    label_replace last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute month pi
    predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn sin sinh sort
    sort_by_label sort_by_label_desc sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh time
    timestamp vector year start end"""
)
KEYWORDS = _words("by without on ignoring group_left group_right bool offset and or unless atan2 inf nan")
# Labels Prometheus attaches at scrape time (not in the exposition), and the histogram bucket bound.
SCRAPE_LABELS = frozenset({"instance", "job", "le", "__name__"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\]")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)(?:[smhdwy]|ms)?\b")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^{}]*\})")


@dataclass(frozen=True, slots=True)
class Reading:
    """What an expression refers to."""

    metrics: frozenset[str]
    functions: frozenset[str]
    grouping: frozenset[str]  # labels of by/without/on/ignoring/group_left/group_right
    matched: dict[str, frozenset[str]] = field(default_factory=dict)  # metric -> labels in its {...}


def read(expr: str) -> Reading:
    """Return the metric names, functions and labels ``expr`` uses.

    Raises:
        ValueError: unbalanced parentheses, braces or brackets (what is left cannot be read).
    """
    text = _STRING.sub('""', expr)
    depth = 0
    for c in text:
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth < 0:
            break
    if depth:
        raise ValueError(f"unbalanced parentheses in {expr!r}")
    text = _VARIABLE.sub("1", text)
    matched: dict[str, set[str]] = {}
    for name, matchers in _SELECTOR.findall(text):
        if name not in KEYWORDS:
            matched.setdefault(name, set()).update(_LABEL.findall(matchers))
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    grouping: set[str] = set()

    def group(match: re.Match[str]) -> str:
        grouping.update(_IDENT.findall(match.group(2)))
        return f" {match.group(1)} "

    text = _GROUPING.sub(group, text)
    if any(c in text for c in "{}[]"):
        raise ValueError(f"unbalanced braces or brackets in {expr!r}")
    text = _NUMBER.sub(" ", text)
    metrics: set[str] = set()
    functions: set[str] = set()
    for match in _IDENT.finditer(text):
        word = match.group(0)
        follows = text[match.end() :].lstrip()
        if word in KEYWORDS:
            continue
        if follows.startswith("(") or (word in AGGREGATIONS and re.match(r"(by|without)\b", follows)):
            functions.add(word)
        else:
            metrics.add(word)
    return Reading(
        frozenset(metrics), frozenset(functions), frozenset(grouping), {k: frozenset(v) for k, v in matched.items()}
    )


def exported_names(families: Iterable[Metric]) -> dict[str, frozenset[str] | None]:
    """Every series name a scrape of ``families`` can give, with the labels seen on it (None: no sample yet).

    A family's type says which names it has even before its first sample: a counter ``x`` is ``x_total``
    (and ``x_created``), a histogram ``x`` is ``x_bucket``, ``x_sum``, ``x_count`` (and ``x_created``).
    """
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names: dict[str, set[str] | None] = {}
    for family in families:
        for suffix in suffixes.get(family.type, ("",)):
            names.setdefault(family.name + suffix, None)
        for sample in family.samples:
            names[sample.name] = (names.get(sample.name) or set()) | set(sample.labels)
    return {name: None if labels is None else frozenset(labels) for name, labels in names.items()}


def problems(expr: str, exported: dict[str, frozenset[str] | None]) -> list[str]:
    """What is wrong with ``expr`` against the series ``exported`` (see ``exported_names``): unknown metric
    names or functions, labels no series of the expression carries, a histogram_quantile without buckets."""
    try:
        reading = read(expr)
    except ValueError as exc:
        return [str(exc)]
    out = [f"unknown metric {m!r}" for m in sorted(reading.metrics - exported.keys())]
    out += [f"unknown function {f!r}" for f in sorted(reading.functions - FUNCTIONS - AGGREGATIONS)]
    if not reading.metrics:
        out.append("no metric in the expression")
    seen = [exported.get(m) for m in reading.metrics]
    if seen and all(labels is not None for labels in seen):  # every series has samples: their labels are known
        on_series = set().union(*(labels for labels in seen if labels is not None)) | SCRAPE_LABELS
        out += [f"label {label!r} is on none of its series" for label in sorted(reading.grouping - on_series)]
    for metric, used in sorted(reading.matched.items()):
        labels = exported.get(metric)
        if labels is not None:
            out += [f"{metric} has no label {label!r}" for label in sorted(used - labels - SCRAPE_LABELS)]
    if "histogram_quantile" in reading.functions:
        if not any(m.endswith("_bucket") for m in reading.metrics):
            out.append("histogram_quantile over no _bucket series")
        if "le" not in reading.grouping:
            out.append("histogram_quantile without le in its grouping")
    return out
