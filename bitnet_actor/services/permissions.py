"""Roles and what each may do: the one table, enforced in one place (``require``).

| permission        | owner | admin | member | viewer | billing |
|-------------------|:-----:|:-----:|:------:|:------:|:-------:|
| org:read          |   x   |   x   |   x    |   x    |    x    |
| org:update        |   x   |   x   |        |        |         |
| members:read      |   x   |   x   |   x    |   x    |    x    |
| members:manage    |   x   |   x   |        |        |         |
| owners:manage     |   x   |       |        |        |         |
| keys:read         |   x   |   x   |   x    |   x    |         |
| keys:manage       |   x   |   x   |   x    |        |         |
| models:read       |   x   |   x   |   x    |   x    |         |
| models:write      |   x   |   x   |   x    |        |         |
| inference         |   x   |   x   |   x    |        |         |
| billing:read      |   x   |   x   |        |        |    x    |
| billing:manage    |   x   |       |        |        |    x    |
| audit:read        |   x   |   x   |        |        |         |

``members:manage`` covers inviting, changing roles and removing members; granting, changing or removing the
*owner* role also needs ``owners:manage``. ``keys:manage`` lets members create keys, but a key's scopes can
never exceed what its creator's role allows (``scopes_allowed``).

API keys carry scopes instead of a role: ``SCOPE_PERMISSIONS`` maps each scope to the permissions it grants.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from bitnet_actor.services.errors import PermissionDeniedError

__all__ = [
    "PERMISSIONS",
    "ROLES",
    "ROLE_PERMISSIONS",
    "SCOPES",
    "SCOPE_PERMISSIONS",
    "Permission",
    "Role",
    "require",
    "role_allows",
    "scopes_allowed",
]

Role = Literal["owner", "admin", "member", "viewer", "billing"]
Permission = Literal[
    "org:read",
    "org:update",
    "members:read",
    "members:manage",
    "owners:manage",
    "keys:read",
    "keys:manage",
    "models:read",
    "models:write",
    "inference",
    "billing:read",
    "billing:manage",
    "audit:read",
]

# The literals above are the one list of roles and permissions.
ROLES: Final[tuple[Role, ...]] = get_args(Role)
PERMISSIONS: Final[tuple[Permission, ...]] = get_args(Permission)

_ALL: Final = frozenset(PERMISSIONS)
ROLE_PERMISSIONS: Final[dict[Role, frozenset[Permission]]] = {
    "owner": _ALL,
    "admin": _ALL - {"owners:manage", "billing:manage"},
    "member": frozenset(
        {"org:read", "members:read", "keys:read", "keys:manage", "models:read", "models:write", "inference"}
    ),
    "viewer": frozenset({"org:read", "members:read", "keys:read", "models:read"}),
    "billing": frozenset({"org:read", "members:read", "billing:read", "billing:manage"}),
}

SCOPES: Final = ("inference", "models:read", "models:write", "billing:read", "admin")
SCOPE_PERMISSIONS: Final[dict[str, frozenset[Permission]]] = {
    "inference": frozenset({"inference", "models:read"}),
    "models:read": frozenset({"models:read"}),
    "models:write": frozenset({"models:read", "models:write"}),
    "billing:read": frozenset({"billing:read"}),
    "admin": ROLE_PERMISSIONS["admin"],
}


def role_allows(role: str, permission: Permission) -> bool:
    """Whether ``role`` grants ``permission`` (unknown roles grant nothing)."""
    return permission in ROLE_PERMISSIONS.get(role, frozenset())  # type: ignore[call-overload]


def scopes_allowed(role: str) -> frozenset[str]:
    """The API-key scopes a member with ``role`` may put on a key: those whose permissions the role has."""
    granted = ROLE_PERMISSIONS.get(role, frozenset())  # type: ignore[call-overload]
    return frozenset(scope for scope, perms in SCOPE_PERMISSIONS.items() if perms <= granted)


def require(*, permission: Permission, role: str | None = None, scopes: frozenset[str] | None = None) -> None:
    """Allow or refuse: the one check every route goes through.

    Exactly one of ``role`` (a signed-in member) or ``scopes`` (an API key) describes the caller.

    Raises:
        PermissionDeniedError: the role or scopes do not grant ``permission``.
    """
    if role is not None:
        if not role_allows(role, permission):
            raise PermissionDeniedError(f"the {role} role does not allow {permission}")
        return
    granted: set[str] = set()
    for scope in scopes or ():
        granted |= SCOPE_PERMISSIONS.get(scope, frozenset())
    if permission not in granted:
        raise PermissionDeniedError(f"this API key lacks a scope that allows {permission}")
