"""Domain rules, one module per area (tenancy, keys, auth tokens, billing, models), over the stores.

The HTTP API, the portal and the actors all call these, so each rule lives in one place.
"""

from __future__ import annotations
