"""Strict request bodies: every field known, every type right, or a 400 naming the field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bitnet_actor.api.errors import ApiError, json_body

__all__ = ["Field", "parse_body", "parse_datetime"]

MAX_JSON_BYTES = 64 * 1024  # account and key requests are small; anything larger is a mistake or an attack


class Field:
    """One expected field: its type(s), whether it is required, and limits for strings and lists."""

    def __init__(self, kind: type | tuple[type, ...], *, required: bool = True, max_len: int = 1000) -> None:
        self.kind = kind
        self.required = required
        self.max_len = max_len


async def parse_body(spec: dict[str, Field]) -> dict[str, Any]:
    """The request's JSON object, checked against ``spec``.

    Raises:
        ApiError: 400 for malformed JSON, an unknown field, a missing field or a wrong type (``param`` names it);
            413 when the body is too large.
    """
    body = await json_body(max_bytes=MAX_JSON_BYTES)
    for name in body:
        if name not in spec:
            raise ApiError(400, f"unknown field {name!r}", param=name, code="unknown_parameter")
    out: dict[str, Any] = {}
    for name, field in spec.items():
        if name not in body or body[name] is None:
            if field.required:
                raise ApiError(400, f"missing required field {name!r}", param=name, code="missing_required_parameter")
            continue
        value = body[name]
        kinds = field.kind if isinstance(field.kind, tuple) else (field.kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise ApiError(400, f"{name!r} must be {_names(kinds)}", param=name, code="invalid_type")
        if not isinstance(value, kinds):
            raise ApiError(400, f"{name!r} must be {_names(kinds)}", param=name, code="invalid_type")
        if isinstance(value, (str, list)) and len(value) > field.max_len:
            raise ApiError(400, f"{name!r} is longer than {field.max_len}", param=name, code="invalid_value")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ApiError(400, f"{name!r} must be a list of strings", param=name, code="invalid_type")
        out[name] = value
    return out


def _names(kinds: tuple[type, ...]) -> str:
    words = {
        str: "a string",
        int: "an integer",
        bool: "a boolean",
        list: "a list",
        dict: "an object",
        float: "a number",
    }
    return " or ".join(words.get(k, k.__name__) for k in kinds)


def parse_datetime(value: object, *, param: str) -> datetime:
    """An ISO 8601 timestamp (timezone required) or Unix seconds.

    Raises:
        ApiError: 400 naming ``param``.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                return parsed
    raise ApiError(400, f"{param!r} must be an ISO 8601 time with a timezone, or Unix seconds", param=param)
