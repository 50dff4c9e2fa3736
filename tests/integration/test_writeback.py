"""Cross-reference write-back: the Stripe customer id in a Cliniko patient custom field, against the sandbox."""

from __future__ import annotations

from dataclasses import replace
from itertools import count
from typing import Any

import pytest

from clinicsync.mapping.defaults import CLINIKO_PATIENTS
from clinicsync.mapping.spec import WritebackConfig, rule
from clinicsync.mapping.validate import MappingInvalid
from clinicsync.retry import CancelToken
from clinicsync.sandbox import seed
from clinicsync.store import mappings as mapping_store
from clinicsync.store.models import AccountPair
from clinicsync.sync import service, writeback
from tests.integration.test_mapping_sync import CATALOGUE, allow, save
from tests.integration.test_patients_stream import by_patient_id, customers, patients
from tests.support import admin, context, executed_writes, stats, sync_once

TOKEN = seed.CUSTOM_FIELD_STRIPE_ID_TOKEN
WRITEBACK = replace(CLINIKO_PATIENTS, writeback=WritebackConfig(enabled=True, field_token=TOKEN))


def cliniko_patches(sandbox: Any) -> int:
    return stats(sandbox.cliniko_url)["mutations"].get("PATCH /v1/patients/{id}", 0)


def test_every_linked_patient_carries_its_stripe_id_and_the_echo_causes_no_stripe_write(make_sandbox, env_for):
    sandbox = make_sandbox(profile="hard", patients=30)
    env = env_for(sandbox)
    save(env, WRITEBACK)
    before = {pid: dict(p["custom_fields"] or {}) for pid, p in patients(sandbox).items()}

    first = sync_once(env)
    assert first.outcome == "attention"  # the hard profile's review item
    assert "write-back:" in first.message
    custs = by_patient_id(customers(sandbox))
    source = patients(sandbox)
    assert custs and cliniko_patches(sandbox) == len(custs)
    for pid, customer in custs.items():
        fields = source[pid]["custom_fields"]
        assert fields[TOKEN] == customer["id"], pid
        # Read-modify-write: the patient's other custom fields are intact.
        assert {k: v for k, v in fields.items() if k != TOKEN} == before[pid]
    unlinked = set(source) - set(custs)
    assert all(TOKEN not in (source[pid]["custom_fields"] or {}) for pid in unlinked)

    stripe_writes = executed_writes(sandbox.stripe_url)
    second = sync_once(env)  # reads every patient just written back (updated_at moved)...
    assert second.counts["unchanged"] >= len(custs)
    assert second.counts["updated"] == 0 and second.counts["created"] == 0
    assert executed_writes(sandbox.stripe_url) == stripe_writes, "...and recognises its own echo: no Stripe write"
    assert cliniko_patches(sandbox) == len(custs), "nothing is written back twice"

    edited = admin(sandbox.cliniko_url, "edit", ids=sorted(custs)[:3], fields={"city": "Carlton"})["ids"]
    third = sync_once(env)
    assert third.counts["updated"] == 3 and executed_writes(sandbox.stripe_url) == stripe_writes + 3
    assert cliniko_patches(sandbox) == len(custs), "an edit does not make ClinicSync write back again"
    assert all(patients(sandbox)[pid]["custom_fields"][TOKEN] == custs[pid]["id"] for pid in edited)


def test_the_writeback_field_cannot_be_mapped_while_write_back_is_on(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=5)
    env = env_for(sandbox)
    field = f"custom_fields.{TOKEN}"
    allow(env, field)
    echo = WRITEBACK.with_rules((*WRITEBACK.rules, rule("metadata.stripe_echo", field)))
    with pytest.raises(MappingInvalid) as refused:
        save(env, echo)
    assert [p.rule for p in refused.value.problems] == ["writeback-echo"]

    # Mapped while write-back was off (allowed), then write-back turned on: the engine still masks the field.
    save(env, replace(echo, writeback=WritebackConfig()))
    sync_once(env)
    ctx = context(env)
    pair = AccountPair.get()
    cliniko = service.cliniko_client(ctx.settings, ctx.secrets, CancelToken())
    try:
        result = writeback.backfill(cliniko, pair, "cliniko.patients", TOKEN, seconds=None)
    finally:
        cliniko.close()
    assert result.written == 5
    writes = executed_writes(sandbox.stripe_url)
    # With write-back off the field is ordinary (allowed) data: its new value is sent like any other change.
    assert sync_once(env).counts["updated"] == 5
    assert executed_writes(sandbox.stripe_url) == writes + 5
    # Turned on with the field still mapped (the stored mapping predates it; validation now refuses it), a run
    # stops before sending anything rather than echo the id back.
    mapping = mapping_store.load("cliniko.patients")
    assert [p.rule for p in mapping_store.check(replace(mapping, writeback=WRITEBACK.writeback), CATALOGUE)] == [
        "writeback-echo"
    ]


def test_the_backfill_is_throttled_resumable_and_keeps_its_progress(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=25)
    env = env_for(sandbox)
    sync_once(env)  # linked, write-back still off
    save(env, WRITEBACK)
    ctx = context(env)
    pair = AccountPair.get()
    assert writeback.progress(pair, "cliniko.patients", TOKEN) == (0, 25)

    ticks = count()
    chunks = []
    while True:
        # A fresh client and clock each time, as after a restart; each "run" may spend 7 ticks.
        cliniko = service.cliniko_client(ctx.settings, ctx.secrets, CancelToken())
        start = next(ticks)
        try:
            result = writeback.backfill(
                cliniko,
                pair,
                "cliniko.patients",
                TOKEN,
                seconds=7,
                clock=lambda start=start: float(next(ticks) - start),
            )
        finally:
            cliniko.close()
        chunks.append(result.written)
        if not result.remaining:
            break
        assert result.stopped_early
        assert len(chunks) < 20
    assert len(chunks) > 2 and sum(chunks) == 25, "several time-boxed runs, each patient written once"
    assert writeback.progress(pair, "cliniko.patients", TOKEN) == (25, 25)
    assert cliniko_patches(sandbox) == 25
    # Every request went through the client's budget: a real limit paces the same work.
    budget_calls = stats(sandbox.cliniko_url)["by_endpoint"]
    assert budget_calls["GET /v1/patients/{id}"] == 25

    stripe_writes = executed_writes(sandbox.stripe_url)
    done = sync_once(env)
    assert done.counts["updated"] == 0 and executed_writes(sandbox.stripe_url) == stripe_writes
    assert cliniko_patches(sandbox) == 25
