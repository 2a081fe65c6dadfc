"""The printable HTML page of an invoice: one Jinja2 template with autoescaping, no script at all.

The page's only style is the inline ``<style>`` below, allowed by its hash in the Content-Security-Policy
(``default-src 'none'``): nothing else loads or runs, whatever an organization or model name holds.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import timedelta
from typing import TYPE_CHECKING

import jinja2

if TYPE_CHECKING:
    from decimal import Decimal

    from bitnet_actor.services.billing.invoices import Invoice

__all__ = ["HTML_HEADERS", "render_invoice"]

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2rem;color:#111}"
    "table{border-collapse:collapse;width:100%}th,td{padding:.4rem .6rem;border-bottom:1px solid #ccc}"
    "td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}tfoot td{font-weight:bold}"
    ".status{text-transform:uppercase;letter-spacing:.1em}@media print{body{margin:0}}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

HTML_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; form-action 'none';"
        " frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "private, no-store",
}

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Invoice {{ invoice.period_label }} - {{ org_name }}</title>
<style>{{ style | safe }}</style>
</head>
<body>
<h1>Invoice {{ invoice.period_label }}</h1>
<p class="status">{{ invoice.status }}</p>
<dl>
<dt>Organization</dt><dd>{{ org_name }}</dd>
<dt>Invoice</dt><dd>{{ invoice.id }}</dd>
<dt>Plan</dt><dd>{{ invoice.plan }}</dd>
<dt>Period</dt><dd>{{ start }} to {{ end }}, inclusive (UTC)</dd>
{% if invoice.finalized_at %}<dt>Finalized</dt><dd>{{ invoice.finalized_at.isoformat() }}</dd>{% endif %}
</dl>
<table>
<thead><tr><th>#</th><th>Description</th><th class="n">Quantity</th><th class="n">Price per 1M tokens</th>
<th class="n">Amount</th></tr></thead>
<tbody>
{% for line in invoice.lines %}<tr><td>{{ line.line_no }}</td><td>{{ line.description }}</td>
<td class="n">{{ "{:,}".format(line.quantity) }}</td>
<td class="n">{% if line.kind != "base_fee" %}{{ price(line.unit_price_per_m) }}{% endif %}</td>
<td class="n">{{ money(line.amount_cents) }}</td></tr>
{% else %}<tr><td colspan="5">No charges this month.</td></tr>
{% endfor %}
</tbody>
<tfoot><tr><td colspan="4">Total ({{ invoice.currency | upper }})</td>
<td class="n">{{ money(invoice.total_cents) }}</td></tr></tfoot>
</table>
<p>{{ "{:,}".format(invoice.input_tokens) }} input tokens, {{ "{:,}".format(invoice.output_tokens) }} output
tokens, {{ "{:,}".format(invoice.requests) }} requests. Each line's amount is rounded half-up to a cent.</p>
</body>
</html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_PAGE = _ENV.from_string(_TEMPLATE)


def _money(cents: int) -> str:
    return f"${cents // 100:,}.{cents % 100:02d}"


def _price(cents_per_m: Decimal) -> str:
    whole, _, frac = f"{(cents_per_m / 100).normalize():f}".partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"


def render_invoice(invoice: Invoice, *, org_name: str) -> str:
    """The page of ``invoice`` for the organization called ``org_name`` (escaped like every value)."""
    from bitnet_actor.services.billing.invoices import period_bounds

    start, end = period_bounds(invoice.period)
    last = end - timedelta(days=1)
    return _PAGE.render(
        invoice=invoice,
        org_name=org_name,
        style=_STYLE,
        start=start.date().isoformat(),
        end=last.date().isoformat(),
        money=_money,
        price=_price,
    )
