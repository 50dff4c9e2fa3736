"""Small, pure transforms from source values to one Stripe field value. Each returns None for "empty".

A transform takes the values of its rule's source fields (in the rule's order), the rule's options and a
TransformContext (what the transform may need to know about the clinic, e.g. its time zone). It never reads
anything else, so the same record and mapping always give the same payload — which is what lets the engine skip
records whose payload hash has not changed.

A value the transform cannot make sense of raises TransformError; the record then fails with that message
instead of sending something wrong to Stripe.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from clinicsync import money

Value = str | int | None

# Cliniko's default market; a business's own `time_zone_identifier` replaces it when known.
DEFAULT_TIME_ZONE = "Australia/Melbourne"
TRUNCATION_MARKER = "…"


class TransformError(ValueError):
    """The source value cannot be turned into the Stripe value; the message says what was wrong."""


@dataclass(frozen=True)
class TransformContext:
    time_zone: str = DEFAULT_TIME_ZONE


DEFAULT_CONTEXT = TransformContext()

Transform = Callable[[Sequence[Any], Mapping[str, Any], TransformContext], Value]


def kind_of(value: Any) -> str:
    """What a source value is, in words, for a message ("an object", "a list", "true/false")."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return "text"
    if isinstance(value, float) and not math.isfinite(value):
        return "a number that is not finite"
    if isinstance(value, int | float | Decimal):
        return "a number"
    return "a value of an unknown kind"


def text_problem(value: Any) -> str | None:
    """Why a source value cannot be read as text, or None when it can: text, a number (its digits are its text;
    nothing else is unambiguous) or empty. A true/false, an object or a list is never turned into Python's
    spelling of it ("True", "{'a': 1}") for Stripe."""
    if value is None or isinstance(value, str | Decimal):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isfinite(value):
        return None
    return f"{kind_of(value)} where text was expected"


def _text(value: Any) -> str | None:
    if (problem := text_problem(value)) is not None:
        raise TransformError(problem)
    if value is None:
        return None
    text = (repr(value) if isinstance(value, float) else str(value)).strip()
    return text or None


def _first(values: Sequence[Any]) -> Any:
    return values[0] if values else None


# --- text ------------------------------------------------------------------------------------------------
def copy(values: Sequence[Any], options: Mapping[str, Any], ctx: TransformContext = DEFAULT_CONTEXT) -> Value:
    return _text(_first(values))


def join(values: Sequence[Any], options: Mapping[str, Any], ctx: TransformContext = DEFAULT_CONTEXT) -> Value:
    """The non-empty values joined by `separator` (default a space); empty parts leave no double separators."""
    parts = [text for value in values if (text := _text(value))]
    return str(options.get("separator", " ")).join(parts) or None


def email(values: Sequence[Any], options: Mapping[str, Any], ctx: TransformContext = DEFAULT_CONTEXT) -> Value:
    """Trimmed; lower-cased when `lowercase` is true (Stripe compares emails case-sensitively in its lists)."""
    text = _text(_first(values))
    if text is not None and options.get("lowercase", False):
        text = text.lower()
    return text


def constant(values: Sequence[Any], options: Mapping[str, Any], ctx: TransformContext = DEFAULT_CONTEXT) -> Value:
    return _text(options.get("value"))


_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_SPACES = re.compile(r"\s+")
_EDGE_PUNCTUATION = " ,;/-–—|"


def template_fields(template: str) -> list[str]:
    """The source fields a template names, in order of first appearance (`{{` and `}}` are literal braces)."""
    names: list[str] = []
    for match in _PLACEHOLDER.finditer(template.replace("{{", "").replace("}}", "")):
        name = match.group(1).strip()
        if name not in names:
            names.append(name)
    return names


def render_template(template: str, fields: Mapping[str, Any]) -> str | None:
    """Fill `{field}` placeholders by plain substitution.

    Deliberately not str.format: format fields can reach attributes (`{x.__class__}`), and a mapping is user input.
    An empty field leaves no doubled spaces or dangling separators ("{title} {first_name}" with no title is just
    the first name).
    """
    escaped = template.replace("{{", "\x00").replace("}}", "\x01")
    filled = _PLACEHOLDER.sub(lambda m: _text(fields.get(m.group(1).strip())) or "", escaped)
    text = _SPACES.sub(" ", filled.replace("\x00", "{").replace("\x01", "}")).strip(_EDGE_PUNCTUATION)
    return text or None


def template(values: Sequence[Any], options: Mapping[str, Any], ctx: TransformContext = DEFAULT_CONTEXT) -> Value:
    """`options.template`, e.g. "{first_name} {last_name}". The rule's sources are the placeholders, in order."""
    text = str(options.get("template") or "")
    names = template_fields(text)
    return render_template(text, dict(zip(names, values, strict=False)))


def truncate_text(text: str, limit: int, marker: str = TRUNCATION_MARKER) -> str:
    """Cut `text` to at most `limit` characters, ending in `marker` so a reader can see it was shortened."""
    if len(text) <= limit:
        return text
    if limit <= len(marker):
        return text[:limit]
    return text[: limit - len(marker)].rstrip() + marker


def truncate(values: Sequence[Any], options: Mapping[str, Any], ctx: TransformContext = DEFAULT_CONTEXT) -> Value:
    """The value cut to `max_chars` with `marker` (default "…")."""
    text = _text(_first(values))
    if text is None:
        return None
    return truncate_text(text, int(options["max_chars"]), str(options.get("marker", TRUNCATION_MARKER)))


# --- phones ----------------------------------------------------------------------------------------------
_AU_NATIONAL = re.compile(r"^(?:[2378]\d{8}|4\d{8}|1[38]00\d{6}|13\d{4})$")


def au_phone_e164(number: Any, *, keep_invalid: bool = True) -> str | None:
    """An Australian phone number as E.164 (+61…), from the forms Cliniko holds.

    Cliniko returns what staff typed: "0491 570 156", "(03) 7010 1234", "+61 491 570 156", "61491570156",
    "0011 61 3 7010 1234", "+61 (0)3 7010 1234", "1300 123 456". A number already in international form keeps its
    country code. One that cannot be read as Australian is returned as typed (`keep_invalid`), because dropping a
    patient's phone silently is worse than sending it unformatted; with keep_invalid=False it becomes None.
    """
    text = _text(number)
    if text is None:
        return None
    international = text.startswith("+")
    digits = re.sub(r"\D", "", text)
    if digits.startswith("0011"):  # Australia's international call prefix
        digits, international = digits[4:], True
    if international and digits.startswith("610"):  # "+61 (0)3 …": the trunk 0 does not belong after +61
        digits = "61" + digits[3:]
    if international:
        return f"+{digits}" if 8 <= len(digits) <= 15 else (text if keep_invalid else None)
    national: str | None = None
    if digits.startswith("61") and _AU_NATIONAL.match(digits[2:]):
        national = digits[2:]
    elif digits.startswith("0") and _AU_NATIONAL.match(digits[1:]):
        national = digits[1:]
    elif _AU_NATIONAL.match(digits):  # 1300/1800/13 numbers and mobiles typed without the 0
        national = digits
    if national is None:
        return text if keep_invalid else None
    return f"+61{national}"


def phone_e164(values: Sequence[Any], options: Mapping[str, Any], ctx: TransformContext = DEFAULT_CONTEXT) -> Value:
    """One phone number string → E.164 (Australian numbers; see au_phone_e164)."""
    return au_phone_e164(_first(values), keep_invalid=options.get("on_invalid", "keep") == "keep")


def preferred_phone(
    values: Sequence[Any], options: Mapping[str, Any], ctx: TransformContext = DEFAULT_CONTEXT
) -> Value:
    """From Cliniko's `patient_phone_numbers` list: the number of the preferred type (`prefer`, default Mobile),
    else the first number listed. `format`: "as_entered" (default) or "e164"."""
    numbers = [entry for entry in (_first(values) or []) if isinstance(entry, Mapping) and _text(entry.get("number"))]
    prefer = options.get("prefer", "Mobile")
    chosen = next((entry for entry in numbers if entry.get("phone_type") == prefer), numbers[0] if numbers else None)
    if chosen is None:
        return None
    if options.get("format", "as_entered") == "e164":
        return au_phone_e164(chosen.get("number"))
    return _text(chosen.get("number"))


# --- dates -----------------------------------------------------------------------------------------------
_PURE_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TransformError(
            f"unknown time zone {name!r} (expected an IANA name such as Australia/Melbourne)"
        ) from None


def local_date_of(value: Any, time_zone: str) -> str | None:
    """The calendar date, in `time_zone`, of a Cliniko date-time ("2026-04-04T13:30:00Z" → "2026-04-05" in
    Melbourne). A pure date ("2026-04-04": issue_date, date_of_birth) is returned unchanged: it has no time, so
    shifting it between zones would move a birthday."""
    text = _text(value)
    if text is None:
        return None
    if _PURE_DATE.match(text):
        try:
            return date.fromisoformat(text).isoformat()
        except ValueError:
            raise TransformError(f"{text!r} is not a valid date") from None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TransformError(f"{text!r} is not a date-time (expected e.g. 2026-04-04T13:30:00Z)") from None
    if moment.tzinfo is None:  # Cliniko's date-times are UTC; a bare one is read the same way
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(zone(time_zone)).date().isoformat()


def local_date(values: Sequence[Any], options: Mapping[str, Any], ctx: TransformContext = DEFAULT_CONTEXT) -> Value:
    """Date-time → the clinic-local date (DST-correct). `time_zone` overrides the clinic's zone."""
    return local_date_of(_first(values), str(options.get("time_zone") or ctx.time_zone))


# --- money -----------------------------------------------------------------------------------------------
def to_minor_units(value: Any, exponent: int = 2) -> int | None:
    """A decimal amount ("81.818", "2367.18", 50.0) → integer minor units (8182, 236718, 5000), by the one money
    rule (clinicsync/money.py: Decimal throughout, half away from zero); empty → None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return money.scaled_minor_units(repr(value) if isinstance(value, float) else value, exponent)
    except money.MoneyError as exc:
        raise TransformError(str(exc)) from None


def minor_units(values: Sequence[Any], options: Mapping[str, Any], ctx: TransformContext = DEFAULT_CONTEXT) -> Value:
    """Decimal string → integer minor units (`exponent`, default 2: cents)."""
    return to_minor_units(_first(values), int(options.get("exponent", 2)))


# --- tables and links ------------------------------------------------------------------------------------
def lookup(values: Sequence[Any], options: Mapping[str, Any], ctx: TransformContext = DEFAULT_CONTEXT) -> Value:
    """`table[value]` (keys compared as text, so Cliniko's status 20 matches "20"); `default` when absent.

    Without a `default` an unknown value is an error rather than a guess: a new Cliniko status must not be sent
    to Stripe as something it is not.
    """
    key = _text(_first(values))
    if key is None:
        return _text(options.get("default"))
    table = {str(key): item for key, item in dict(options.get("table") or {}).items()}
    if key in table:
        return _text(table[key])
    if "default" in options:
        return _text(options.get("default"))
    raise TransformError(f"{key!r} is not in the lookup table ({', '.join(sorted(table)) or 'empty'})")


def link_id(values: Sequence[Any], options: Mapping[str, Any], ctx: TransformContext = DEFAULT_CONTEXT) -> Value:
    """The id in a Cliniko link object (`{"links": {"self": ".../patients/123"}}`): its URL's last segment."""
    link = _first(values)
    links = link.get("links") if isinstance(link, Mapping) else None
    url = links.get("self") if isinstance(links, Mapping) else None
    if not isinstance(url, str) or not url.strip("/"):
        return None
    return _text(url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])


# What each transform reads from its source fields when it is not text (text or a number): a list (of phone
# numbers) or an object (a link). A source value of another kind fails the record with a message naming the field.
TRANSFORM_INPUT: dict[str, str] = {"preferred_phone": "list", "link_id": "object"}


def input_problem(transform: str, value: Any) -> str | None:
    """Why `value` cannot be what `transform` reads, or None when it can (empty always can)."""
    expected = TRANSFORM_INPUT.get(transform, "text")
    if value is None:
        return None
    if expected == "list":
        return None if isinstance(value, list) else f"{kind_of(value)} where a list was expected"
    if expected == "object":
        return None if isinstance(value, Mapping) else f"{kind_of(value)} where a link was expected"
    return text_problem(value)


TRANSFORMS: dict[str, Transform] = {
    "copy": copy,
    "join": join,
    "email": email,
    "template": template,
    "constant": constant,
    "truncate": truncate,
    "phone_e164": phone_e164,
    "preferred_phone": preferred_phone,
    "local_date": local_date,
    "minor_units": minor_units,
    "lookup": lookup,
    "link_id": link_id,
}

# What each transform's options are, for validation and for the editor: name → (type, required).
TRANSFORM_OPTIONS: dict[str, dict[str, tuple[type | tuple[type, ...], bool]]] = {
    "copy": {},
    "join": {"separator": (str, False)},
    "email": {"lowercase": (bool, False)},
    "template": {"template": (str, True)},
    "constant": {"value": (str, True)},
    "truncate": {"max_chars": (int, True), "marker": (str, False)},
    "phone_e164": {"on_invalid": (str, False)},
    "preferred_phone": {"prefer": (str, False), "format": (str, False)},
    "local_date": {"time_zone": (str, False)},
    "minor_units": {"exponent": (int, False)},
    "lookup": {"table": (dict, True), "default": (str, False)},
    "link_id": {},
}
# How many source fields a transform takes: exact count, or None for "one or more".
TRANSFORM_ARITY: dict[str, int | None] = {
    "copy": 1,
    "join": None,
    "email": 1,
    "template": None,
    "constant": 0,
    "truncate": 1,
    "phone_e164": 1,
    "preferred_phone": 1,
    "local_date": 1,
    "minor_units": 1,
    "lookup": 1,
    "link_id": 1,
}
OPTION_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("phone_e164", "on_invalid"): ("keep", "drop"),
    ("preferred_phone", "format"): ("as_entered", "e164"),
    ("preferred_phone", "prefer"): ("Mobile", "Home", "Work", "Fax", "Other"),
}
