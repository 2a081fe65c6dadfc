"""The server-rendered customer portal (sign-up, API keys, models, usage).

Planned by a later issue; the JSON API under ``/api/v1`` comes first. Nothing is implemented yet.
"""

from __future__ import annotations

__all__: list[str] = []
