"""Reading HTML forms and query strings: values as the services take them, mistakes as ``ValidationError``.

The services check what they are given (names, emails, passwords, roles, scopes, limits); this module only
turns form text into Python values and names the field at fault, so a page can show the message beside it.
Values pass through as typed; nothing is trimmed or changed beyond what each helper says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from quart import request

from bitnet_actor.services.errors import ValidationError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from werkzeug.datastructures import MultiDict

__all__ = ["FormState", "optional_date", "optional_int", "read_form", "text"]

_MAX_FIELD = 4096


@dataclass(slots=True)
class FormState:
    """What a form page re-shows after a refusal: the values typed and the message, keyed by field."""

    values: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    message: str = ""

    @classmethod
    def refused(cls, values: Mapping[str, Any], exc: Exception, *, default_field: str = "") -> FormState:
        """The state after ``exc`` (a ``ValidationError`` names its field)."""
        name = getattr(exc, "field", None) or default_field
        kept = {k: v for k, v in values.items() if "password" not in k and k != "csrf_token"}
        return cls(kept, {name: str(exc)} if name else {}, str(exc))


async def read_form() -> MultiDict[str, str]:
    """The POSTed form fields."""
    form: MultiDict[str, str] = await request.form
    return form


def text(form: Mapping[str, str], name: str, *, required: bool = True) -> str:
    """The field ``name`` as typed.

    Raises:
        ValidationError: missing (when ``required``) or absurdly long.
    """
    value = form.get(name, "")
    if len(value) > _MAX_FIELD:
        raise ValidationError(f"{name} is too long", field=name)
    if required and not value.strip():
        raise ValidationError(f"{name.replace('_', ' ')} is required", field=name)
    return value


def optional_int(form: Mapping[str, str], name: str) -> int | None:
    """The field ``name`` as a whole number, or None when left empty.

    Raises:
        ValidationError: not a whole number.
    """
    raw = form.get(name, "").strip()
    if not raw:
        return None
    if len(raw) > 20 or not raw.lstrip("-").isdigit():
        raise ValidationError(f"{name.replace('_', ' ')} must be a whole number", field=name)
    return int(raw)


def optional_date(form: Mapping[str, str], name: str) -> date | None:
    """The field ``name`` as a date (``YYYY-MM-DD``, what ``<input type=date>`` sends), or None when empty.

    Raises:
        ValidationError: not a date.
    """
    raw = form.get(name, "").strip()
    if not raw:
        return None
    try:
        return date.fromisoformat(raw[:10]) if len(raw) == 10 else _bad_date(name)
    except ValueError:
        return _bad_date(name)


def _bad_date(name: str) -> date:
    raise ValidationError(f"{name.replace('_', ' ')} must be a date as YYYY-MM-DD", field=name)


def day_start(day: date) -> datetime:
    """Midnight (UTC) at the start of ``day``."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
