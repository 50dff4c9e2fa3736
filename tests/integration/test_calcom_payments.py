"""calcom.booking_payments → the PaymentIntents Cal.com's own Stripe app made, cross-referenced, against the Cal.com
and Stripe sandboxes over real HTTP. The PaymentIntents the Cal.com seed made on the clinic's Stripe account are
loaded into the Stripe sandbox first (with Cal.com's metadata: `identifier`, numeric `bookingId`, booker email), as
they would be there before ClinicSync is connected; those on the massage therapist's own account are not there.

- every paid booking's payment carries the chain's latest booking, also after one and two reschedules, while
  Cal.com's `bookingId` still names the first booking; every seat's payment its seat; Cal.com's keys are never
  written;
- a reschedule and a cancellation made later are carried to the payment; a cancelled booking whose charge was
  not refunded says so in history, for the manager;
- a payment on another Stripe account is reported once as out of reach, not again;
- a re-run writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from clinicsync.sandbox import calcom_seed
from clinicsync.store import queries
from tests.integration.test_calcom_people import sync_all, without_cliniko
from tests.support import admin, context, executed_writes

STREAM = "calcom.booking_payments"
BOOKINGS = 40
KEYS = ("calcom_booking_uid", "calcom_event_type", "calcom_start_local", "calcom_status", "calcom_owner_email")


def start(make_sandbox: Any) -> Any:
    """The sandboxes, with the payments Cal.com's Stripe app took on the clinic's account in its Stripe."""
    sandbox = make_sandbox(profile="clean", patients=5, calcom=True, calcom_bookings=BOOKINGS, calcom_payments=True)
    assert sandbox.calcom_seeded["stripe_payments"], "the seed has payments on the clinic's account"
    return sandbox


def load_payments(sandbox: Any, intents: list[dict[str, Any]]) -> None:
    """Put the paid PaymentIntents Cal.com's Stripe app made on the clinic's account into the Stripe sandbox."""
    payments = calcom_seed.clinic_payments(intents)
    assert payments, "payments on the clinic's account"
    admin(sandbox.stripe_url, "seed", payments=payments)


def bookings(sandbox: Any) -> dict[str, dict[str, Any]]:
    return {b["uid"]: b for b in admin(sandbox.calcom_url, "dump")["bookings"]}


def chain_from(uid: str, by_uid: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The reschedule chain from booking `uid` on (the emulator's `fromReschedule` points back)."""
    following = {b["fromReschedule"]: b for b in by_uid.values() if b.get("fromReschedule")}
    chain = [by_uid[uid]]
    while chain[-1]["uid"] in following:
        chain.append(following[chain[-1]["uid"]])
    return chain


def latest_of(uid: str, by_uid: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    return chain_from(uid, by_uid)[-1]


def payments(sandbox: Any) -> list[dict[str, Any]]:
    return admin(sandbox.stripe_url, "dump")["payment_intents"]


def check_cross_referenced(sandbox: Any, waiting: Collection[str] = ()) -> int:
    """Every Cal.com payment on the clinic's account names its chain's latest booking in ClinicSync's own keys, and a
    seat's payment names its seat, one whose booker paid it; those of the bookings in `waiting` (ids of bookings
    waiting for a person in Review) stay as made."""
    by_uid = bookings(sandbox)
    by_id = {str(b["id"]): b for b in by_uid.values()}
    users = {u["id"]: u for u in admin(sandbox.calcom_url, "dump")["users"]}
    checked = 0
    seats_taken: list[str] = []
    for intent in payments(sandbox):
        metadata = intent["metadata"]
        if metadata.get("identifier") != "cal.com":
            continue
        first = by_id[metadata["bookingId"]]
        if metadata["bookingId"] in waiting:
            assert not any(key in metadata for key in KEYS), "a payment waiting for review is left as Cal.com made it"
            continue
        seats = {
            a["seat"]["referenceUid"]: a["email"]
            for a in first["attendees"]
            if a.get("seat") and a["email"].casefold() == metadata["bookerEmail"].casefold()
        }
        if any(a.get("seat") for a in first["attendees"]):
            booking_id, _, seat = metadata["calcom_booking_id"].partition("-")
            assert booking_id == metadata["bookingId"] and seat in seats, "a seat's payment names a seat its booker has"
            seats_taken.append(seat)
        else:
            assert metadata["calcom_booking_id"] == metadata["bookingId"], "the chain's first booking, in our own key"
        latest = latest_of(first["uid"], by_uid)
        assert metadata["calcom_booking_uid"] == latest["uid"], "the payment follows the reschedules"
        assert metadata["calcom_status"] == latest["status"].lower()
        assert metadata["calcom_start_local"].endswith(("+10:00", "+11:00")), "in the clinic's zone"
        assert metadata["calcom_owner_email"] == users[latest["userId"]]["email"], "the booking's host"
        assert metadata["calcom_event_type"]
        checked += 1
    assert len(seats_taken) == len(set(seats_taken)), "each seat has one payment"
    return checked


def calcom_keys(sandbox: Any) -> dict[str, dict[str, str]]:
    """What Cal.com's Stripe app wrote into each payment's metadata (every key but ClinicSync's own)."""
    return {p["id"]: {k: v for k, v in p["metadata"].items() if not k.startswith("calcom_")} for p in payments(sandbox)}


def out_of_reach_events(run_id: int) -> list[str]:
    return [e.source_id for e in queries.run_events(run_id) if e.action == "skipped" and "out of reach" in e.message]


def test_paid_bookings_payments_cross_referenced_through_reschedules_once_and_a_rerun_writes_nothing(
    make_sandbox, env_for
):
    sandbox = start(make_sandbox)
    cases = sandbox.calcom_seeded["cases"]
    env = without_cliniko(env_for(sandbox))
    as_made = calcom_keys(sandbox)
    results = sync_all(env)
    assert list(results) == ["calcom.event_types", "calcom.bookings", STREAM, "calcom.reference"]
    result = results[STREAM]
    assert result.outcome == "ok", (result.counts, result.message)
    assert result.counts["created"] == 0, "a payment is never created"
    assert check_cross_referenced(sandbox) == result.counts["linked"] >= 10
    assert calcom_keys(sandbox) == as_made, "Cal.com's own keys are never written"
    seated = [uid for uid, case in cases.items() if case == "seated"]
    seat_payments = [
        p for p in payments(sandbox) if p["metadata"]["bookingId"] in {str(bookings(sandbox)[u]["id"]) for u in seated}
    ]
    assert seated and seat_payments and all("calcom_booking_id" in p["metadata"] for p in seat_payments), (
        "every seat's payment is cross-referenced"
    )

    by_uid = bookings(sandbox)
    chains = [uid for uid, case in cases.items() if case == "reschedule_chain" and not by_uid[uid]["fromReschedule"]]
    reschedules = set()
    for uid in chains:
        (intent,) = [p for p in payments(sandbox) if p["metadata"].get("bookingId") == str(by_uid[uid]["id"])]
        chain = chain_from(uid, by_uid)
        reschedules.add(len(chain) - 1)
        assert intent["metadata"]["calcom_booking_uid"] == chain[-1]["uid"], "Cal.com's bookingId names the first"
    assert reschedules == {1, 2}, "chains of one and of two reschedules"

    # A booking cancelled after paying: the manager reads in history whether its charge still stands.
    linked = {e.source_id: e.message for e in queries.run_events(result.run_id) if e.action == "linked"}
    standing = [str(by_uid[u]["id"]) for u, case in cases.items() if case == "cancelled_paid_not_refunded"]
    refunded = [str(by_uid[u]["id"]) for u, case in cases.items() if case == "cancelled_refunded"]
    assert standing and all("not refunded" in linked[booking_id] for booking_id in standing)
    assert refunded and not any("not refunded" in linked[booking_id] for booking_id in refunded)

    other = {str(by_uid[uid]["id"]) for uid, case in cases.items() if case == "paid_other_account"}
    reported = out_of_reach_events(result.run_id)
    assert other <= set(reported), "a payment on the therapist's own account is reported as out of reach"
    assert len(reported) == len(set(reported)), "once"

    before = executed_writes(sandbox.stripe_url)
    again = sync_all(env)[STREAM]
    assert again.counts["linked"] == again.counts["updated"] == again.counts["created"] == 0, again.counts
    assert not out_of_reach_events(again.run_id), "out of reach is reported once, not on every run"
    assert executed_writes(sandbox.stripe_url) == before, "a re-run writes nothing"


def test_later_reschedules_cancellations_and_payments_reach_stripe_and_out_of_reach_stays_said_once(
    make_sandbox, env_for
):
    sandbox = start(make_sandbox)
    env = without_cliniko(env_for(sandbox))
    added = admin(sandbox.calcom_url, "add", event_type_id=4001, count=2)
    load_payments(sandbox, added["payment_intents"])
    unpaid = admin(sandbox.calcom_url, "add", event_type_id=4001, status="pending")
    elsewhere = admin(sandbox.calcom_url, "add", event_type_id=4101)  # paid on the therapist's own account
    twice = admin(sandbox.calcom_url, "add", event_type_id=4002)
    load_payments(sandbox, twice["payment_intents"] * 2)  # two payments name one booking: a person chooses
    first_run = sync_all(env)[STREAM]
    events = queries.run_events(first_run.run_id)
    skipped = {e.source_id: e.message for e in events if e.action == "skipped"}
    assert "not paid yet" in skipped[str(unpaid["ids"][0])]
    assert "out of reach" in skipped[str(elsewhere["ids"][0])]
    reviews = {e.source_id: e.message for e in events if e.action == "review"}
    assert "2 Stripe payments already name this record" in reviews[str(twice["ids"][0])]

    moved_uid, cancelled_uid = added["uids"]
    first = admin(sandbox.calcom_url, "reschedule", uid=moved_uid)
    second = admin(sandbox.calcom_url, "reschedule", uid=first["new_uid"])
    admin(sandbox.calcom_url, "cancel", uid=cancelled_uid)
    admin(sandbox.calcom_url, "cancel", uid=elsewhere["uids"][0])
    admin(sandbox.calcom_url, "edit", uid=unpaid["uids"][0], fields={"status": "accepted"})  # the booker paid
    load_payments(sandbox, [{**intent, "status": "succeeded"} for intent in unpaid["payment_intents"]])
    admin(sandbox.calcom_url, "clock", advance_s=60)

    result = sync_all(env)[STREAM]
    assert result.counts["updated"] == 2 and result.counts["linked"] == 1, result.counts
    updated = {e.source_id: e.message for e in queries.run_events(result.run_id) if e.action == "updated"}
    assert "not refunded" in updated[str(added["ids"][1])], "the cancellation's charge stands"
    assert "not refunded" not in updated[str(added["ids"][0])]
    assert result.counts["created"] == result.counts["skipped"] == 0, "the out-of-reach one is not said again"
    by_booking = {p["metadata"].get("bookingId"): p["metadata"] for p in payments(sandbox)}
    moved, cancelled, paid = (by_booking[str(booking_id)] for booking_id in [*added["ids"], *unpaid["ids"]])
    assert moved["calcom_booking_uid"] == second["new_uid"], "after two reschedules, the latest booking"
    assert moved["calcom_status"] == "accepted"
    assert cancelled["calcom_booking_uid"] == cancelled_uid and cancelled["calcom_status"] == "cancelled"
    assert paid["calcom_status"] == "accepted", "paid later: cross-referenced then"
    assert check_cross_referenced(sandbox, waiting=[str(twice["ids"][0])]) >= 10


def test_a_payment_appearing_later_is_linked_though_its_booking_did_not_change_and_a_wrong_review_link_never_writes_cal_com_s_keys(  # noqa: E501
    make_sandbox, env_for
):
    sandbox = start(make_sandbox)
    env = without_cliniko(env_for(sandbox))
    late, chosen_wrongly = (admin(sandbox.calcom_url, "add", event_type_id=4001) for _ in range(2))
    twice = admin(sandbox.calcom_url, "add", event_type_id=4002)
    load_payments(sandbox, twice["payment_intents"] * 2)  # two payments name one booking: a person chooses
    admin(sandbox.calcom_url, "clock", advance_s=600)  # past the read's overlap: the next run does not list them
    first_run = sync_all(env)[STREAM]
    skipped = {e.source_id: e.message for e in queries.run_events(first_run.run_id) if e.action == "skipped"}
    assert all("out of reach" in skipped[str(b["ids"][0])] for b in (late, chosen_wrongly)), "not in Stripe yet"

    # Their payments reach the clinic's Stripe only now (made now); the bookings themselves do not change.
    arriving = calcom_seed.clinic_payments(late["payment_intents"] + chosen_wrongly["payment_intents"])
    admin(sandbox.stripe_url, "seed", payments=[{k: v for k, v in p.items() if k != "created"} for p in arriving])
    by_booking = {p["metadata"]["bookingId"]: p["id"] for p in payments(sandbox)}
    # A person links the twice-paid booking to another booking's payment: a wrong choice, but theirs to make.
    (item,) = [i for i in queries.open_reviews() if i.stream == STREAM and i.source_id == str(twice["ids"][0])]
    wrong = by_booking[str(chosen_wrongly["ids"][0])]
    queries.resolve_review(item.id, "link", wrong)
    as_made = calcom_keys(sandbox)

    result = sync_all(env)[STREAM]
    linked = {e.source_id: e.stripe_id for e in queries.run_events(result.run_id) if e.action == "linked"}
    assert linked[str(late["ids"][0])] == by_booking[str(late["ids"][0])], "re-checked when its payment appeared"
    assert linked[str(twice["ids"][0])] == wrong, "the person's choice is carried out"
    assert calcom_keys(sandbox) == as_made, "Cal.com's bookingId on the chosen payment still names its own booking"
    metadata = {p["id"]: p["metadata"] for p in payments(sandbox)}
    assert metadata[wrong]["calcom_booking_id"] == str(twice["ids"][0]), "the link is in ClinicSync's own key"
    assert str(chosen_wrongly["ids"][0]) not in linked, "its payment is taken: not linked twice"


def test_a_payment_made_after_the_runs_early_listing_of_payments_is_still_matched_in_that_run(
    make_sandbox, env_for, monkeypatch
):
    """The first run lists every payment from its start (Stream.read_ahead), before the payments stream runs; one
    made in between (here: once that listing was answered, when the first customer is written) is matched all the
    same, listed as newer than the listing's newest payment. Ordered by the sandbox's own handling, not by time."""
    sandbox = start(make_sandbox)
    env = without_cliniko(env_for(sandbox))
    late = admin(sandbox.calcom_url, "add", event_type_id=4001)  # paid in Cal.com; its payment is not in Stripe yet
    linked = _links(
        _sync_with_a_payment_made_mid_run(
            sandbox, env, lambda: load_payments(sandbox, late["payment_intents"]), monkeypatch
        )
    )
    made = {p["metadata"]["bookingId"]: p["id"] for p in payments(sandbox)}
    assert linked.get(str(late["ids"][0])) == made[str(late["ids"][0])], "matched in the same run"
    assert check_cross_referenced(sandbox) > 0


def test_a_payment_made_after_the_runs_early_listing_found_none_is_still_matched_in_that_run(
    make_sandbox, env_for, monkeypatch
):
    """A fresh Stripe account: the run's early listing of payments finds none, so there is no newest payment to list
    newer ones than; one made after it (when the first customer is written) is matched in that run all the same,
    not left for good (the next run looks for new payments only from this stream's own start)."""
    sandbox = make_sandbox(profile="clean", patients=5, calcom=True, calcom_bookings=BOOKINGS)
    assert not payments(sandbox), "no payment on the Stripe account when the run begins"
    env = without_cliniko(env_for(sandbox))
    late = admin(sandbox.calcom_url, "add", event_type_id=4001)
    linked = _links(
        _sync_with_a_payment_made_mid_run(
            sandbox, env, lambda: load_payments(sandbox, late["payment_intents"]), monkeypatch
        )
    )
    (made,) = [p["id"] for p in payments(sandbox) if p["metadata"].get("bookingId") == str(late["ids"][0])]
    assert linked.get(str(late["ids"][0])) == made, "matched in the same run"


def test_a_cancelled_run_leaves_no_listing_read_ahead_going(make_sandbox, env_for, monkeypatch):
    """The run is cancelled while its early listing of payments waits for its first page; that page says more
    follow. No reading thread asks for them: none is left going after the run (listing every payment, holding it,
    spending the account's allowance). The second page, if asked for, is held until the check (bounded)."""
    import threading

    from clinicsync.retry import CancelToken
    from clinicsync.sync.service import run_sync

    sandbox = start(make_sandbox)
    ctx = context(without_cliniko(env_for(sandbox)))
    token, cancelled, released = CancelToken(), threading.Event(), threading.Event()
    stripe_handle = sandbox.stripe.emulator.handle

    def stripe(request: Any) -> Any:
        if request.method == "POST" and not cancelled.is_set():
            token.cancel()  # the run's first write: the early listing was asked for long before
            cancelled.set()
        if request.method == "GET" and request.path == "/v1/payment_intents":
            if request.query_value("starting_after"):
                released.wait(10)
            else:
                assert cancelled.wait(10), "the run wrote something"
                response = stripe_handle(request)
                response.body["has_more"] = True  # more to come: a listing not stopped asks for the next page
                return response
        return stripe_handle(request)

    monkeypatch.setattr(sandbox.stripe.emulator, "handle", stripe)
    try:
        results = run_sync(ctx.paths, ctx.settings, ctx.secrets, trigger="test", cancel=token)
        going = [t.name for t in threading.enumerate() if t.name.startswith("read-ahead")]
    finally:
        released.set()
    assert cancelled.is_set() and any(r.outcome == "cancelled" for r in results), [r.outcome for r in results]
    assert going == [], "a listing read ahead goes on after the run"


def test_a_run_stopped_by_a_failure_cuts_short_the_pause_of_its_early_listing_of_payments(
    make_sandbox, env_for, monkeypatch
):
    """Stripe asks the run's early listing of payments to come back in a minute (a 429 with Retry-After: 60); the run
    then fails (Cal.com revokes the key when the teams are read). The run ends with that failure, and by then no
    listing it read ahead is left going: the pause was cut short, not waited out (nor waited for, up to Stripe's
    timeout). Shown by the pause ending early (the sleep raised), ordered by the sandboxes' handling (bounded)."""
    import threading

    from clinicsync.sync.service import run_sync
    from tests.support import CutPauses, paused_once, revoked_once_paused

    sandbox = start(make_sandbox)
    ctx = context(without_cliniko(env_for(sandbox)))
    calcom, stripe = sandbox.calcom.emulator, sandbox.stripe.emulator
    paused = threading.Event()
    monkeypatch.setattr(calcom, "handle", revoked_once_paused(calcom, "/teams", paused))
    monkeypatch.setattr(stripe, "handle", paused_once(stripe, "/v1/payment_intents", paused))
    token, before = CutPauses(), set(threading.enumerate())
    (failed,) = run_sync(ctx.paths, ctx.settings, ctx.secrets, trigger="test", cancel=token)
    going = [t.name for t in set(threading.enumerate()) - before if t.name.startswith("read-ahead")]
    assert paused.is_set()
    assert (failed.outcome, failed.stop_kind) == ("failed", "source_auth"), (failed.outcome, failed.message)
    assert going == [], "a listing read ahead goes on after the run"
    pauses = [seconds for name, seconds in token.cut if name == "read-ahead Stripe payments"]
    assert pauses and pauses[0] > 30, f"the listing's pause of a minute was cut short: {token.cut}"


def test_a_run_after_a_mapping_save_does_not_list_every_payment_again(make_sandbox, env_for):
    """Saving the stream's mapping starts its records over (the cursor), not its payments: the next run lists only
    the payments made since the previous run, as its matcher does, never every payment on the account."""
    from clinicsync.mapping.preview import catalogue_for
    from clinicsync.store import mappings as mapping_store

    sandbox = start(make_sandbox)
    env = without_cliniko(env_for(sandbox))
    sync_all(env)
    context(env)
    mapping = mapping_store.default_mapping(STREAM)
    assert mapping_store.save(mapping, catalogue_for(mapping, None), who="test").cursor_reset
    admin(sandbox.stripe_url, "request_log", enabled=True)
    results = sync_all(env)
    assert results[STREAM].outcome == "ok", (results[STREAM].outcome, results[STREAM].message)
    listings = [
        [name for name, _ in r["query"]]
        for r in admin(sandbox.stripe_url, "request_log")["requests"]
        if r["method"] == "GET" and r["path"] == "/v1/payment_intents"
    ]
    assert listings, "the run looked for new payments"
    every = [names for names in listings if not any(n.startswith(("created", "ending_before")) for n in names)]
    assert every == [], f"every payment listed: {listings}"


def test_a_payment_that_went_through_after_the_runs_early_listing_counts_as_paid_for_a_cancelled_booking(
    make_sandbox, env_for, monkeypatch
):
    """The early listing (at the run's start) saw a cancelled booking's payment not yet paid; it went through before
    the payments stream ran. Its write still says the cancelled booking's charge was not refunded: the run does
    not take "never paid" from a listing minutes old."""

    import httpx

    sandbox = start(make_sandbox)
    env = without_cliniko(env_for(sandbox))
    added = admin(sandbox.calcom_url, "add", event_type_id=4001)
    admin(sandbox.calcom_url, "cancel", uid=added["uids"][0])
    (made,) = added["payment_intents"]
    stripe_api = httpx.Client(base_url=sandbox.stripe_url, auth=(sandbox.stripe_key, ""), timeout=10)
    form = {"amount": made["amount"], "currency": made["currency"]}
    form |= {f"metadata[{k}]": v for k, v in made["metadata"].items()}
    intent = stripe_api.post("/v1/payment_intents", data=form).json()
    assert intent["status"] == "requires_payment_method", intent

    def pay() -> None:
        done = stripe_api.post(f"/v1/payment_intents/{intent['id']}/confirm", data={"payment_method": "pm_card_visa"})
        assert done.json()["status"] == "succeeded", done.text

    said = _sync_with_a_payment_made_mid_run(sandbox, env, pay, monkeypatch)
    stripe_api.close()
    action, linked, message = said[str(added["ids"][0])]
    assert (action, linked) == ("linked", intent["id"]), said[str(added["ids"][0])]
    assert "not refunded" in message, said[str(added["ids"][0])]


def _sync_with_a_payment_made_mid_run(
    sandbox: Any, env: dict[str, str], pay: Callable[[], None], monkeypatch: Any
) -> dict[str, tuple[str, str | None, str]]:
    """Sync everything, `pay` making a payment in Stripe once the run has listed payments (when its first customer
    is written): ordered by the sandbox's own handling, not by time. What the run said of each booking, by source
    id: (action, Stripe id, message)."""
    import threading

    listed, arrived = threading.Event(), threading.Event()
    stripe_handle = sandbox.stripe.emulator.handle

    def stripe(request: Any) -> Any:
        if request.method == "POST" and request.path.startswith("/v1/customers") and not arrived.is_set():
            assert listed.wait(10), "the payments were listed before the first customer was written"
            arrived.set()
            pay()
        response = stripe_handle(request)
        if request.method == "GET" and request.path == "/v1/payment_intents":
            listed.set()
        return response

    monkeypatch.setattr(sandbox.stripe.emulator, "handle", stripe)
    result = sync_all(env)[STREAM]
    assert arrived.is_set(), "the payment arrived during the run"
    return {e.source_id: (e.action, e.stripe_id, e.message) for e in queries.run_events(result.run_id)}


def _links(said: dict[str, tuple[str, str | None, str]]) -> dict[str, str | None]:
    return {source_id: stripe_id for source_id, (action, stripe_id, _) in said.items() if action == "linked"}


def test_a_paid_booking_held_back_by_its_queued_change_is_waiting_not_skipped(make_sandbox, env_for):
    """A linked booking whose cancellation was queued for Stripe and not sent yet (the sync was killed just after
    storing it) is held back by the plan made meanwhile: counted and said as waiting for that change to reach Stripe,
    not as skipped (which for this stream means not paid yet, or paid out of reach). The next sync sends the queued
    change once."""
    import subprocess
    import sys

    from clinicsync import labels
    from clinicsync.store.models import OutboxEntry
    from tests.support import sync_once

    sandbox = start(make_sandbox)
    env = without_cliniko(env_for(sandbox))
    added = admin(sandbox.calcom_url, "add", event_type_id=4001)
    load_payments(sandbox, added["payment_intents"])
    assert sync_all(env)[STREAM].counts["linked"] >= 1
    (booking,) = added["ids"]
    admin(sandbox.calcom_url, "cancel", uid=added["uids"][0])
    admin(sandbox.calcom_url, "clock", advance_s=60)
    writes = executed_writes(sandbox.stripe_url)

    command = [sys.executable, "-m", "clinicsync", "sync", "--once", "--stream", STREAM]
    crash = {**env, "CLINICSYNC_CRASH_AT": "after_outbox_insert"}
    killed = subprocess.run(command, env=crash, capture_output=True, timeout=180)
    assert killed.returncode != 0, killed.stdout
    context(env)
    queued = OutboxEntry.select().where((OutboxEntry.stream == STREAM) & (OutboxEntry.status == "pending"))
    assert [row.source_id for row in queued] == [str(booking)]

    plan = sync_once(env, stream=STREAM, dry_run=True)
    words = labels.counts_words(plan.counts, STREAM)
    assert plan.counts["skipped"] == 0 and plan.counts["waiting"] == 1, words
    assert [row["source_id"] for row in plan.plan["samples"]["waiting"]] == [str(booking)]

    result = sync_once(env, stream=STREAM)
    assert result.counts["updated"] == 1 and result.counts["waiting"] == 0, result.counts
    assert executed_writes(sandbox.stripe_url) == writes + 1, "the queued change is sent once"
    by_booking = {p["metadata"].get("bookingId"): p["metadata"] for p in payments(sandbox)}
    assert by_booking[str(booking)]["calcom_status"] == "cancelled"
