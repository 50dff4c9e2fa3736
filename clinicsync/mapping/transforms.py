"""Small, pure transforms from source values to one Stripe field value. Each returns None for "empty".

A transform takes the values of its rule's source fields, in order, and the rule's options.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

Transform = Callable[[Sequence[Any], Mapping[str, Any]], str | None]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def copy(values: Sequence[Any], options: Mapping[str, Any]) -> str | None:
    return _text(values[0]) if values else None


def join(values: Sequence[Any], options: Mapping[str, Any]) -> str | None:
    parts = [text for value in values if (text := _text(value))]
    return str(options.get("separator", " ")).join(parts) or None


def email(values: Sequence[Any], options: Mapping[str, Any]) -> str | None:
    text = copy(values, options)
    if text is not None and options.get("lowercase", False):
        text = text.lower()
    return text


def preferred_phone(values: Sequence[Any], options: Mapping[str, Any]) -> str | None:
    """The number of the preferred phone type (Mobile by default), else the first number listed."""
    numbers = [entry for entry in (values[0] or []) if isinstance(entry, Mapping) and _text(entry.get("number"))]
    prefer = options.get("prefer", "Mobile")
    chosen = next((entry for entry in numbers if entry.get("phone_type") == prefer), numbers[0] if numbers else None)
    return _text(chosen.get("number")) if chosen else None


def constant(values: Sequence[Any], options: Mapping[str, Any]) -> str | None:
    return _text(options.get("value"))


TRANSFORMS: dict[str, Transform] = {
    "copy": copy,
    "join": join,
    "email": email,
    "preferred_phone": preferred_phone,
    "constant": constant,
}
