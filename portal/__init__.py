"""The server-rendered customer portal under ``/portal`` (and the site root ``/``, which leads to it).

Pages for signing up, in and out, password reset and invitations; for each organization a dashboard, API
keys, team, audit log and settings. Every page calls the services the JSON API under ``/api/v1`` calls, with
the same session cookie and the same role rules; nothing here runs SQL or starts an actor.

Layout: :mod:`portal.web` (blueprints, rendering, flash, static files), :mod:`portal.security` (headers,
CSRF, safe redirects), :mod:`portal.tenancy` (who is signed in, the organization of the URL, permissions),
:mod:`portal.errors` (error pages), :mod:`portal.forms`, :mod:`portal.charts` (SVG geometry),
:mod:`portal.views` (one module per area), ``templates/portal/`` and ``static/``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quart import Quart

__all__ = ["install"]


def install(app: Quart) -> None:
    """Register the portal's pages on ``app``."""
    from portal import views  # noqa: F401  (registers the routes)
    from portal.web import blueprint, root

    app.register_blueprint(blueprint)
    app.register_blueprint(root)
