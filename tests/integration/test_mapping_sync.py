"""Field mappings end to end: saved mappings drive real syncs against the sandbox (Cliniko → Stripe over HTTP).

"writes" are executed mutations in the Stripe sandbox's stats; request bodies come from the Stripe emulator's
opt-in request log.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import pytest

from clinicsync.mapping.apply import TRUNCATION_MARKER
from clinicsync.mapping.defaults import CLINIKO_PATIENTS
from clinicsync.mapping.fields import FieldCatalogue, custom_field_entries
from clinicsync.mapping.spec import FieldRule, StreamMapping, SyncScope, rule
from clinicsync.mapping.validate import MappingInvalid
from clinicsync.sandbox import seed
from clinicsync.sandbox.cliniko_emu import CUSTOM_FIELD_DEFINITIONS
from clinicsync.store import mappings as mapping_store
from clinicsync.store.models import AccountPair, FieldAllowance, StreamState
from tests.integration.test_patients_stream import by_patient_id, customers, events, patients
from tests.support import admin, context, executed_writes, stats, sync_once

HEALTH_FUND = f"custom_fields.{seed.CUSTOM_FIELD_HEALTH_FUND_TOKEN}"
CATALOGUE = FieldCatalogue.for_source(
    "cliniko",
    "patient",
    custom_field_entries({"patient_custom_fields_definition": {"sections": CUSTOM_FIELD_DEFINITIONS}}),
)


def save(env: dict[str, str], mapping: StreamMapping) -> mapping_store.SaveResult:
    context(env)
    return mapping_store.save(mapping, CATALOGUE, who="test")


def with_rule(mapping: StreamMapping, extra: FieldRule) -> StreamMapping:
    return mapping.with_rules((*mapping.rules, extra))


def replace_rule(mapping: StreamMapping, target: str, new: FieldRule) -> StreamMapping:
    return mapping.with_rules(tuple(new if r.target == target else r for r in mapping.rules))


def without(mapping: StreamMapping, target: str) -> StreamMapping:
    return mapping.with_rules(tuple(r for r in mapping.rules if r.target != target))


def allow(env: dict[str, str], field: str) -> None:
    context(env)
    warning = mapping_store.warning_for("cliniko.patients", field, CATALOGUE)
    mapping_store.allow("cliniko.patients", field, warning=warning, who="test", via="test")


def request_log(sandbox: Any) -> list[dict[str, Any]]:
    return admin(sandbox.stripe_url, "request_log")["requests"]


def sent_pairs(requests: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Every (parameter, value) Stripe received: query strings and form bodies."""
    pairs: list[tuple[str, str]] = []
    for request in requests:
        pairs.extend((k, v) for k, v in request["query"])
        pairs.extend(parse_qsl(request["body"], keep_blank_values=True))
    return pairs


def test_changing_name_to_a_template_repushes_exactly_the_affected_customers(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=60)
    env = env_for(sandbox)
    assert sync_once(env).counts["created"] == 60
    source = patients(sandbox)
    titled = {pid for pid, p in source.items() if p.get("title")}
    assert 0 < len(titled) < 60, "the clean seed gives most, not all, patients a title"

    result = save(
        env,
        replace_rule(
            CLINIKO_PATIENTS,
            "name",
            rule("name", transform="template", template="{title} {first_name} {last_name}", overflow="truncate"),
        ),
    )
    assert result.changed and result.cursor_reset and result.mapping.version == 1
    context(env)
    assert {state.cursor for state in StreamState.select()} == {None}, "a mapping change re-reads the source"

    before = executed_writes(sandbox.stripe_url)
    run = sync_once(env)
    assert run.counts["updated"] == len(titled)
    assert run.counts["unchanged"] == 60 - len(titled)
    assert executed_writes(sandbox.stripe_url) - before == len(titled)
    assert {e.source_id for e in events(run.run_id, "updated")} == titled
    custs = by_patient_id(customers(sandbox))
    for pid, patient in source.items():
        expected = " ".join(p for p in (patient["title"], patient["first_name"], patient["last_name"]) if p)
        assert custs[pid]["name"] == expected

    again = sync_once(env)
    assert again.counts["updated"] == 0 and executed_writes(sandbox.stripe_url) - before == len(titled)


def test_a_clinical_field_is_refused_until_allowed_then_sent_then_removed_and_unset(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=12)
    env = env_for(sandbox)
    admin(sandbox.stripe_url, "request_log", enabled=True)
    sync_once(env)
    notes_rule = rule("metadata.notes", "notes", overflow="truncate")
    with pytest.raises(MappingInvalid) as refused:
        save(env, with_rule(CLINIKO_PATIENTS, notes_rule))
    (problem,) = refused.value.problems
    assert (problem.row, problem.rule) == (11, "clinical-field")
    assert "row 11 (metadata.notes ← notes)" in str(problem)
    source = patients(sandbox)
    notes = {pid: p["notes"] for pid, p in source.items() if p.get("notes")}
    assert notes, "the seed fills clinical notes on purpose"

    # Refused: nothing of it was sent.
    sync_once(env)
    values = [value for _, value in sent_pairs(request_log(sandbox))]
    assert not any(note in value for note in notes.values() for value in values)

    allow(env, "notes")
    context(env)
    (decision,) = FieldAllowance.select()
    assert (decision.source_field, decision.decision, decision.decided_by) == ("notes", "allowed", "test")
    assert "clinical or sensitive" in decision.warning and decision.decided_at is not None
    save(env, with_rule(CLINIKO_PATIENTS, notes_rule))
    sent = sync_once(env)
    assert sent.counts["updated"] == len(notes)
    custs = by_patient_id(customers(sandbox))
    assert {pid: custs[pid]["metadata"].get("notes") for pid in notes} == notes

    admin(sandbox.stripe_url, "request_log", enabled=True)
    save(env, CLINIKO_PATIENTS)  # removed again
    removed = sync_once(env)
    assert removed.counts["updated"] == len(notes), "exactly the customers that held a note are updated"
    custs = by_patient_id(customers(sandbox))
    assert all("notes" not in c["metadata"] for c in custs.values()), "a field removed from the mapping is unset"
    pairs = sent_pairs(request_log(sandbox))
    assert ("metadata[notes]", "") in pairs
    assert not any(note in value for note in notes.values() for _, value in pairs)

    admin(sandbox.stripe_url, "request_log", enabled=True)
    admin(sandbox.cliniko_url, "edit", ids=list(notes), fields={"notes": "a new clinical note that must stay home"})
    after = sync_once(env)
    assert after.counts["updated"] == 0, "only the (unmapped) notes changed: nothing to send"
    assert not any("must stay home" in value for _, value in sent_pairs(request_log(sandbox)))
    context(env)
    mapping_store.withdraw("cliniko.patients", "notes", who="test")
    assert mapping_store.allowed_fields("cliniko.patients") == set()


def test_an_overlong_metadata_value_is_rejected_or_truncated_as_configured(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=6)
    env = env_for(sandbox)
    allow(env, HEALTH_FUND)
    long_pid, *others = sorted(patients(sandbox))
    admin(
        sandbox.cliniko_url,
        "edit",
        ids=[long_pid],
        fields={
            "custom_fields": {
                "sections": [
                    {
                        "fields": [
                            {"token": seed.CUSTOM_FIELD_HEALTH_FUND_TOKEN, "value": "Bupa " + "x" * 600},
                        ]
                    }
                ]
            }
        },
    )
    save(env, with_rule(CLINIKO_PATIENTS, rule("metadata.health_fund", HEALTH_FUND)))
    rejected = sync_once(env)
    (failure,) = events(rejected.run_id, "failed")
    assert failure.source_id == long_pid
    assert "metadata health_fund is 605 characters long, over Stripe's limit of 500" in failure.message
    assert "overflow" in failure.message
    assert rejected.counts["created"] == 5 and stats(sandbox.stripe_url)["rejected_total"] == 0

    save(env, with_rule(CLINIKO_PATIENTS, rule("metadata.health_fund", HEALTH_FUND, overflow="truncate")))
    truncated = sync_once(env)
    assert truncated.counts["created"] == 1 and truncated.counts["failed"] == 0
    value = by_patient_id(customers(sandbox))[long_pid]["metadata"]["health_fund"]
    assert len(value) == 500 and value.startswith("Bupa xxx") and value.endswith(TRUNCATION_MARKER)
    (created,) = events(truncated.run_id, "created")
    assert "metadata.health_fund: shortened from 605 to 500" in created.message
    assert {c["metadata"]["health_fund"] for pid, c in by_patient_id(customers(sandbox)).items() if pid in others}


def test_fields_outside_the_mapping_never_reach_stripe(make_sandbox, env_for):
    sandbox = make_sandbox(profile="hard", patients=30)
    env = env_for(sandbox)
    admin(sandbox.stripe_url, "request_log", enabled=True)
    sync_once(env)
    admin(sandbox.cliniko_url, "edit", count=10)
    sync_once(env)
    admin(sandbox.cliniko_url, "archive", ids=sorted(patients(sandbox))[:2])
    sync_once(env)

    pairs = sent_pairs(request_log(sandbox))
    assert pairs, "the log holds what was sent"
    mapped = {"name", "email", "phone", "metadata[cliniko_patient_id]", "metadata[cliniko_archived]"}
    mapped |= {f"address[{part}]" for part in ("line1", "line2", "city", "state", "postal_code", "country")}
    mapped.add("address")  # an address unset as a whole
    listing = {"limit", "starting_after", "email", "query", "created[gte]"}  # listings and lookups, not record data
    assert {name for name, _ in pairs} <= mapped | listing
    clinical = ("notes", "appointment_notes", "medicare", "medicare_reference_number", "dva_card_number")
    for patient in patients(sandbox).values():
        secrets = [str(patient[f]) for f in (*clinical, "date_of_birth") if patient.get(f)]
        secrets += [str(v) for v in (patient.get("custom_fields") or {}).values() if v]
        for name, value in pairs:
            assert value not in secrets, f"{name}={value!r} is a clinical value of patient {patient['id']}"
            assert not any(len(s) > 12 and s in value for s in secrets)


def test_scope_since_a_date_syncs_only_records_changed_since(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=30)
    env = env_for(sandbox)
    edited = admin(sandbox.cliniko_url, "edit", count=4)["ids"]  # seeded records are dated 2021–2025
    today = datetime.now(UTC).date()
    save(env, replace(CLINIKO_PATIENTS, scope=SyncScope(kind="since", since=today.replace(day=1, month=1))))
    plan = sync_once(env, dry_run=True).plan
    assert plan is not None and plan["scope"].startswith("records created or updated since")
    assert plan["counts"]["created"] == 4
    assert {row["target"] for row in plan["sent"]} == {r.target for r in CLINIKO_PATIENTS.rules}
    run = sync_once(env)
    assert run.counts["created"] == 4
    assert set(by_patient_id(customers(sandbox))) == set(edited)


def test_scope_recent_activity_syncs_exactly_the_patients_with_an_invoice_or_appointment(make_sandbox, env_for):
    """Scope "recent activity, 24 months" against the sandbox's /invoices and /individual_appointments: exactly the
    patients with activity are synced; a patient who books an appointment (the patient record untouched) comes
    into scope on the next run; the approval plan shows the scope and how many records it leaves out."""
    sandbox = make_sandbox(profile="clean", patients=40)
    env = env_for(sandbox)
    source = patients(sandbox)
    inactive = set(sandbox.seeded["inactive_ids"])
    assert 0 < len(inactive) < 40, "the seed leaves some patients without activity in the last 24 months"
    active = set(source) - inactive
    save(env, replace(CLINIKO_PATIENTS, scope=SyncScope(kind="recent_activity", months=24)))

    plan = sync_once(env, dry_run=True).plan
    assert plan is not None
    assert plan["scope"] == "patients with an invoice or appointment in the last 24 months"
    assert plan["out_of_scope"] == len(inactive) and plan["counts"]["created"] == len(active)
    assert executed_writes(sandbox.stripe_url) == 0

    first = sync_once(env)
    assert first.outcome == "ok", first.message
    assert first.counts["created"] == len(active)
    assert set(by_patient_id(customers(sandbox))) == active
    requests = stats(sandbox.cliniko_url)["by_endpoint"]
    assert requests.get("GET /v1/invoices") and requests.get("GET /v1/individual_appointments")

    newcomer = sorted(inactive)[0]
    updated_at = source[newcomer]["updated_at"]
    admin(sandbox.cliniko_url, "book", patient_id=newcomer)
    assert patients(sandbox)[newcomer]["updated_at"] == updated_at, "booking does not touch the patient"
    second = sync_once(env)
    assert second.counts["created"] == 1 and second.counts["updated"] == 0
    assert set(by_patient_id(customers(sandbox))) == active | {newcomer}
    assert [e.source_id for e in events(second.run_id, "created")] == [newcomer]


def test_scope_recent_activity_engine_side_with_a_source_that_knows_activity(make_sandbox, env_for):
    """The engine half of the activity scope, with the activity lookup replaced: only active patients are created,
    and a patient who becomes active without being edited is picked up by the next incremental run."""
    from clinicsync.retry import CancelToken
    from clinicsync.streams import CLINIKO_PATIENTS as CLINIKO_PATIENTS_STREAM
    from clinicsync.sync import service
    from clinicsync.sync.engine import StreamRun

    sandbox = make_sandbox(profile="clean", patients=20)
    env = env_for(sandbox)
    ids = sorted(patients(sandbox))
    active = set(ids[:3])
    calls: list[tuple[str, str]] = []

    def active_ids(client: Any, since: Any, zone: str) -> set[str]:
        calls.append((since.isoformat(), zone))
        return set(active)

    stream = replace(CLINIKO_PATIENTS_STREAM, active_ids=active_ids)
    save(env, replace(CLINIKO_PATIENTS, scope=SyncScope(kind="recent_activity", months=24)))

    def run_once() -> Any:
        ctx = context(env)
        cancel = CancelToken()
        cliniko = service.cliniko_client(ctx.settings, ctx.secrets, cancel)
        gateway = service.stripe_gateway(ctx.settings, ctx.secrets)
        try:
            pair = service.resolve_pair(cliniko, gateway)
            options = service.run_options(ctx.settings, trigger="test", dry_run=False)
            return StreamRun(stream, pair, cliniko, gateway, options, cancel=cancel).run()
        finally:
            cliniko.close()

    first = run_once()
    assert first.counts["created"] == 3
    assert set(by_patient_id(customers(sandbox))) == active
    assert calls[0][1] == "Australia/Melbourne"  # the sandbox business's zone
    active |= set(ids[3:5])  # two patients book an appointment; their records do not change
    second = run_once()
    assert second.counts["created"] == 2 and second.counts["updated"] == 0
    assert set(by_patient_id(customers(sandbox))) == active


def test_an_invalid_stored_mapping_stops_the_stream_before_anything_is_sent(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=5)
    env = env_for(sandbox)
    allow(env, "notes")
    save(env, with_rule(CLINIKO_PATIENTS, rule("metadata.notes", "notes", overflow="truncate")))
    context(env)
    # Withdrawing is refused while mapped; a database edited behind ClinicSync's back is still caught at run time.
    with pytest.raises(MappingInvalid):
        mapping_store.withdraw("cliniko.patients", "notes", who="test")
    FieldAllowance.delete().execute()
    result = sync_once(env)
    assert result.outcome == "failed" and result.stop_kind == "mapping"
    assert "[clinical-field]" in result.message
    assert executed_writes(sandbox.stripe_url) == 0


def test_preview_shows_the_exact_request_and_the_diff_and_writes_nothing(make_sandbox, env_for):
    from clinicsync.sync.preview import connect, fetch_preview

    sandbox = make_sandbox(profile="clean", patients=5)
    env = env_for(sandbox)
    sync_once(env)
    pid = sorted(patients(sandbox))[0]
    patient = patients(sandbox)[pid]
    ctx = context(env)
    template = replace_rule(
        CLINIKO_PATIENTS, "name", rule("name", transform="template", template="{last_name}, {first_name}")
    )
    writes, cliniko_writes = executed_writes(sandbox.stripe_url), executed_writes(sandbox.cliniko_url)
    connection = connect(ctx.settings, ctx.secrets, "cliniko.patients")
    try:
        assert connection.pair is not None
        preview = fetch_preview(connection, template, pid)
        missing = fetch_preview(connection, template, "1")
    finally:
        connection.close()
    assert preview.found and preview.op == "update" and preview.stripe_id
    assert preview.params["name"] == f"{patient['last_name']}, {patient['first_name']}"
    assert preview.params["metadata"]["cliniko_patient_id"] == pid
    changed = {d.target: (d.current, d.new) for d in preview.diff if d.changed}
    assert changed == {
        "name": (f"{patient['first_name']} {patient['last_name']}", f"{patient['last_name']}, {patient['first_name']}")
    }
    assert not missing.found
    assert executed_writes(sandbox.stripe_url) == writes and executed_writes(sandbox.cliniko_url) == cliniko_writes
    context(env)
    assert AccountPair.select().count() == 1
