"""The first stream end to end: Cliniko patients → Stripe customers, over real HTTP to the sandbox.

"writes" are executed mutations in the Stripe sandbox's stats (replays and rejected requests not counted).
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import httpx

from clinicsync.mapping.apply import TRUNCATION_MARKER
from clinicsync.store import queries
from clinicsync.store.models import SyncEvent
from clinicsync.sync.service import run_sync
from tests.support import (
    actual_customer_fields,
    admin,
    context,
    executed_writes,
    expected_customer_fields,
    stats,
    sync_once,
)

STREAM = "cliniko.patients"


def customers(sandbox, *, livemode: bool = False, account: str | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"livemode": livemode}
    if account:
        params["account"] = account
    return [c for c in admin(sandbox.stripe_url, "dump", **params)["data"] if not c["deleted"]]


def patients(sandbox) -> dict[str, dict[str, Any]]:
    dump = admin(sandbox.cliniko_url, "dump")
    return {p["id"]: p for p in dump["patients"]}


def by_patient_id(custs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = {}
    for customer in custs:
        pid = customer["metadata"].get("cliniko_patient_id")
        if pid:
            assert pid not in result, f"two customers for patient {pid}"
            result[pid] = customer
    return result


def events(run_id: int, action: str | None = None) -> list[SyncEvent]:
    rows = queries.run_events(run_id)
    return [row for row in rows if action is None or row.action == action]


def test_clean_500_then_no_writes_then_exactly_the_edits(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=500)
    env = env_for(sandbox)

    first = sync_once(env)
    assert first.outcome == "ok", first.message
    assert first.counts["created"] == 500
    assert stats(sandbox.stripe_url)["mutations"] == {"POST /v1/customers": 500}
    custs = by_patient_id(customers(sandbox))
    source = patients(sandbox)
    assert set(custs) == set(source)
    for pid, patient in source.items():
        assert actual_customer_fields(custs[pid]) == expected_customer_fields(patient), pid

    second = sync_once(env)
    assert second.outcome == "ok"
    assert executed_writes(sandbox.stripe_url) == 500, "an unchanged source must cause no Stripe write"

    edited = admin(sandbox.cliniko_url, "edit", count=7)["ids"]
    third = sync_once(env)
    assert third.counts["updated"] == 7 and third.counts["created"] == 0
    assert stats(sandbox.stripe_url)["mutations"] == {"POST /v1/customers": 500, "POST /v1/customers/{id}": 7}
    assert sorted(e.source_id for e in events(third.run_id, "updated")) == sorted(edited)
    custs = by_patient_id(customers(sandbox))
    source = patients(sandbox)
    for pid in edited:
        assert actual_customer_fields(custs[pid]) == expected_customer_fields(source[pid])


def test_archived_patient_is_marked_not_deleted_and_unmarked_when_unarchived(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=20)
    env = env_for(sandbox)
    sync_once(env)
    pid = next(iter(patients(sandbox)))

    admin(sandbox.cliniko_url, "archive", ids=[pid])
    archived_run = sync_once(env)
    assert archived_run.counts["updated"] == 1
    customer = by_patient_id(customers(sandbox))[pid]
    assert customer["metadata"]["cliniko_archived"].startswith("archived ")
    assert stats(sandbox.stripe_url)["mutations"].get("DELETE /v1/customers/{id}") is None

    admin(sandbox.cliniko_url, "unarchive", ids=[pid])
    unarchived_run = sync_once(env)
    assert unarchived_run.counts["updated"] == 1
    customer = by_patient_id(customers(sandbox))[pid]
    assert "cliniko_archived" not in customer["metadata"]
    assert customer["metadata"]["cliniko_patient_id"] == pid


def test_hard_profile_outcomes_record_by_record(make_sandbox, env_for):
    sandbox = make_sandbox(profile="hard", patients=30)
    env = env_for(sandbox)
    cases = {case: pid for pid, case in sandbox.seeded["cases"].items()}
    result = sync_once(env)

    history = {e.source_id: e for e in events(result.run_id)}
    action = {case: history[pid].action for case, pid in cases.items() if pid in history}
    expected = {
        "no_email": "created",
        "family_shared_email_1": "created",
        "family_shared_email_2": "created",
        "family_shared_email_3": "created",
        "unicode_accents": "created",
        "unicode_cjk": "created",
        "unicode_rtl": "created",
        "long_names_255": "created",
        "plus_addressed_email": "created",
        "upper_case_email": "created",
        "archived": "skipped",
        "merged_away": "skipped",
        "merge_survivor": "created",
        "home_phone_only": "created",
        "mobile_and_home": "created",
        "address_lines_2_and_3": "created",
        "stripe_email_case_match": "linked",
        "stripe_duplicate_email": "review",
    }
    assert action == expected
    ordinary = len(patients(sandbox)) - len(cases)
    live_cases = sum(1 for value in expected.values() if value == "created")
    assert result.counts == {
        "created": live_cases + ordinary,
        "linked": 1,
        "updated": 0,
        "unchanged": 0,
        "skipped": 2,
        "failed": 0,
        "review": 1,
        "waiting": 0,
    }
    assert result.outcome == "attention"  # a review item needs a person

    custs = by_patient_id(customers(sandbox))
    family = [custs[cases[f"family_shared_email_{n}"]]["id"] for n in (1, 2, 3)]
    assert len(set(family)) == 3, "family members sharing an email get one customer each"
    assert custs[cases["no_email"]]["email"] is None
    assert custs[cases["unicode_rtl"]]["name"] == "ليلى حداد"
    long_name = custs[cases["long_names_255"]]["name"]
    assert len(long_name) == 256 and long_name.endswith(TRUNCATION_MARKER)
    assert "shortened" in history[cases["long_names_255"]].message
    assert custs[cases["home_phone_only"]]["phone"]
    assert cases["archived"] not in custs and cases["merged_away"] not in custs
    assert custs[cases["stripe_email_case_match"]]["email"] == "olivia.nguyen@example.com"  # the source wins
    assert cases["stripe_duplicate_email"] not in custs
    # Every Stripe customer is either one the sandbox seeded or one per synced patient: no duplicates.
    assert len(customers(sandbox)) == len(custs) + 3  # 2 duplicates left for review + 1 unrelated


def test_existing_customer_with_same_email_is_linked_and_a_review_link_is_carried_out(make_sandbox, env_for):
    sandbox = make_sandbox(profile="hard", patients=20)
    env = env_for(sandbox)
    cases = {case: pid for pid, case in sandbox.seeded["cases"].items()}
    before = {c["id"]: c for c in customers(sandbox)}
    sync_once(env)

    linked = by_patient_id(customers(sandbox))[cases["stripe_email_case_match"]]
    assert linked["id"] in before, "linked to the existing customer, not a new one"

    context(env)
    (item,) = queries.open_reviews()
    assert item.source_id == cases["stripe_duplicate_email"] and len(item.candidates) == 2
    chosen = item.candidates[1]
    queries.resolve_review(item.id, "link", chosen)

    after = sync_once(env)
    assert after.counts["linked"] == 1 and after.counts["review"] == 0
    assert by_patient_id(customers(sandbox))[cases["stripe_duplicate_email"]]["id"] == chosen
    context(env)
    assert queries.open_reviews() == []


def test_linked_customer_deleted_in_stripe_becomes_review_not_a_silent_recreate(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=5)
    env = env_for(sandbox)
    sync_once(env)
    pid, customer = next(iter(by_patient_id(customers(sandbox)).items()))
    admin(sandbox.stripe_url, "delete", ids=[customer["id"]])
    admin(sandbox.cliniko_url, "edit", ids=[pid])

    result = sync_once(env)
    assert result.counts["review"] == 1 and result.counts["created"] == 0
    assert pid not in by_patient_id(customers(sandbox))
    context(env)
    (item,) = queries.open_reviews()
    assert item.reason == "stripe_object_deleted"

    queries.resolve_review(item.id, "create")
    recreated = sync_once(env)
    assert recreated.counts["created"] == 1
    assert pid in by_patient_id(customers(sandbox))


def test_a_customer_staff_add_in_stripe_after_the_first_sync_is_linked_not_duplicated(make_sandbox, env_for):
    """The index of existing customers is listed once, then topped up each run with what Stripe created since
    (before, a customer typed into the dashboard after the first sync was invisible and the patient got a second)."""
    sandbox = make_sandbox(profile="clean", patients=5)
    env = env_for(sandbox)
    sync_once(env)
    staff_made = httpx.post(
        f"{sandbox.stripe_url}/v1/customers",
        auth=(sandbox.stripe_key, ""),
        data={"name": "Maya Okafor", "email": "Maya.Okafor@Example.org"},
    ).json()
    (new_patient,) = admin(sandbox.cliniko_url, "seed", profile="clean", patients=1, seed=77, replace=False)["ids"]
    admin(sandbox.cliniko_url, "edit", ids=[new_patient], fields={"email": "maya.okafor@example.org"})

    result = sync_once(env)
    assert result.counts["linked"] == 1 and result.counts["created"] == 0, result.counts
    assert by_patient_id(customers(sandbox))[new_patient]["id"] == staff_made["id"]
    assert len(customers(sandbox)) == 6

    listed = stats(sandbox.stripe_url)["by_endpoint"]["GET /v1/customers"]
    again = sync_once(env)
    assert again.counts["created"] == again.counts["linked"] == 0
    assert stats(sandbox.stripe_url)["by_endpoint"]["GET /v1/customers"] == listed + 1, "one listing call a run"


def test_a_profile_started_afresh_finds_its_customers_again_by_cliniko_id(make_sandbox, env_for):
    """What the "database is damaged" message promises: moving the database aside creates nobody twice."""
    sandbox = make_sandbox(profile="clean", patients=12)
    env = env_for(sandbox)
    sync_once(env)
    db_file = context(env).paths.db_path
    for suffix in ("", "-wal", "-shm"):
        db_file.with_name(db_file.name + suffix).unlink(missing_ok=True)

    fresh = sync_once(env)
    assert fresh.counts["created"] == 0 and fresh.counts["linked"] == 12, fresh.counts
    assert len(customers(sandbox)) == 12


def test_switching_stripe_account_starts_with_fresh_state(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=10)
    env = env_for(sandbox)
    sync_once(env)
    other = dict(env, CLINICSYNC_STRIPE_API_KEY="sk_test_sandbox_clinic_b")
    result = sync_once(other)
    assert result.counts["created"] == 10, "no link from account A may be reused for account B"
    assert len(customers(sandbox, account="acct_sandbox_clinic_b")) == 10
    assert len(customers(sandbox)) == 10
    back = sync_once(env)
    assert back.counts["created"] == 0


def test_dry_run_plans_and_changes_nothing(make_sandbox, env_for):
    sandbox = make_sandbox(profile="hard", patients=20)
    env = env_for(sandbox)
    plan_run = sync_once(env, dry_run=True)
    assert executed_writes(sandbox.stripe_url) == 0
    assert plan_run.plan is not None
    assert plan_run.plan["counts"]["linked"] == 1 and plan_run.plan["counts"]["review"] == 1
    assert "email" in plan_run.plan["fields"]
    context(env)
    assert queries.open_reviews() == []

    real = sync_once(env)
    for action in ("created", "linked", "review", "skipped"):
        assert real.counts[action] == plan_run.plan["counts"][action], action


def test_a_dry_run_leaves_the_database_free_for_other_writers_and_no_copy_behind(make_sandbox, env_for):
    """The plan is computed on a private copy. Before, one rolled-back transaction held SQLite's write lock for
    the whole read, so the window's own writes (pause, a review decision) waited 10 s and then failed."""
    sandbox = make_sandbox(profile="hard", patients=20)
    env = env_for(sandbox)
    ctx = context(env)
    db_path = ctx.paths.db_path
    outcomes: list[str] = []

    def write_from_another_thread() -> None:
        conn = sqlite3.connect(db_path, timeout=0, isolation_level=None)  # no waiting: locked means failed
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE schema_version SET version = version")
            conn.execute("COMMIT")
            outcomes.append("written")
        except sqlite3.OperationalError as exc:
            outcomes.append(str(exc))
        finally:
            conn.close()

    def on_progress(stream: str, done: int, total: int | None, step: str) -> None:
        if done:  # mid-read, after the run has recorded what it saw of some records
            writer = threading.Thread(target=write_from_another_thread)
            writer.start()
            writer.join()

    (planned,) = run_sync(ctx.paths, ctx.settings, ctx.secrets, streams=[STREAM], dry_run=True, progress=on_progress)
    assert planned.outcome in ("ok", "attention") and planned.plan is not None, planned.message
    assert len(outcomes) >= 20 and set(outcomes) == {"written"}, outcomes[:3]
    assert sorted(p.name for p in db_path.parent.iterdir() if "snapshot" in p.name) == []
    context(env)
    assert queries.open_reviews() == [], "nothing the dry run decided was kept"


def test_hostile_records_each_get_a_specific_outcome_and_the_rest_sync(make_sandbox, env_for):
    sandbox = make_sandbox(profile="hostile", patients=30)
    env = env_for(sandbox)
    cases = {case: pid for pid, case in sandbox.seeded["cases"].items()}
    result = sync_once(env)
    history = {e.source_id: e for e in events(result.run_id)}

    for case in ("email_not_an_email", "email_a_at_b", "email_double_at"):
        assert history[cases[case]].action == "failed"
        assert "not a valid email address" in history[cases[case]].message
    assert history[cases["email_600_chars"]].action == "failed"
    assert "over Stripe's limit of 512" in history[cases["email_600_chars"]].message
    assert history[cases["address_6000_chars"]].action == "failed"
    assert "address.line1" in history[cases["address_6000_chars"]].message
    assert history[cases["name_5000_chars"]].action == "created"
    assert "shortened from" in history[cases["name_5000_chars"]].message
    for case in ("control_characters", "nul_bytes"):
        assert history[cases[case]].action == "created"
        assert "control character" in history[cases[case]].message
    for case in ("emoji_and_rtl", "markup_and_sql", "all_nulls", "email_padded_whitespace"):
        assert history[cases[case]].action == "created", case

    custs = by_patient_id(customers(sandbox))
    assert custs[cases["email_padded_whitespace"]]["email"] == "padded.email@example.com"
    rejected = {"email_not_an_email", "email_a_at_b", "email_double_at", "email_600_chars", "address_6000_chars"}
    assert result.counts["failed"] == len(rejected)
    assert len(custs) == len(patients(sandbox)) - len(rejected)
    assert stats(sandbox.stripe_url)["rejected_total"] == 0, "nothing Stripe would refuse was sent"


def test_first_live_sync_stops_at_a_plan_and_writes_exactly_it_once_approved(make_sandbox, env_for):
    sandbox = make_sandbox(profile="hard", patients=20, stripe_mode="live")
    env = env_for(sandbox)
    first = sync_once(env)
    assert first.outcome == "needs_approval"
    assert "plan approve" in first.message
    assert executed_writes(sandbox.stripe_url) == 0
    planned = first.plan
    assert planned is not None and planned["stripe_mode"] == "live"
    # A new live connection whose mapping nobody has saved syncs only patients seen in the last 24 months.
    inactive = set(sandbox.seeded["inactive_ids"])
    assert inactive, "the seed leaves some patients without recent activity"
    assert planned["scope"] == "patients with an invoice or appointment in the last 24 months"
    assert "default for a new live connection" in planned["scope_note"]
    assert planned["out_of_scope"] == len(inactive)
    planned_ids = {row["source_id"] for rows in planned["samples"].values() for row in rows}
    assert planned_ids.isdisjoint(inactive)

    context(env)
    queries.approve_latest_plan("cliniko.patients")
    approved = sync_once(env)
    assert approved.outcome == "attention"  # the hard profile's review item
    for action in ("created", "linked", "updated", "review", "skipped", "failed"):
        assert approved.counts[action] == planned["counts"][action], action
    assert executed_writes(sandbox.stripe_url) == planned["counts"]["created"] + planned["counts"]["linked"]
    for action in ("created", "linked"):
        planned_ids = {row["source_id"] for row in planned["samples"][action]}
        assert planned_ids == {e.source_id for e in events(approved.run_id, action)}, action
    assert sync_once(env).outcome in ("ok", "attention"), "approval is once per stream and account pair"
    custs = by_patient_id(customers(sandbox, livemode=True))
    assert custs and set(custs).isdisjoint(inactive), "patients without recent activity are never sent"


def test_a_first_live_sync_cancelled_while_planning_is_cancelled_not_waiting_for_approval(make_sandbox, env_for):
    """No plan was saved, so "approve the plan" would send the person looking for one that is not there."""
    from clinicsync.retry import CancelToken

    sandbox = make_sandbox(profile="clean", patients=20, stripe_mode="live")
    env = env_for(sandbox)
    ctx = context(env)
    token = CancelToken()
    (result,) = run_sync(
        ctx.paths, ctx.settings, ctx.secrets, streams=[STREAM], cancel=token, progress=lambda *_: token.cancel()
    )
    assert result.outcome == "cancelled", (result.outcome, result.message)
    assert "plan approve" not in result.message
    assert executed_writes(sandbox.stripe_url) == 0


def test_test_mode_needs_no_approval_and_keeps_every_patient_in_scope(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=12)
    assert sandbox.seeded["inactive_ids"], "some patients have no recent activity, and test mode syncs them too"
    assert sync_once(env_for(sandbox)).outcome == "ok"
    assert executed_writes(sandbox.stripe_url) == 12


def test_a_live_connection_keeps_the_scope_a_person_saved(make_sandbox, env_for):
    """Choosing "all" for the live connection (saving the mapping, even unchanged) replaces the default."""
    from clinicsync.mapping.defaults import CLINIKO_PATIENTS
    from clinicsync.mapping.fields import FieldCatalogue
    from clinicsync.store import mappings as mapping_store

    sandbox = make_sandbox(profile="clean", patients=12, stripe_mode="live")
    env = env_for(sandbox)
    context(env)
    mapping_store.save(CLINIKO_PATIENTS, FieldCatalogue.for_source("cliniko", "patient"), who="test")
    planned = sync_once(env).plan
    assert planned is not None and planned["scope"] == "all records" and not planned["scope_note"]
    assert planned["out_of_scope"] == 0 and planned["counts"]["created"] == 12
