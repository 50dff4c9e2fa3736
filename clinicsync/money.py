"""Money, once: source amounts are decimal strings; Stripe wants integer minor units of the currency.

One rounding rule for the whole app (half away from zero, as a till does), done with `decimal`, never float.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

# Stripe's zero-decimal and three-decimal currencies (stripe.com/docs/currencies); every other one has two.
ZERO_DECIMAL_CURRENCIES = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
)
THREE_DECIMAL_CURRENCIES = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})

# The clinic's currency from its country, when no `currency` setting says otherwise (ISO 3166 → ISO 4217).
CURRENCY_OF_COUNTRY = {
    "AU": "aud",
    "NZ": "nzd",
    "GB": "gbp",
    "IE": "eur",
    "US": "usd",
    "CA": "cad",
    "SG": "sgd",
    "ZA": "zar",
}
DEFAULT_CURRENCY = "aud"


class MoneyError(ValueError):
    """An amount that is not a number, or a currency Stripe does not know the shape of."""


def exponent(currency: str) -> int:
    """How many decimal places the currency's minor unit has (AUD 2, JPY 0, KWD 3)."""
    code = currency.strip().lower()
    if len(code) != 3 or not code.isalpha():
        raise MoneyError(f"{currency!r} is not a three-letter currency code")
    if code in ZERO_DECIMAL_CURRENCIES:
        return 0
    if code in THREE_DECIMAL_CURRENCIES:
        return 3
    return 2


def parse_amount(value: object) -> Decimal:
    """A source amount ("81.818", "2367.18", 50, Decimal) as a Decimal; floats go through their shortest text."""
    if isinstance(value, bool) or value is None:
        raise MoneyError(f"{value!r} is not an amount")
    try:
        amount = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise MoneyError(f"{str(value)[:40]!r} is not an amount") from None
    if not amount.is_finite():
        raise MoneyError(f"{value!r} is not an amount")
    return amount


def to_minor_units(value: object, currency: str) -> int:
    """An amount in the currency's minor units, rounded half away from zero: ("81.818", "aud") → 8182."""
    return scaled_minor_units(value, exponent(currency))


def scaled_minor_units(value: object, places: int) -> int:
    """The same rule with an explicit exponent (for mapping rules that name one rather than a currency)."""
    try:
        return int(parse_amount(value).scaleb(places).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    except ArithmeticError:  # an exponent beyond what Decimal holds: no real amount
        raise MoneyError(f"{str(value)[:40]!r} is not an amount") from None


def from_minor_units(units: int, currency: str) -> Decimal:
    """Minor units back to a Decimal amount, for messages and comparisons."""
    return Decimal(units).scaleb(-exponent(currency))


def display(units: int, currency: str) -> str:
    """ "12.50 AUD" for people."""
    places = exponent(currency)
    return f"{from_minor_units(units, currency):.{places}f} {currency.upper()}"


def currency_for_country(country_code: str | None) -> str:
    return CURRENCY_OF_COUNTRY.get((country_code or "").strip().upper(), DEFAULT_CURRENCY)
