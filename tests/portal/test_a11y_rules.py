"""The rules every page is checked against (tests/portal/html.py) catch what they are for, and the
stylesheet's colour pairs have WCAG AA contrast."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.portal.html import a11y_problems, csp_problems, parse

GOOD = """<!DOCTYPE html><html lang="en"><head><title>t</title></head><body>
<a href="#main">Skip</a><header><nav aria-label="x"><a href="/">Home</a></nav></header>
<main id="main"><h1>Title</h1><h2>Part</h2><form><label for="a">A</label><input id="a" name="a">
<input type="hidden" name="csrf_token" value="t"><button>Go</button></form>
<svg role="img" aria-label="chart"></svg></main><footer><p>f</p></footer></body></html>"""


def test_a_good_page_passes() -> None:
    assert a11y_problems(parse(GOOD)) == [] and csp_problems(parse(GOOD)) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (('lang="en"', ""), "no lang"),
        (("<h2>Part</h2>", "<h1>Again</h1>"), "2 h1"),
        (("<h2>Part</h2>", "<h3>Part</h3>"), "jumps from h1 to h3"),
        (('<label for="a">A</label>', ""), "has no label"),
        (('<input id="a" name="a">', '<input id="a" name="a" tabindex="2">'), "positive tabindex"),
        (("<button>Go</button>", '<button>Go</button><img src="x">'), "without alt"),
        (('role="img" aria-label="chart"', ""), "<svg>"),
        (("<footer><p>f</p></footer>", ""), "no <footer>"),
        (('<a href="#main">Skip</a>', ""), "skip link"),
        (("<button>Go</button>", "<button></button>"), "without text"),
    ],
)
def test_each_rule_catches_its_fault(change: tuple[str, str], problem: str) -> None:
    html = GOOD.replace(*change)
    assert any(problem in p for p in a11y_problems(parse(html))), html


@pytest.mark.parametrize(
    "bad",
    [
        "<script>alert(1)</script>",
        "<style>p{}</style>",
        '<p style="color:red">x</p>',
        '<p onclick="x()">x</p>',
        '<a href="javascript:alert(1)">x</a>',
    ],
)
def test_csp_rules_catch_inline_code(bad: str) -> None:
    assert csp_problems(parse(GOOD.replace("<h2>Part</h2>", f"<h2>Part</h2>{bad}")))


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


CSS = Path(__file__).resolve().parents[2] / "portal" / "static" / "portal.css"
# (text, background) pairs the stylesheet uses for text.
PAIRS = [("text", "bg"), ("text", "panel"), ("muted", "bg"), ("muted", "panel"), ("link", "bg"), ("link", "panel"),
         ("on-primary", "primary"), ("on-danger", "danger"), ("ok-text", "ok-bg"), ("warn-text", "warn-bg"),
         ("error-text", "error-bg"), ("error-text", "bg")]  # fmt: skip


def test_colour_pairs_have_aa_contrast() -> None:
    colours = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-fA-F]{6});", CSS.read_text()))
    for fg, bg in PAIRS:
        assert contrast(colours[fg], colours[bg]) >= 4.5, (fg, bg, round(contrast(colours[fg], colours[bg]), 2))
    assert contrast(colours["focus"], colours["bg"]) >= 3  # the focus ring against the page


def test_the_stylesheet_shows_keyboard_focus() -> None:
    assert re.search(r":focus-visible\s*\{[^}]*outline:\s*3px solid", CSS.read_text())
