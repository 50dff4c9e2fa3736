"""The shared pieces later streams reuse: the money rule, dependency order, a product's write plan, and the
outbox carrying out a plan step by step (parents first, their ids passed on, a crash resuming at the first step
not done, links kept per role)."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from clinicsync import money
from clinicsync.mapping.apply import MappedRecord
from clinicsync.mapping.defaults import CLINIKO_PRODUCTS
from clinicsync.retry import RetryPolicy
from clinicsync.store.db import open_database
from clinicsync.store.models import AccountPair, OutboxEntry, RecordLink, RoleLink
from clinicsync.streams import CLINIKO_PRODUCTS as PRODUCTS_STREAM
from clinicsync.streams import STREAMS, Stream, dependency_order
from clinicsync.streams.base import PlanRequest, RoleLinkInfo
from clinicsync.streams.priced_products import fingerprint
from clinicsync.stripe_gateway import StripeFailure, WriteResult
from clinicsync.sync.outbox import OutboxWriter, Settler


# --- money -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("amount", "currency", "units"),
    [
        ("81.818", "aud", 8182),
        ("2367.18", "aud", 236718),
        ("0.005", "aud", 1),  # half away from zero, as a till rounds
        ("-0.005", "aud", -1),
        ("0", "aud", 0),
        (50, "aud", 5000),
        ("1000", "jpy", 1000),  # zero-decimal: yen have no cents
        ("999.5", "JPY", 1000),
        ("1.2345", "kwd", 1235),  # three-decimal
        (Decimal("12.10"), "nzd", 1210),
    ],
)
def test_amounts_become_minor_units_of_their_currency(amount: Any, currency: str, units: int) -> None:
    assert money.to_minor_units(amount, currency) == units


@pytest.mark.parametrize("bad", ["", "12,50", "NaN", "Infinity", None, True, "1e9999999999"])
def test_what_is_not_an_amount_is_refused_with_a_message(bad: Any) -> None:
    with pytest.raises(money.MoneyError):
        money.to_minor_units(bad, "aud")


def test_a_currency_code_is_checked_and_shown_to_people_with_its_own_places() -> None:
    with pytest.raises(money.MoneyError):
        money.exponent("dollars")
    assert money.display(1250, "aud") == "12.50 AUD"
    assert money.display(1250, "jpy") == "1250 JPY"
    assert money.currency_for_country("au") == "aud" and money.currency_for_country(None) == "aud"
    assert money.currency_for_country("NZ") == "nzd"


# --- dependency order --------------------------------------------------------------------------------------
def _stream(name: str, *depends_on: str) -> Stream:
    base = STREAMS["cliniko.patients"]
    return Stream(**{**vars(base), "name": name, "depends_on": depends_on})


def test_streams_run_after_what_they_depend_on_and_a_cycle_is_refused() -> None:
    streams = {
        "invoices": _stream("invoices", "patients", "products"),
        "patients": _stream("patients"),
        "products": _stream("products"),
        "bookings": _stream("bookings", "invoices"),
    }
    order = dependency_order(streams, ["bookings", "invoices", "patients", "products"])
    assert order.index("patients") < order.index("invoices") < order.index("bookings")
    assert order.index("products") < order.index("invoices")
    assert dependency_order(streams, ["invoices"]) == ["invoices"], "a stream asked for alone runs alone"
    streams["patients"] = _stream("patients", "bookings")
    with pytest.raises(ValueError, match="cycle"):
        dependency_order(streams, ["bookings", "patients"])


def test_the_declared_streams_are_in_a_valid_order() -> None:
    order = dependency_order(STREAMS, list(STREAMS))
    assert sorted(order) == sorted(STREAMS) and order[:2] == ["cliniko.patients", "cliniko.products"]
    for position, name in enumerate(order):
        assert all(order.index(dependency) < position for dependency in STREAMS[name].depends_on), name


# --- a product's plan --------------------------------------------------------------------------------------
def _request(op: str, unit_amount: int, roles: tuple[RoleLinkInfo, ...] = (), archived: bool = False) -> PlanRequest:
    mapped = MappedRecord(source_id="77", payload={}, display_name="Foam roller", match_value=None, archived=archived)
    params = {
        "name": "Foam roller",
        "metadata": {"cliniko_product_id": "77"},
        "price": {"unit_amount": unit_amount, "currency": "aud", "tax_behavior": "inclusive"},
    }
    stripe_id = None if op == "create" else "prod_1"
    return PlanRequest(op, mapped, stripe_id, params, cross_ref_key="cliniko_product_id", roles=roles)


def _price(stripe_id: str, amount: int, *, current: bool, active: bool = True) -> RoleLinkInfo:
    return RoleLinkInfo("price", stripe_id, fingerprint(amount, "aud", "inclusive"), current, active)


def test_a_new_product_and_its_price_are_one_request() -> None:
    (step,) = PRODUCTS_STREAM.plan(_request("create", 4500))
    assert (step.op, step.stripe_object) == ("create", "product")
    assert step.params["default_price_data"] == {"unit_amount": 4500, "currency": "aud", "tax_behavior": "inclusive"}
    assert step.params["active"] is True and "price" not in step.params
    (made,) = step.records
    assert (made.role, made.field, made.current) == ("price", "default_price", True)


def test_an_unchanged_price_updates_only_the_product() -> None:
    (step,) = PRODUCTS_STREAM.plan(_request("update", 4500, (_price("price_a", 4500, current=True),)))
    assert (step.op, step.stripe_object, step.stripe_id) == ("update", "product", "prod_1")
    assert "default_price" not in step.params


def test_a_price_change_is_a_new_price_made_default_then_the_old_one_deactivated() -> None:
    steps = PRODUCTS_STREAM.plan(_request("update", 5000, (_price("price_a", 4500, current=True),)))
    assert [(s.stripe_object, s.op) for s in steps] == [("price", "create"), ("product", "update"), ("price", "update")]
    new_price, product, old_price = steps
    assert new_price.params["product"] == "prod_1" and new_price.params["unit_amount"] == 5000
    assert new_price.params["metadata"] == {"cliniko_product_id": "77"}
    assert dict(product.refs) == {"default_price": 0}, "the product takes the id of the price step 0 made"
    assert (old_price.stripe_id, dict(old_price.params)) == ("price_a", {"active": False})


def test_going_back_to_an_earlier_amount_reactivates_that_price() -> None:
    roles = (_price("price_a", 4500, current=False, active=False), _price("price_b", 5000, current=True))
    steps = PRODUCTS_STREAM.plan(_request("update", 4500, roles))
    assert [(s.stripe_object, s.stripe_id, dict(s.params).get("active")) for s in steps] == [
        ("price", "price_a", True),
        ("product", "prod_1", True),
        ("price", "price_b", False),
    ]
    assert steps[1].params["default_price"] == "price_a" and not steps[1].refs


def test_a_hand_made_product_gets_a_price_of_ours_and_keeps_its_own() -> None:
    steps = PRODUCTS_STREAM.plan(_request("link", 4500))
    assert [(s.stripe_object, s.op) for s in steps] == [("price", "create"), ("product", "link")]
    assert all(s.params != {"active": False} for s in steps), "a price ClinicSync did not make is never touched"


def _observed(request: PlanRequest, *prices: RoleLinkInfo) -> PlanRequest:
    return replace(request, observed=prices)


def test_a_link_adopts_the_default_price_already_wanted_instead_of_making_another() -> None:
    request = _observed(_request("link", 4500), _price("price_theirs", 4500, current=True))
    (step,) = PRODUCTS_STREAM.plan(request)
    assert (step.stripe_object, step.op, step.params["default_price"]) == ("product", "link", "price_theirs")
    (adopted,) = step.records
    assert (adopted.role, adopted.field, adopted.current, adopted.active) == ("price", "default_price", True, True)
    assert adopted.fingerprint == fingerprint(4500, "aud", "inclusive")


def test_a_link_to_a_default_price_of_another_amount_replaces_it() -> None:
    request = _observed(_request("link", 5000), _price("price_old", 4500, current=True))
    steps = PRODUCTS_STREAM.plan(request)
    assert [(s.stripe_object, s.op, s.stripe_id) for s in steps] == [
        ("price", "create", None),
        ("product", "link", "prod_1"),
        ("price", "update", "price_old"),
    ]
    assert steps[2].params == {"active": False}


def test_a_price_change_another_installation_made_already_is_adopted_and_ours_deactivated() -> None:
    ours = _price("price_ours", 4500, current=True)
    request = _observed(_request("update", 5000, (ours,)), _price("price_other", 5000, current=True))
    steps = PRODUCTS_STREAM.plan(request)
    assert [(s.stripe_object, s.stripe_id, dict(s.params).get("active")) for s in steps] == [
        ("product", "prod_1", True),
        ("price", "price_ours", False),
    ]
    assert steps[0].params["default_price"] == "price_other"


def test_a_price_change_replaces_the_price_in_use_and_ours_each_once() -> None:
    ours = _price("price_ours", 4500, current=True)
    request = _observed(_request("update", 6000, (ours,)), _price("price_other", 5000, current=True))
    steps = PRODUCTS_STREAM.plan(request)
    assert [(s.stripe_object, s.op, s.stripe_id) for s in steps] == [
        ("price", "create", None),
        ("product", "update", "prod_1"),
        ("price", "update", "price_other"),
        ("price", "update", "price_ours"),
    ]


class ListingGateway:
    """Answers the two listings a product's observation sends: the product, then its prices."""

    def __init__(self, product: dict[str, Any], prices: list[dict[str, Any]]) -> None:
        self.objects = {"product": [product], "price": prices}
        self.listed: list[tuple[str, dict[str, Any] | None]] = []

    def iter_objects(self, stripe_object: str, created_since: Any = None, filters: dict[str, Any] | None = None):
        self.listed.append((stripe_object, filters))
        return iter(self.objects[stripe_object])


def _stripe_price(
    stripe_id: str, amount: int, ref: str | None, active: bool = True, created: int = 1_700_000_000
) -> dict[str, Any]:
    return {
        "id": stripe_id,
        "created": created,
        "product": "prod_1",
        "unit_amount": amount,
        "currency": "aud",
        "tax_behavior": "inclusive",
        "active": active,
        "metadata": {"cliniko_product_id": ref} if ref else {},
    }


def _catalogue(ref: str, default: str = "price_x") -> ListingGateway:
    product = {"id": "prod_1", "created": 1_700_000_000, "metadata": {"cliniko_product_id": ref}}
    prices = [
        _stripe_price("price_x", 4500, None),  # made with the product (default_price_data carries no metadata)
        _stripe_price("price_y", 3000, "77", active=False, created=1_700_000_900),  # another installation's
        _stripe_price("price_z", 2000, None, created=1_700_000_500),  # a person's own price: never ours
    ]
    return ListingGateway({**product, "default_price": default}, prices)


def test_observation_reads_the_prices_of_a_product_naming_the_record_only() -> None:
    gateway = _catalogue("77")
    seen = PRODUCTS_STREAM.observe(gateway, _request("link", 4500))
    assert [(p.stripe_id, p.fingerprint, p.current, p.active) for p in seen] == [
        ("price_x", fingerprint(4500, "aud", "inclusive"), True, True),
        ("price_y", fingerprint(3000, "aud", "inclusive"), False, False),
    ]
    assert gateway.listed == [("product", {"ids": ["prod_1"]}), ("price", {"product": "prod_1"})]
    assert PRODUCTS_STREAM.observe(_catalogue("someone else"), _request("link", 4500)) == (), "not ours: untouched"


def test_going_back_to_a_price_another_installation_made_reactivates_it() -> None:
    request = _request("update", 3000, (_price("price_x", 4500, current=True),))
    steps = PRODUCTS_STREAM.plan(replace(request, observed=PRODUCTS_STREAM.observe(_catalogue("77"), request)))
    assert [(s.stripe_object, s.stripe_id, dict(s.params).get("active")) for s in steps] == [
        ("price", "price_y", True),
        ("product", "prod_1", True),
        ("price", "price_x", False),
    ]


def test_a_default_price_a_person_set_is_not_ours_and_a_price_change_leaves_it_alone() -> None:
    request = _request("update", 5000, (_price("price_x", 4500, current=True),))
    seen = PRODUCTS_STREAM.observe(_catalogue("77", default="price_z"), request)
    assert "price_z" not in {price.stripe_id for price in seen}
    steps = PRODUCTS_STREAM.plan(replace(request, observed=seen))
    assert [(s.stripe_object, s.op, s.stripe_id) for s in steps] == [
        ("price", "create", None),
        ("product", "update", "prod_1"),
        ("price", "update", "price_x"),
    ], "ours replaced and deactivated; the person's price untouched"


def test_observation_reads_nothing_for_an_update_that_keeps_the_price() -> None:
    gateway = _catalogue("77")
    roles = (_price("price_a", 4500, current=True),)
    assert PRODUCTS_STREAM.observe(gateway, _request("update", 4500, roles)) is None
    assert gateway.listed == []
    assert PRODUCTS_STREAM.observe(gateway, _request("update", 5000, roles)) is not None


def test_a_new_price_carries_a_lookup_key_of_its_product_and_content() -> None:
    (new_price, *_) = PRODUCTS_STREAM.plan(_request("update", 5000, (_price("price_a", 4500, current=True),)))
    assert new_price.params["lookup_key"] == "clinicsync:prod_1:5000:aud:inclusive"
    assert PRODUCTS_STREAM.unique_params == ("lookup_key",)


def test_an_archived_product_is_made_inactive() -> None:
    (step,) = PRODUCTS_STREAM.plan(_request("update", 4500, (_price("price_a", 4500, current=True),), archived=True))
    assert step.params["active"] is False


# --- the outbox carrying out a plan ------------------------------------------------------------------------
class RecordingGateway:
    """Answers writes as Stripe would (a product create with default_price_data names its new price)."""

    def __init__(self, fail_on: tuple[str, str] | None = None) -> None:
        self.sent: list[tuple[str, str, str | None, dict[str, Any], str]] = []
        self.fail_on = fail_on
        self._counter = 0

    def write(self, op: str, obj: str, stripe_id: str | None, params: dict[str, Any], key: str) -> WriteResult:
        self.sent.append((op, obj, stripe_id, params, key))
        if self.fail_on == (obj, op):
            raise StripeFailure("invalid", "refused by the test")
        self._counter += 1
        made = stripe_id or f"{'prod' if obj == 'product' else 'price'}_{self._counter}"
        answer: dict[str, Any] = {"id": made, **params}
        if "default_price_data" in params:
            answer["default_price"] = f"price_d{self._counter}"
        return WriteResult(object=answer, replayed=False)


class Recorder:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str]] = []

    def record(self, action: str, source_id: str, display_name: str, stripe_id: str | None, message: str = "") -> None:
        self.rows.append((action, source_id))


@pytest.fixture
def pair(tmp_path: Path) -> AccountPair:
    open_database(tmp_path / "db.sqlite3")
    return AccountPair.create(
        uuid="u" * 12, source_system="cliniko", source_account="1", stripe_account="acct_1", stripe_livemode=False
    )


def _writer(pair: AccountPair, gateway: Any, recorder: Recorder) -> OutboxWriter:
    return OutboxWriter(
        gateway=gateway,
        pair=pair,
        mapping=CLINIKO_PRODUCTS,
        stream=PRODUCTS_STREAM,
        policy=RetryPolicy(max_attempts=1),
        recorder=recorder,
        sleep=lambda s: None,
        search_settle_s=0,
    )


def _enqueue_reprice(writer: OutboxWriter, pair: AccountPair) -> list[OutboxEntry]:
    RecordLink.create(pair=pair, stream="cliniko.products", source_id="77", stripe_object="product", stripe_id="prod_1")
    RoleLink.create(
        pair=pair,
        stream="cliniko.products",
        source_id="77",
        role="price",
        stripe_object="price",
        stripe_id="price_old",
        fingerprint=fingerprint(4500, "aud", "inclusive"),
        current=True,
    )
    roles = (_price("price_old", 4500, current=True),)
    request = _request("update", 5000, roles)
    return writer.enqueue_plan(request.mapped, "updated", PRODUCTS_STREAM.plan(request), None)


def test_steps_are_stored_first_then_sent_in_order_each_taking_its_parents_id(pair: AccountPair) -> None:
    gateway, recorder = RecordingGateway(), Recorder()
    writer = _writer(pair, gateway, recorder)
    rows = _enqueue_reprice(writer, pair)
    assert [row.step for row in rows] == [0, 1, 2] and len({row.plan_key for row in rows}) == 1
    assert len({row.idempotency_key for row in rows}) == 3, "every step has a key naming its own row"
    assert all(str(row.id) in row.idempotency_key for row in rows)
    assert OutboxEntry.select().where(OutboxEntry.status == "pending").count() == 3, "stored before sending"

    writer.deliver_plan(rows)
    assert recorder.rows == [], "what Stripe took is recorded in the settler's next batch"
    writer.flush()
    (op1, obj1, _, _, _), (op2, obj2, target2, params2, _), (_, obj3, target3, params3, _) = gateway.sent
    assert (obj1, op1) == ("price", "create")
    assert (obj2, op2, target2) == ("product", "update", "prod_1")
    assert params2["default_price"] == "price_1", "the product step took the new price's id"
    assert (obj3, target3, params3) == ("price", "price_old", {"active": False})
    assert recorder.rows == [("updated", "77")], "one history row for the record, from its last step"
    prices = {row.stripe_id: (row.current, row.active) for row in RoleLink.select()}
    assert prices == {"price_1": (True, True), "price_old": (False, False)}, "links per role follow each step"


def test_a_crash_between_steps_resumes_at_the_first_step_not_done(pair: AccountPair) -> None:
    first = RecordingGateway()
    writer = _writer(pair, first, Recorder())
    rows = _enqueue_reprice(writer, pair)
    writer.deliver(rows[0])
    writer.flush()  # the process dies after the new price was recorded
    assert len(first.sent) == 1

    again = RecordingGateway()
    resumed = _writer(pair, again, Recorder())
    pending = resumed.pending()
    assert [row.step for row in pending] == [1, 2]
    resumed.deliver_plan(pending)
    assert [(obj, op) for op, obj, *_ in again.sent] == [("product", "update"), ("price", "update")]
    assert again.sent[0][3]["default_price"] == "price_1", "the parent's id, from the step done before the crash"
    resumed.deliver_plan(rows)  # a replay of done steps sends nothing
    assert len(again.sent) == 2


def test_a_crash_before_the_settler_recorded_a_step_replays_it_with_its_own_key(pair: AccountPair) -> None:
    first = RecordingGateway()
    writer = _writer(pair, first, Recorder())
    rows = _enqueue_reprice(writer, pair)
    writer.deliver_plan(rows)  # Stripe took all three, and the process dies before the batch is recorded
    again = RecordingGateway()
    resumed = _writer(pair, again, Recorder())
    resumed.deliver_plan(resumed.pending())
    resumed.flush()
    assert [key for *_, key in again.sent] == [key for *_, key in first.sent], "the same keys: Stripe replays"
    assert OutboxEntry.select().where(OutboxEntry.status == "pending").count() == 0


def test_finished_writes_wait_for_a_batch_but_every_plan_is_committed_before_it_is_sent(
    pair: AccountPair, tmp_path: Path
) -> None:
    """The promise the batching keeps: a plan's outbox rows are committed before its first request goes out (another
    connection sees them), while what Stripe's answers change here waits until a batch of them is recorded at once
    (a crash meanwhile replays them, as the test above shows)."""
    gateway, recorder = RecordingGateway(), Recorder()
    writer = _writer(pair, gateway, recorder)
    writer.settler = Settler(batch=4)
    rows = _enqueue_reprice(writer, pair)
    other = sqlite3.connect(tmp_path / "db.sqlite3")
    try:

        def statuses() -> list[str]:
            return [status for (status,) in other.execute("SELECT status FROM outbox_entry ORDER BY id")]

        assert statuses() == ["pending"] * 3, "committed before anything is sent"
        writer.deliver_plan(rows)
        writer.enqueue_plans([])  # the reading thread's next batch of plans: three finished writes wait for a fourth
        assert statuses() == ["pending"] * 3 and recorder.rows == []
        writer.settler.batch = 3
        writer.enqueue_plans([])
        assert statuses() == ["done"] * 3, "recorded with the plans' transaction once a batch waits"
        assert recorder.rows == [("updated", "77")]
        assert len(gateway.sent) == 3, "each step sent once"
    finally:
        other.close()


def test_a_crash_between_steps_resumes_from_the_pending_steps_ids_alone(pair: AccountPair) -> None:
    """What a run replays, and what waits in the write pool's queue, is the steps' row ids: each row is read
    afresh before it is sent, so thousands of queued writes hold no rows (issue 14: memory flat at any size)."""
    first = RecordingGateway()
    writer = _writer(pair, first, Recorder())
    rows = _enqueue_reprice(writer, pair)
    writer.deliver(rows[0])
    writer.flush()  # the process dies after the new price was recorded

    again = RecordingGateway()
    resumed = _writer(pair, again, Recorder())
    steps = resumed.pending_steps()
    assert steps == [("77", rows[1].id), ("77", rows[2].id)], "(source id, row id), in the order stored"
    resumed.deliver_steps([row_id for _, row_id in steps])
    assert [(obj, op) for op, obj, *_ in again.sent] == [("product", "update"), ("price", "update")]
    assert again.sent[0][3]["default_price"] == "price_1", "the parent's id, from the step done before the crash"
    resumed.deliver_steps([row.id for row in rows])  # a replay of done steps sends nothing
    assert len(again.sent) == 2


def test_a_refused_step_fails_the_rest_of_its_plan(pair: AccountPair) -> None:
    gateway, recorder = RecordingGateway(fail_on=("price", "create")), Recorder()
    writer = _writer(pair, gateway, recorder)
    rows = _enqueue_reprice(writer, pair)
    writer.deliver_plan(rows)
    writer.flush()
    assert len(gateway.sent) == 1, "nothing after the refused step is sent"
    statuses = [OutboxEntry.get_by_id(row.id).status for row in rows]
    assert statuses == ["failed", "failed", "failed"]
    assert recorder.rows == [("failed", "77")]
    assert RoleLink.get(RoleLink.stripe_id == "price_old").current, "the old price is still the one in use"


def test_a_products_cost_price_or_notes_needs_a_persons_allowance_before_it_is_sent() -> None:
    from clinicsync.mapping.fields import FieldCatalogue
    from clinicsync.mapping.spec import rule
    from clinicsync.mapping.validate import validate_mapping

    catalogue = FieldCatalogue.for_source("cliniko", "product")
    mapping = CLINIKO_PRODUCTS.with_rules((*CLINIKO_PRODUCTS.rules, rule("metadata.cost", "cost_price")))
    (problem,) = validate_mapping(mapping, catalogue, set())
    assert problem.rule == "clinical-field" and "cost_price" in str(problem)
    assert validate_mapping(mapping, catalogue, {"cost_price"}) == []
    assert validate_mapping(CLINIKO_PRODUCTS, catalogue, set()) == [], "the default sends neither"


def test_cal_com_streams_are_reconciled_and_an_unknown_stream_is_named() -> None:
    from clinicsync.store.settings import Settings
    from clinicsync.sync.reconcile_run import reconcilable
    from clinicsync.sync.service import ConfigProblem

    settings = Settings.__new__(Settings)  # reconcilable reads no setting when streams are named
    assert reconcilable(settings, ["calcom.bookings", "calcom.event_types"]) == [
        "calcom.event_types",
        "calcom.bookings",
    ]
    with pytest.raises(ConfigProblem, match=r"Unknown stream calcom\.nothing"):
        reconcilable(settings, ["calcom.nothing"])


def test_index_top_ups_are_spaced_so_they_take_a_tenth_of_the_time_at_most() -> None:
    from clinicsync.sync import twins

    now = [0.0]
    cost = [0.0]

    def refresh() -> None:
        now[0] += cost[0]

    topup = twins.Topup(refresh, clock=lambda: now[0])
    now[0] = 2.0
    assert topup.before_create(), "cheap: every 2 s"
    now[0] += 2.0
    assert topup.before_create()
    cost[0] = 3.0  # a first sync's minute of creates to re-list
    now[0] += 2.0
    assert topup.before_create()
    now[0] += 29.0
    assert not topup.before_create(), "the next waits ten times what this one cost"
    now[0] += 1.0
    assert topup.before_create()
