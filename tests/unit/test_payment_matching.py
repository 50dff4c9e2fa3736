"""The payment window and local dates of streams/payment_matching.py: pure, no HTTP."""

from __future__ import annotations

from datetime import UTC, date, datetime

from clinicsync.streams import payment_matching as pm


def epoch(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def test_the_window_runs_from_days_before_to_days_after_the_issue_date_inclusive() -> None:
    window = pm.payment_window(date(2026, 4, 5), 7, 30)
    assert (window.first, window.last) == (date(2026, 3, 29), date(2026, 5, 5))
    assert window.holds(date(2026, 3, 29)) and window.holds(date(2026, 5, 5))
    assert not window.holds(date(2026, 3, 28)) and not window.holds(date(2026, 5, 6))
    assert pm.payment_window(date(2026, 4, 5), 0, 0).holds(date(2026, 4, 5))


def test_a_payment_time_is_the_local_date_in_the_zone_dst_correct() -> None:
    april = epoch("2026-04-04T13:30:00")
    assert pm.local_date(april, "Australia/Melbourne") == date(2026, 4, 5)  # AEDT, +11
    assert pm.local_date(april, "Australia/Brisbane") == date(2026, 4, 4)  # AEST all year, +10
    assert pm.local_date(epoch("2026-04-04T16:30:00"), "Australia/Melbourne") == date(2026, 4, 5)  # AEST again
    assert pm.local_date(epoch("2026-10-03T13:30:00"), "Australia/Melbourne") == date(2026, 10, 3)  # before switch
    assert pm.local_date(epoch("2026-10-04T13:30:00"), "Australia/Melbourne") == date(2026, 10, 5)  # after it
    assert pm.local_date(epoch("2026-10-04T13:30:00"), "Australia/Brisbane") == date(2026, 10, 4)


def test_the_listing_covers_every_window_with_slack_for_the_zone() -> None:
    windows = [pm.payment_window(date(2026, 4, 5), 7, 30), pm.payment_window(date(2026, 1, 10), 7, 30)]
    start, end = pm.listing_range(windows) or (0, 0)
    assert start <= epoch("2026-01-03T00:00:00") - 13 * 3600
    assert end >= epoch("2026-05-05T23:59:59") + 14 * 3600
    assert pm.listing_range([]) is None


def payment(pid: str, amount: int, customer: str | None, created: str, **extra: object) -> pm.Payment:
    fields: dict = {"refunded": False, "billing_email": None, "billing_name": None, "metadata": {}} | extra
    return pm.Payment(pid, "payment_intent", amount, "aud", customer, epoch(created), **fields)


def bill(sid: str, amount: int, customer: str | None = "cus_1", issued: date = date(2026, 4, 5)) -> pm.Bill:
    return pm.Bill(
        sid, sid, amount, "aud", issued, "Australia/Melbourne", customer, "p1", "Ann Lee", True,
        window=pm.payment_window(issued, 7, 30),
    )  # fmt: skip


def decide(
    bills: list[pm.Bill], payments: list[pm.Payment], linked: dict[str, str] | None = None, bookings: tuple = ()
) -> dict:
    index = pm.PaymentIndex(payments, linked or {}, "cliniko_invoice_id", set(bookings))
    return pm.decide_bills(bills, index, lambda person, email: email == "ann@example.com")


def test_certain_only_when_one_unlinked_unrefunded_exact_payment_fits() -> None:
    one = decide([bill("i1", 9550)], [payment("pi_1", 9550, "cus_1", "2026-04-06T01:00:00")])
    assert one["i1"].kind == "link" and one["i1"].stripe_id == "pi_1"
    two = decide(
        [bill("i1", 9550)],
        [payment("pi_1", 9550, "cus_1", "2026-04-06T01:00:00"), payment("pi_2", 9550, "cus_1", "2026-04-07T01:00:00")],
    )
    assert two["i1"].kind == "review" and set(two["i1"].candidates) == {"pi_1", "pi_2"}
    taken = decide([bill("i1", 9550)], [payment("pi_1", 9550, "cus_1", "2026-04-06T01:00:00")], {"pi_1": "i0"})
    assert taken["i1"].kind == "none"
    refunded = decide([bill("i1", 9550)], [payment("pi_1", 9550, "cus_1", "2026-04-06T01:00:00", refunded=True)])
    assert refunded["i1"].kind == "none" and "refunded" in refunded["i1"].message
    shared = decide([bill("i1", 9550), bill("i2", 9550)], [payment("pi_1", 9550, "cus_1", "2026-04-06T01:00:00")])
    assert shared["i1"].kind == shared["i2"].kind == "review"


def test_plausible_payments_go_to_review_with_their_candidates() -> None:
    other = decide(
        [bill("i1", 9550)],
        [payment("pi_9", 9550, None, "2026-04-06T01:00:00", billing_email="ann@example.com")],
    )
    assert other["i1"].kind == "review" and other["i1"].candidates == ("pi_9",)
    by_name = decide(
        [bill("i1", 9550)], [payment("pi_9", 9550, "cus_x", "2026-04-06T01:00:00", billing_name="ann  LEE")]
    )
    assert by_name["i1"].candidates == ("pi_9",)
    split = decide(
        [bill("i1", 9550)],
        [payment("pi_a", 6000, "cus_1", "2026-04-06T01:00:00"), payment("pi_b", 3550, "cus_1", "2026-04-06T02:00:00")],
    )
    assert split["i1"].kind == "review" and set(split["i1"].candidates) == {"pi_a", "pi_b"}
    both = decide([bill("i1", 9550), bill("i2", 4000)], [payment("pi_s", 13550, "cus_1", "2026-04-06T01:00:00")])
    assert both["i1"].candidates == both["i2"].candidates == ("pi_s",)


def test_metadata_naming_the_invoice_links_it_and_a_payment_naming_another_is_never_a_candidate() -> None:
    named = decide(
        [bill("i1", 9550), bill("i2", 9550)],
        [payment("pi_1", 9550, "cus_1", "2026-04-06T01:00:00", metadata={"cliniko_invoice_id": "i2"})],
    )
    assert named["i2"].kind == "link" and named["i2"].stripe_id == "pi_1"
    assert named["i1"].kind == "none"


def test_deciding_each_bill_as_it_is_read_gives_the_decisions_of_deciding_them_all_after_the_read() -> None:
    """A bill no later bill can change is decided as it comes; the others wait for every bill. Over random mixes of
    shared exact payments, splits, payments covering two bills and named ones, that is exactly the decision taken
    with every bill known."""
    import random

    seed = random.randrange(1_000_000)
    print(f"seed {seed}")
    rng = random.Random(seed)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    for _ in range(200):
        amounts = rng.sample([4000, 5550, 9550, 13550, 2000], 3)
        bills = [
            bill(f"i{n}", rng.choice(amounts), rng.choice(["cus_1", "cus_2", None]), date(2026, 4, rng.randint(1, 20)))
            for n in range(rng.randint(1, 6))
        ]
        for b in bills:
            b.paid = rng.random() < 0.8
        payments = [
            payment(
                f"pi_{n}",
                rng.choice([*amounts, amounts[0] + amounts[1]]),
                rng.choice(["cus_1", "cus_2", None]),
                f"2026-04-{rng.randint(1, 28):02d}T0{rng.randint(0, 9)}:00:00",
                refunded=rng.random() < 0.1,
                billing_email=rng.choice([None, "ann@example.com"]),
                metadata={"cliniko_invoice_id": rng.choice([b.source_id for b in bills])} if rng.random() < 0.1 else {},
            )
            for n in range(rng.randint(0, 6))
        ]
        index = pm.PaymentIndex(payments, {}, "cliniko_invoice_id")
        same = lambda person, email: email == "ann@example.com"  # noqa: E731
        together = pm.decide_bills(bills, index, same, now)
        as_read = {
            b.source_id: pm.decide_bill(b, index, same, now) for b in bills if not pm.waits_for_every_bill(b, index)
        }
        waiting = [b for b in bills if b.source_id not in as_read]
        as_read |= pm.decide_bills(waiting, index, same, now, every=bills)
        assert as_read == together


def test_an_exact_payment_waits_for_every_bill_and_a_named_one_does_not() -> None:
    index = pm.PaymentIndex(
        [
            payment("pi_1", 9550, "cus_1", "2026-04-06T01:00:00"),
            payment("pi_2", 4000, "cus_1", "2026-04-06T01:00:00", metadata={"cliniko_invoice_id": "i2"}),
            payment("pi_3", 13550, "cus_2", "2026-04-06T01:00:00"),
        ],
        {},
        "cliniko_invoice_id",
    )
    assert pm.waits_for_every_bill(bill("i1", 9550), index)  # another bill may fit pi_1 exactly too
    assert not pm.waits_for_every_bill(bill("i2", 4000), index)  # pi_2 names it: no other bill can have it
    assert pm.waits_for_every_bill(bill("i3", 9550, "cus_2"), index)  # pi_3 may pay it and another together
    assert not pm.waits_for_every_bill(bill("i4", 9999), index)  # nothing free of cus_1 fits or is larger
    assert pm.decide_bill(bill("i4", 9999), index, lambda person, email: False).kind == "none"


def test_the_invoice_mapping_sends_id_number_and_status_only_and_refuses_clinical_fields() -> None:
    from dataclasses import replace

    from clinicsync.mapping.apply import map_record
    from clinicsync.mapping.defaults import CLINIKO_INVOICES
    from clinicsync.mapping.fields import FieldCatalogue
    from clinicsync.mapping.spec import rule
    from clinicsync.mapping.validate import validate_mapping

    invoice = {
        "id": "7001",
        "number": 5001,
        "status": 40,
        "notes": "Left knee, follow-up in 2 weeks",
        "patient_extra_information": "Private health: invented fund",
        "total_amount": "-95.5",
        "issue_date": "2026-04-05",
    }
    mapped = map_record(CLINIKO_INVOICES, invoice)
    sent = {target: value for target, value in mapped.payload.items() if value is not None}  # None: the marker unset
    assert sent == {
        "metadata.cliniko_invoice_id": "7001",
        "metadata.cliniko_invoice_number": "5001",
        "metadata.cliniko_invoice_status": "open_credit",
    }
    catalogue = FieldCatalogue.for_source("cliniko", "invoice")
    assert validate_mapping(CLINIKO_INVOICES, catalogue, set()) == []
    for field in ("notes", "patient_extra_information"):
        leaking = replace(CLINIKO_INVOICES, rules=(*CLINIKO_INVOICES.rules, rule("metadata.x", field)))
        assert [p.rule for p in validate_mapping(leaking, catalogue, set())] == ["clinical-field"], field


def test_a_calcom_booking_payment_is_never_linked_to_an_invoice_only_offered_in_review() -> None:
    paid_at = "2026-04-06T01:00:00"
    by_metadata = [
        payment("pi_c", 9550, "cus_1", paid_at, metadata={"identifier": "cal.com", "bookingId": "812"}),
        payment("pi_c", 9550, "cus_1", paid_at, metadata={"identifier": "cal.com"}),
        payment("pi_c", 9550, "cus_1", paid_at, metadata={"bookingId": "812"}),
    ]
    for booking in by_metadata:
        decided = decide([bill("i1", 9550)], [booking])["i1"]
        assert decided.kind == "review" and decided.candidates == ("pi_c",), decided
        assert decided.reason == pm.BOOKING_PAYMENT and "Cal.com" in decided.message
    linked = decide([bill("i1", 9550)], [payment("pi_c", 9550, "cus_1", paid_at)], bookings=("pi_c",))["i1"]
    assert linked.kind == "review" and "Cal.com booking" in linked.message
    named = payment("pi_c", 9550, "cus_1", paid_at, metadata={"bookingId": "812", "cliniko_invoice_id": "i1"})
    assert decide([bill("i1", 9550)], [named])["i1"].kind == "review"  # named by an earlier wrong link
    beside = decide([bill("i1", 9550)], [payment("pi_1", 9550, "cus_1", "2026-04-07T01:00:00"), by_metadata[0]])["i1"]
    assert beside.kind == "link" and beside.stripe_id == "pi_1"  # the booking's payment is not a rival


def test_every_not_paid_through_stripe_is_revisited_while_the_window_is_open_by_the_clinics_date() -> None:
    refunded = [payment("pi_r", 9550, "cus_1", "2026-04-06T01:00:00", refunded=True)]
    outside = [payment("pi_o", 9550, "cus_1", "2026-03-01T01:00:00")]
    last_day = date(2026, 5, 5)  # issued on the 5th of April, 30 days after
    # 13:30 UTC on the 5th of May is 23:30 there in Melbourne (+10): still the window's last day; an hour later not.
    still, past = datetime(2026, 5, 5, 13, 30, tzinfo=UTC), datetime(2026, 5, 5, 14, 30, tzinfo=UTC)
    for payments in (refunded, outside, []):
        index = pm.PaymentIndex(payments, {}, "cliniko_invoice_id")
        one = bill("i1", 9550)
        assert one.window is not None and one.window.last == last_day
        open_ = pm.decide_bills([one], index, lambda *_: False, now=still)["i1"]
        assert open_.kind == "none" and open_.message.startswith(pm.NOT_PAID_THROUGH_STRIPE) and open_.revisit
        assert not pm.decide_bills([one], index, lambda *_: False, now=past)["i1"].revisit
    # Late evening UTC is already the next day in Melbourne: the window closed there, though not in UTC.
    index = pm.PaymentIndex([], {}, "cliniko_invoice_id")
    late = datetime(2026, 5, 5, 23, 0, tzinfo=UTC)
    assert not pm.decide_bills([bill("i1", 9550)], index, lambda *_: False, now=late)["i1"].revisit


class FakeGateway:
    def __init__(self, charges: list[dict]) -> None:
        self.charges = charges
        self.listings: list[dict] = []

    def iter_objects(self, stripe_object: str, created_since=None, filters=None):
        self.listings.append({"object": stripe_object, **(filters or {})})
        return iter(self.charges)


class FakeLinks:
    def stripe_id(self, stream: str, source_id: str, role: str | None = None) -> str | None:
        return {"p1": "cus_1"}.get(source_id)

    def same_person(self, stream: str, source_id: str, email: str | None) -> bool:
        return False

    def all_stripe_ids(self, stream: str) -> dict[str, str]:
        return {"p1": "cus_1"}

    def linked_by(self, stream: str, stripe_ids) -> dict[str, list[str]]:
        self.asked = (stream, set(stripe_ids))
        if stream == "calcom.booking_payments":
            return {"pi_1": ["b1"]} if self.booked and "pi_1" in stripe_ids else {}
        return {"cus_1": ["p1"]} if "cus_1" in stripe_ids else {}

    def people(self, stream: str, email: str | None) -> list[str]:
        return ["p2"] if email == "ann@example.com" else []

    booked = False


class FakeCliniko:
    def __init__(self, businesses: list[dict] | None = None) -> None:
        self.businesses = businesses or [{"id": "b1", "time_zone_identifier": "Australia/Brisbane"}]
        self.asked: list[tuple[str, list]] = []

    def iter_pages(self, path: str, params=None):
        from types import SimpleNamespace

        self.asked.append((path, list(params or [])))
        yield SimpleNamespace(records=self.businesses if path == "/businesses" else [{"id": "7001"}])

    def get_businesses(self) -> list[dict]:
        return list(next(self.iter_pages("/businesses")).records)


def test_invoices_are_judged_again_only_for_customers_with_a_payment_since_the_last_run() -> None:
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    from clinicsync.streams.base import MatchSetup, StreamSettings
    from clinicsync.streams.cliniko_invoices import InvoiceMatcher

    charges = [
        {"id": "ch_1", "status": "succeeded", "customer": "cus_1"},
        {"id": "ch_2", "status": "failed", "customer": "cus_2"},
        {"id": "ch_3", "status": "succeeded", "customer": "cus_unknown"},
        {"id": "ch_4", "status": "succeeded", "customer": None, "billing_details": {"email": "ann@example.com"}},
    ]
    settings = StreamSettings("Australia/Melbourne", "aud")
    for since, expected in ((None, []), (1_700_000_000, [{"id": "7001"}] * 2)):
        gateway, cliniko = FakeGateway(charges), FakeCliniko()
        matcher = InvoiceMatcher(MatchSetup(gateway, cliniko, FakeLinks(), settings, {}, "cliniko_invoice_id", since))
        assert list(matcher.recheck()) == expected
    assert gateway.listings == [{"object": "charge", "created": {"gte": 1_700_000_000}}]
    today = datetime.now(ZoneInfo("Australia/Melbourne")).date()
    first = (today - timedelta(days=pm.DEFAULT_DAYS_AFTER + 1)).isoformat()
    assert cliniko.asked == [
        ("/invoices", [("q[]", f"patient_id:={patient}"), ("q[]", f"issue_date:>={first}")]) for patient in ("p1", "p2")
    ]


def test_an_invoice_read_twice_in_a_run_is_decided_once_from_one_listing() -> None:
    decisions, gateway = _match_one_invoice(FakeLinks())
    assert decisions["7001"].kind == "link" and decisions["7001"].stripe_id == "pi_1"
    assert decisions["7001"].stripe_object == "payment_intent"
    (listing,) = gateway.listings
    assert listing["object"] == "charge" and listing["expand"] == ["data.payment_intent"]


def test_a_payment_the_calcom_payments_stream_links_is_never_linked_to_an_invoice() -> None:
    links = FakeLinks()
    links.booked = True
    decisions, _ = _match_one_invoice(links)
    assert links.asked == ("calcom.booking_payments", {"pi_1"})
    assert decisions["7001"].kind == "review" and decisions["7001"].candidates == ("pi_1",)


def test_a_bad_business_zone_falls_back_to_the_clinics_and_a_numeric_business_id_finds_its_zone() -> None:
    businesses = [
        {"id": 1, "time_zone_identifier": "Mars/Olympus_Mons"},
        {"id": 2, "time_zone_identifier": "Australia/Brisbane"},
        {"id": "b3", "time_zone_identifier": "not a zone"},
    ]
    # 13:30 UTC on the 4th: the 4th in Brisbane, the 5th in Melbourne (the clinic's zone); the window is the 4th only.
    values = {"cliniko.invoices.match_days_before": 0, "cliniko.invoices.match_days_after": 0}
    invoices = [
        {"id": "7001", "business_id": 1, "number": 1, **_PAID_4TH},
        {"id": "7002", "business_id": 2, "number": 2, **_PAID_4TH},
        {"id": "7003", "business": {"links": {"self": "https://api.au1.cliniko.com/v1/businesses/b3"}}, **_PAID_4TH},
    ]
    decisions, _ = _match_invoices(FakeLinks(), invoices, FakeCliniko(businesses), values)
    assert decisions["7001"].kind == decisions["7003"].kind == "none"  # in Melbourne: paid on the 5th there
    assert decisions["7002"].kind == "link" and decisions["7002"].stripe_id == "pi_1"


_PAID_4TH = {"status": 20, "total_amount": "95.5", "issue_date": "2026-04-04", "patient_id": "p1"}


def test_open_credit_is_paid_for_the_linker_as_for_the_mirror_from_one_status_definition() -> None:
    from clinicsync.mapping import invoice_status
    from clinicsync.mapping.defaults import INVOICE_STATUS_TABLE
    from clinicsync.streams.cliniko_invoice_mirror import wanted_state

    values = {"cliniko.invoices.match_days_before": 0}
    overpaid = {"id": "7001", "number": 1, **_PAID_4TH, "status": invoice_status.OPEN_CREDIT}  # a credit left over
    decisions, _ = _match_invoices(FakeLinks(), [overpaid], FakeCliniko(), values)
    assert decisions["7001"].kind == "link" and decisions["7001"].stripe_id == "pi_1"
    for code in invoice_status.NAMES:
        assert invoice_status.is_paid(code) == (wanted_state({"status": code, "total_amount": "10.00"}) == "paid"), code
    assert INVOICE_STATUS_TABLE == {"10": "open", "20": "paid", "30": "closed", "40": "open_credit"}
    assert invoice_status.words(40) == "open credit" and invoice_status.words(99) == "not paid"


def _match_one_invoice(links: FakeLinks) -> tuple[dict, FakeGateway]:
    invoice = {
        "id": "7001",
        "number": 5001,
        "status": 20,
        "total_amount": "95.5",
        "issue_date": "2026-04-04",
        "patient": {"links": {"self": "https://api.au1.cliniko.com/v1/patients/p1"}},
        "business": {"links": {"self": "https://api.au1.cliniko.com/v1/businesses/b1"}},
    }
    return _match_invoices(links, [invoice, invoice], FakeCliniko(), {"cliniko.invoices.match_days_before": 0})


def _match_invoices(
    links: FakeLinks, invoices: list[dict], cliniko: FakeCliniko, values: dict
) -> tuple[dict, FakeGateway]:
    from clinicsync.mapping.apply import map_record
    from clinicsync.mapping.defaults import CLINIKO_INVOICES
    from clinicsync.streams.base import MatchSetup, StreamSettings
    from clinicsync.streams.cliniko_invoices import InvoiceMatcher

    charge = {
        "id": "ch_1",
        "status": "succeeded",
        "amount": 9550,
        "currency": "aud",
        "customer": "cus_1",
        "created": epoch("2026-04-04T13:30:00"),  # 23:30 on the 4th in Brisbane: inside a window from the 4th
        "payment_intent": {"id": "pi_1", "amount": 9550, "currency": "aud", "created": epoch("2026-04-04T13:30:00")},
    }
    gateway = FakeGateway([charge])
    settings = StreamSettings("Australia/Melbourne", "aud", values)
    matcher = InvoiceMatcher(MatchSetup(gateway, cliniko, links, settings, {}, "cliniko_invoice_id"))
    decisions = {}
    for invoice in invoices:
        mapped = map_record(CLINIKO_INVOICES, invoice)
        decision = matcher.offer(mapped, invoice)  # None: it waits for every invoice to be known
        decisions.pop(mapped.source_id, None)
        if decision is not None:
            decisions[mapped.source_id] = decision
    decisions.update(matcher.decide())
    return decisions, gateway


def test_payments_are_listed_once_up_to_now_and_widened_back_only_for_an_earlier_window() -> None:
    from clinicsync.mapping.apply import map_record
    from clinicsync.mapping.defaults import CLINIKO_INVOICES
    from clinicsync.streams.base import MatchSetup, StreamSettings
    from clinicsync.streams.cliniko_invoices import InvoiceMatcher

    gateway = FakeGateway([])
    settings = StreamSettings("Australia/Melbourne", "aud")
    matcher = InvoiceMatcher(MatchSetup(gateway, FakeCliniko(), FakeLinks(), settings, {}, "cliniko_invoice_id"))
    for number, issued in enumerate(("2026-04-20", "2026-04-25", "2026-03-01", "2026-03-05")):
        invoice = {"id": f"700{number}", "number": number, **_PAID_4TH, "issue_date": issued}
        matcher.offer(map_record(CLINIKO_INVOICES, invoice), invoice)
    matcher.decide()
    # The first listing runs on a thread of its own: the widening may reach the gateway before it.
    first, earlier = sorted((listing["created"] for listing in gateway.listings), key=lambda c: -c["gte"])
    assert "lte" not in first  # up to now: every later window needs the same payments
    assert first["gte"] <= epoch("2026-04-13T00:00:00") - 14 * 3600
    assert earlier["gte"] <= epoch("2026-02-22T00:00:00") - 14 * 3600 and earlier["lte"] == first["gte"] - 1
