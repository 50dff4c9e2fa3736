"""The mirror's lines: each Cliniko line in minor units, and one labelled rounding line where the rounded lines
miss Cliniko's total (three- and four-decimal prices, percentage and monetary discounts, tax in and out)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from clinicsync.streams.invoice_lines import (
    ROUNDING_DESCRIPTION,
    ROUNDING_ID,
    LineError,
    MirrorLine,
    from_text,
    line_total,
    mirror_lines,
    price_fits,
    to_text,
)

EXCLUSIVE, INCLUSIVE = 2, 3


def test_computed_line_totals_follow_quantity_discount_and_tax() -> None:
    needling = {"quantity": "3", "unit_price": "18.1818", "discount_percentage": "12.5"}
    assert line_total(needling, EXCLUSIVE) == Decimal("47.727225")
    roller = {"quantity": "1", "unit_price": "39.9545", "tax_rate": "10.0"}
    assert line_total(roller, EXCLUSIVE) == Decimal("43.94995")
    assert line_total(roller, INCLUSIVE) == Decimal("39.9545")  # the price already holds the tax
    review = {"quantity": "1", "unit_price": "95.0", "is_monetary_discount": True, "discounted_amount": "5.0"}
    assert line_total(review, EXCLUSIVE) == Decimal("90.0")
    # Cliniko's own figure wins when given (typed as a JSON number in the spec).
    assert line_total({**needling, "total_including_tax": 47.7272}, EXCLUSIVE) == Decimal("47.7272")


def test_lines_that_add_up_need_no_rounding_line() -> None:
    items = [
        {"id": "1", "name": "Dry needling", "quantity": "3", "unit_price": "18.1818", "discount_percentage": "12.5"},
        {"id": "2", "name": "Foam roller", "quantity": "1", "unit_price": "39.9545", "tax_rate": "10.0"},
        {"id": "3", "name": "Review", "unit_price": "95.0", "is_monetary_discount": True, "discounted_amount": "5"},
    ]
    lines = mirror_lines(
        items, calculation_method=EXCLUSIVE, total_amount="181.68", currency="aud", product_of={"2": "77"}
    )
    assert lines == [
        MirrorLine("1", "Dry needling × 3", 4773),
        MirrorLine("2", "Foam roller", 4395, product_id="77", quantity=1),
        MirrorLine("3", "Review", 9000),
    ]
    assert sum(line.amount for line in lines) == 18168


@pytest.mark.parametrize(
    ("price", "count", "total", "rounding"),
    [
        ("18.1818", 3, "54.55", 1),  # 3 × 18.18 = 54.54, Cliniko rounds 54.5454 up to 54.55
        ("65.125", 3, "195.38", -1),  # 3 × 65.13 = 195.39, Cliniko rounds 195.375 to 195.38
        ("81.818", 2, "163.64", 0),
    ],
)
def test_a_labelled_rounding_line_makes_the_total_exact(price: str, count: int, total: str, rounding: int) -> None:
    items = [{"id": str(n), "name": "Consult", "unit_price": price} for n in range(count)]
    lines = mirror_lines(items, calculation_method=INCLUSIVE, total_amount=total, currency="aud")
    assert sum(line.amount for line in lines) == int(Decimal(total) * 100)
    rounding_lines = [line for line in lines if line.item_id == ROUNDING_ID]
    if rounding:
        assert rounding_lines == [MirrorLine(ROUNDING_ID, ROUNDING_DESCRIPTION, rounding)]
    else:
        assert rounding_lines == []


def test_deleted_lines_are_left_out_and_zero_decimal_currencies_work() -> None:
    items = [
        {"id": "1", "name": "Consult", "unit_price": "1000.6"},
        {"id": "2", "name": "Gone", "unit_price": "50", "deleted_at": "2026-01-01T00:00:00Z"},
    ]
    lines = mirror_lines(items, calculation_method=INCLUSIVE, total_amount="1001", currency="jpy")
    assert lines == [MirrorLine("1", "Consult", 1001)]


def test_a_product_price_is_used_only_when_it_is_the_line_amount() -> None:
    line = MirrorLine("9", "Tape × 3", 4487, product_id="5", quantity=3)
    assert not price_fits(line, 1496)  # 3 × 14.96 = 44.88, the line (3 × 14.955 = 44.865) is 44.87
    assert price_fits(MirrorLine("9", "Tape × 2", 2992, product_id="5", quantity=2), 1496)
    assert not price_fits(MirrorLine("9", "Tape", 1496), 1496)  # not a product line


def test_a_fractional_quantity_is_never_a_price_quantity_and_bad_amounts_say_which_line() -> None:
    items = [{"id": "4", "name": "Tape", "quantity": "1.5", "unit_price": "10"}]
    (line,) = mirror_lines(
        items, calculation_method=INCLUSIVE, total_amount="15", currency="aud", product_of={"4": "8"}
    )
    assert line.quantity is None and not price_fits(line, 1000)
    with pytest.raises(LineError, match="line 5 \\(Odd\\)"):
        mirror_lines(
            [{"id": "5", "name": "Odd", "unit_price": "ten"}],
            calculation_method=INCLUSIVE,
            total_amount="1",
            currency="aud",
        )


def test_lines_survive_the_payload_text() -> None:
    lines = [MirrorLine("1", "Consult", 9500), MirrorLine("2", "Tape × 2", 2991, "5", 2)]
    assert from_text(to_text(lines)) == lines


def test_a_difference_rounding_cannot_explain_is_an_error_never_a_rounding_line() -> None:
    # A discount not applied (or a line missing): 95.00 of lines against a 90.00 total.
    items = [{"id": "1", "name": "Review", "unit_price": "95.0", "discounted_amount": "5"}]
    with pytest.raises(LineError, match=r"add up to 95\.00 AUD but the invoice total is 90\.00 AUD"):
        mirror_lines(items, calculation_method=INCLUSIVE, total_amount="90.0", currency="aud")
    with pytest.raises(LineError, match=r"difference of 95\.00 AUD"):  # no lines read at all
        mirror_lines([], calculation_method=INCLUSIVE, total_amount="95.0", currency="aud")
    # Three lines can be off by at most 1.5 cents together (2, rounded up): 3 cents is too many, 1 is rounding.
    three = [{"id": str(n), "name": "Consult", "unit_price": "18.1818"} for n in range(3)]
    with pytest.raises(LineError):
        mirror_lines(three, calculation_method=INCLUSIVE, total_amount="54.57", currency="aud")
    assert mirror_lines(three, calculation_method=INCLUSIVE, total_amount="54.55", currency="aud")[-1].amount == 1
