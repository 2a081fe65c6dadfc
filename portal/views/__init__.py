"""The portal's pages, one module per area; importing this package registers their routes on
:data:`portal.web.blueprint` (and the site root's on :data:`portal.web.root`)."""

from __future__ import annotations

from portal.views import (
    account,
    audit,
    billing,
    dashboard,
    invitations,
    keys,
    orgs,
    password,
    playground,
    settings,
    team,
    usage,
)

__all__ = [
    "account",
    "audit",
    "billing",
    "dashboard",
    "invitations",
    "keys",
    "orgs",
    "password",
    "playground",
    "settings",
    "team",
    "usage",
]
