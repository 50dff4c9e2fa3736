"""What every Stripe sandbox endpoint shares: error answers, form decoding and parameter validation.

Stripe receives form pairs (`metadata[k]=v`, `expand[0]=x`) and answers a bad parameter with a 400
`invalid_request_error` that names it; these helpers do both, for every resource the emulator serves. Limits come
from `clinicsync/stripe_limits.py`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from clinicsync import stripe_limits as limits

# -- errors -------------------------------------------------------------------------------------------


class StripeApiError(Exception):
    """An error answer; raised anywhere inside a request and turned into Stripe's error body by `handle`."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        committed: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.extra = extra or {}  # more fields of the error object (a card error's charge, decline_code...)
        # The request changed state before failing (a declined card leaves a failed charge): an idempotent
        # retry must replay this answer, not run again.
        self.committed = committed

    def body(self, request_id: str, livemode: bool | None) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        error["message"] = self.message
        if self.param:
            error["param"] = self.param
        error.update(self.extra)
        if livemode is not None:  # only once a key told us which dashboard the request belongs to
            error["request_log_url"] = _log_url(request_id, livemode)
        return {"error": error}


def _log_url(request_id: str, livemode: bool) -> str:
    return f"https://dashboard.stripe.com/{'' if livemode else 'test/'}logs/{request_id}"


def invalid(message: str, param: str | None = None, code: str | None = None) -> StripeApiError:
    return StripeApiError(400, "invalid_request_error", message, param=param, code=code)


def unknown_param(name: str) -> StripeApiError:
    return invalid(f"Received unknown parameter: {name}", param=name, code="parameter_unknown")


def missing_param(name: str) -> StripeApiError:
    return invalid(f"Missing required param: {name}.", param=name, code="parameter_missing")


def cannot_unset(name: str) -> StripeApiError:
    """Stripe reads "" as "unset this"; a parameter that cannot be unset is refused with this message."""
    return invalid(
        f"You passed an empty string for '{name}'. We assume empty values are an attempt to unset a parameter; "
        f"however '{name}' cannot be unset. You should remove '{name}' from your request or supply a non-empty value.",
        param=name,
    )


def no_such(kind: str, object_id: str, param: str = "id", status: int = 404) -> StripeApiError:
    """`kind` is the object's name as Stripe says it: "customer", "product", "price"."""
    return StripeApiError(
        status, "invalid_request_error", f"No such {kind}: '{object_id}'", param=param, code="resource_missing"
    )


# -- form decoding ------------------------------------------------------------------------------------

_BRACKETS = re.compile(r"(?:\[[^\[\]]*\])*")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")


def parse_form(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Turn Stripe's form pairs (`address[line1]`, `expand[0]`, `metadata[k]`) into nested dicts/lists.

    Indexed arrays stay dicts keyed "0", "1", ... here; `as_list` turns them into lists where a list is
    expected, so a metadata key that happens to be "0" is never mistaken for an array index.
    """
    params: dict[str, Any] = {}
    for raw_key, value in pairs:
        _reject_nul(raw_key, raw_key)
        _reject_nul(value, raw_key)
        name, segments = _split_key(raw_key)
        _assign(params, raw_key, name, segments, value)
    return params


def _split_key(raw_key: str) -> tuple[str, list[str]]:
    name, bracket, rest = raw_key.partition("[")
    if not bracket:
        return raw_key, []
    rest = "[" + rest
    if name == "metadata":
        # A metadata key may itself contain brackets (which Stripe then rejects with a clear message), so the
        # key is everything between the first "[" and the last "]" rather than a parsed path.
        if not rest.endswith("]"):
            raise unknown_param(raw_key)
        return name, [rest[1:-1]]
    if not _BRACKETS.fullmatch(rest):
        raise unknown_param(raw_key)
    return name, _SEGMENT.findall(rest)


def _assign(params: dict[str, Any], raw_key: str, name: str, segments: list[str], value: str) -> None:
    node: dict[str, Any] = params
    key = name
    for position, segment in enumerate(segments):
        if segment == "" and name != "metadata":  # "expand[]=x" appends to a list
            if position != len(segments) - 1:
                raise invalid(f"Invalid array: {raw_key}", param=raw_key)
            existing = node.setdefault(key, [])
            if not isinstance(existing, list):
                raise invalid(f"Invalid array: {raw_key}", param=raw_key)
            existing.append(value)
            return
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise invalid(f"Invalid hash: {raw_key} conflicts with {key}", param=raw_key)
        node, key = child, segment
    if isinstance(node.get(key), dict | list):
        raise invalid(f"Invalid value for {raw_key}: a hash was also given", param=raw_key)
    node[key] = value


def as_list(value: Any, param: str) -> list[Any]:
    """A list parameter: `x[]=a`, `x[0]=a&x[1]=b`, or `x=""` (empty list)."""
    if value == "":
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and all(k.isdigit() for k in value):
        return [value[k] for k in sorted(value, key=int)]
    raise invalid(f"Invalid array: {param}", param=param)


def _reject_nul(text: str, param: str) -> None:
    if "\x00" in text:
        raise invalid(f"Invalid string: {preview(text)}; must not contain null bytes", param=param)


def preview(text: str) -> str:
    shown = text.replace("\x00", "\\u0000")
    return shown if len(shown) <= 10 else shown[:10] + "..."


# -- parameter validation -----------------------------------------------------------------------------

# A field parser turns a parameter's raw value into the field's new value; it gets the parameter's full name
# (e.g. "default_price_data[currency]") so its error can name it as Stripe does.
FieldParser = Callable[[Any, str], Any]


def nested(prefix: str, name: str) -> str:
    """The name Stripe reports for `name` inside the hash `prefix` ("" = top level)."""
    return f"{prefix}[{name}]" if prefix else name


def as_string(value: Any, param: str, cap: int | None = None) -> str:
    if not isinstance(value, str):
        raise invalid(f"Invalid string: {json.dumps(value)}", param=param)
    if cap is not None and len(value) > cap:
        raise invalid(f"Invalid string: {preview(value)}; must be at most {cap} characters", param=param)
    return value


def optional_string(value: Any, param: str, cap: int | None = None) -> str | None:
    """Stripe's convention: an empty string unsets the field."""
    text = as_string(value, param, cap)
    return text or None


def required_string(value: Any, param: str, cap: int | None = None) -> str:
    """A string that cannot be unset: "" is refused with Stripe's message for that."""
    text = as_string(value, param, cap)
    if not text:
        raise cannot_unset(param)
    return text


def as_integer(value: Any, param: str, minimum: int | None = None, maximum: int | None = None) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise invalid(f"Invalid integer: {value if isinstance(value, str) else json.dumps(value)}", param=param)
    number = int(value)
    if minimum is not None and number < minimum:
        raise invalid(f"This value must be greater than or equal to {minimum}.", param=param)
    if maximum is not None and number > maximum:
        raise invalid(f"This value must be less than or equal to {maximum}.", param=param)
    return number


def as_boolean(value: Any, param: str) -> bool:
    """Form values are text: the SDK sends booleans as "true"/"false"."""
    if value in ("true", "false"):
        return value == "true"
    raise invalid(f"Invalid boolean: {value if isinstance(value, str) else json.dumps(value)}", param=param)


def one_of(value: Any, param: str, choices: Iterable[str]) -> str:
    text = as_string(value, param)
    allowed = tuple(choices)
    if text not in allowed:
        raise invalid(f"Invalid {param}: must be one of {', '.join(allowed)}", param=param)
    return text


def metadata_update(value: Any, param: str = "metadata") -> dict[str, str | None] | None:
    """Parsed `metadata` param: None = clear all; else key -> new value, or None to delete that key."""
    if value == "":
        return None
    if not isinstance(value, dict):
        raise invalid(f"Invalid hash: {param}", param=param)
    update: dict[str, str | None] = {}
    for key, item in value.items():
        item_param = f"{param}[{key}]"
        if not key:
            raise invalid("Metadata keys must not be empty.", param=item_param)
        if any(ch in key for ch in limits.METADATA_KEY_FORBIDDEN_CHARS):
            raise invalid(f"Metadata keys can't contain square brackets ('[' or ']'): {key}", param=item_param)
        if len(key) > limits.METADATA_KEY_MAX_CHARS:
            raise invalid(
                f"Metadata keys can have up to {limits.METADATA_KEY_MAX_CHARS} characters, "
                f"but you passed in a key with {len(key)} characters.",
                param=item_param,
            )
        if not isinstance(item, str):
            raise invalid(f"Invalid string: {json.dumps(item)}; metadata values must be strings", param=item_param)
        if len(item) > limits.METADATA_VALUE_MAX_CHARS:
            raise invalid(
                f"Metadata values can have up to {limits.METADATA_VALUE_MAX_CHARS} characters, "
                f"but you passed in a value with {len(item)} characters.",
                param=item_param,
            )
        update[key] = item or None
    return update


def apply_metadata(current: dict[str, str], update: dict[str, str | None] | None) -> dict[str, str]:
    if update is None:
        return {}
    merged = dict(current)
    for key, item in update.items():
        if item is None:
            merged.pop(key, None)
        else:
            merged[key] = item
    if len(merged) > limits.METADATA_MAX_KEYS:
        raise invalid(
            f"Metadata can have up to {limits.METADATA_MAX_KEYS} keys, but this request would leave {len(merged)}.",
            param="metadata",
        )
    return merged


def expand_fields(params: dict[str, Any], allowed: frozenset[str]) -> list[str]:
    if "expand" not in params:
        return []
    fields = as_list(params["expand"], "expand")
    for item in fields:
        if not isinstance(item, str) or item not in allowed:
            raise invalid(f"This property cannot be expanded ({item}).", param="expand")
    return fields


def reject_unknown(params: dict[str, Any], allowed: Iterable[str], prefix: str = "") -> None:
    """Stripe names every parameter it does not take, and reports the first (alphabetically) as `param`."""
    allowed_set = set(allowed)
    unknown = sorted(nested(prefix, name) for name in params if name not in allowed_set)
    if len(unknown) == 1:
        raise unknown_param(unknown[0])
    if unknown:
        raise invalid(f"Received unknown parameters: {', '.join(unknown)}", param=unknown[0], code="parameter_unknown")


def parse_fields(params: Mapping[str, Any], fields: Mapping[str, FieldParser], prefix: str = "") -> dict[str, Any]:
    """Each parameter present in `params` and `fields`, parsed: field name -> new value."""
    return {name: parse(params[name], nested(prefix, name)) for name, parse in fields.items() if name in params}


# -- lists --------------------------------------------------------------------------------------------


def list_limit(params: dict[str, Any]) -> int:
    if "limit" not in params:
        return 10
    return as_integer(params["limit"], "limit", minimum=1, maximum=limits.LIST_MAX_LIMIT)


def created_filter(value: Any) -> Callable[[int], bool]:
    """`created=N` or `created[gt|gte|lt|lte]=N` as a predicate on an object's `created`."""
    if value is None:
        return lambda _created: True
    if isinstance(value, str):
        exact = as_integer(value, "created")
        return lambda created: created == exact
    if not isinstance(value, dict):
        raise invalid("Invalid created filter", param="created")
    bounds: list[tuple[str, int]] = []
    for op, raw in value.items():
        if op not in ("gt", "gte", "lt", "lte"):
            raise unknown_param(f"created[{op}]")
        bounds.append((op, as_integer(raw, f"created[{op}]")))
    tests = {"gt": int.__gt__, "gte": int.__ge__, "lt": int.__lt__, "lte": int.__le__}
    return lambda created: all(tests[op](created, bound) for op, bound in bounds)


def form_value(value: Any) -> Any:
    """Admin seed JSON -> the strings a form request would carry, so one validator serves both."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        return {str(k): form_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [form_value(v) for v in value]
    return value
