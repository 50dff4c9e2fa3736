"""Two installations mirroring the same Cliniko invoices at once (issue 8; found by the soak, seed 101: 3 to 37
invoices mirrored twice): the Stripe invoices a race made twice are repaired on the next run. The finalized one made
first is kept; each twin is closed the mirror's way (voided, or credited in full outside Stripe when paid; never
refunded, never emailed) and marked as the kept one's duplicate; an installation linked to a twin moves its link to
the one kept and sends its data there. A mirror voided and replaced on purpose (its lines edited in Cliniko) is no
twin: it stays as it is, and nobody is told of another computer.
"""

from __future__ import annotations

import time
from typing import Any

import stripe

from clinicsync.store.models import RecordLink
from clinicsync.streams.base import DUPLICATE_OF_KEY
from clinicsync.stripe_gateway import StripeFailure, StripeGateway
from clinicsync.sync.service import run_sync
from clinicsync.sync.twins import OTHER_INSTALLATION_MESSAGE
from tests.integration.test_invoice_mirror import ON, STREAM, check_exact, mirrors
from tests.support import admin, context, sync_once

# Linking invoices to payments (on by default) leaves some of this seed in review: not these tests' subject.
MIRROR_ONLY = {**ON, "CLINICSYNC_STREAMS_CLINIKO_INVOICES_ENABLED": "false"}


def _links(env: dict[str, str]) -> dict[str, str]:
    context(env)
    rows = RecordLink.select().where((RecordLink.stream == STREAM) & RecordLink.stripe_id.is_null(False))
    return {row.source_id: row.stripe_id for row in rows}


def _twin(sdk: stripe.StripeClient, mirror: dict[str, Any], state: str) -> str:
    """The mirror another computer made of the same invoice at the same moment: its one line the total, then
    finalized and paid as far as `state`."""
    invoice_id = mirror["metadata"]["cliniko_invoice_id"]
    made = sdk.v1.invoices.create(
        params={
            "customer": mirror["customer"],
            "currency": mirror["currency"],
            "collection_method": "send_invoice",
            "days_until_due": 30,
            "auto_advance": False,
            "metadata": {"cliniko_invoice_id": invoice_id},
        }
    )
    line = {"amount": mirror["total"], "currency": mirror["currency"], "description": "Consultation"}
    sdk.v1.invoice_items.create(params={"customer": mirror["customer"], "invoice": made.id, **line})
    if state in ("open", "paid"):
        sdk.v1.invoices.finalize_invoice(made.id, params={"auto_advance": False})
    if state == "paid":
        sdk.v1.invoices.pay(made.id, params={"paid_out_of_band": True})
    return made.id


def _closed(dump: dict[str, Any], twin_id: str) -> tuple[str, int, str | None]:
    (invoice,) = [i for i in dump["invoices"] if i["id"] == twin_id]
    credited = sum(n["out_of_band_amount"] for n in dump["credit_notes"] if n["invoice"] == twin_id)
    return invoice["status"], credited, invoice["metadata"].get(DUPLICATE_OF_KEY)


def test_twins_of_a_race_are_closed_and_marked_the_links_move_to_the_one_kept_and_a_replacement_stays(
    make_sandbox, env_for
) -> None:
    sandbox = make_sandbox(patients=30, products=2, invoices=40, invoice_customers=15, seed=7)
    a, b = env_for(sandbox, "a", **MIRROR_ONLY), env_for(sandbox, "b", **MIRROR_ONLY)
    for env in (a, b):  # A mirrors every invoice; B, after it, links A's mirrors
        ctx = context(env)
        assert all(r.outcome == "ok" for r in run_sync(ctx.paths, ctx.settings, ctx.secrets))
    checked = check_exact(sandbox)
    kept = {iid: found[0] for iid, found in mirrors(checked["dump"]).items()}
    assert _links(a) == _links(b) == {iid: m["id"] for iid, m in kept.items()}
    paid = sorted(iid for iid, m in kept.items() if m["status"] == "paid" and not m["post_payment_credit_notes_amount"])
    still_open = sorted(iid for iid, m in kept.items() if m["status"] == "open")
    assert len(paid) >= 1 and len(still_open) >= 3, checked["statuses"]

    # The race: another computer made its own mirror of four invoices a moment later (one still a draft); B is that
    # computer for one of them and is linked to its own.
    sdk = stripe.StripeClient(sandbox.stripe_key or "", base_addresses={"api": sandbox.stripe_url})
    sandbox.stripe.emulator.clock = lambda: time.time() + 30  # a moment later (never the same second: one order)
    wanted = {paid[0]: "paid", still_open[0]: "open", still_open[1]: "draft", still_open[2]: "open"}
    twins = {iid: _twin(sdk, kept[iid], state) for iid, state in wanted.items()}
    context(b)
    RecordLink.update(stripe_id=twins[still_open[2]]).where(
        (RecordLink.stream == STREAM) & (RecordLink.source_id == still_open[2])
    ).execute()

    repaired = sync_once(b, stream=STREAM)
    assert repaired.outcome == "ok" and repaired.counts["failed"] == 0, (repaired.counts, repaired.message)
    assert OTHER_INSTALLATION_MESSAGE in repaired.message, "the person is told another computer syncs"
    dump = admin(sandbox.stripe_url, "dump")
    closed = {iid: _closed(dump, twins[iid]) for iid in wanted}
    assert closed[paid[0]] == ("paid", kept[paid[0]]["total"], kept[paid[0]]["id"]), "credited outside Stripe"
    for iid in still_open[:3]:
        assert closed[iid] == ("void", 0, kept[iid]["id"]), iid
    assert _links(b) == {iid: m["id"] for iid, m in kept.items()}, "B's link moved to the mirror kept"
    assert sync_once(a, stream=STREAM).counts["failed"] == 0
    assert _links(a) == _links(b)
    check_exact(sandbox)  # the twins are marked duplicates: each invoice has one mirror, exact
    assert admin(sandbox.stripe_url, "emails")["count"] == 0
    assert admin(sandbox.stripe_url, "ledger")["balance_transactions"] == []

    # Lines edited in Cliniko: A voids the mirror and makes another. Neither installation takes that for a race.
    admin(
        sandbox.cliniko_url,
        "edit_invoices",
        ids=[still_open[3]],
        lines=[{"name": "Extended consultation", "unit_price": "81.818"}],
    )
    assert sync_once(a, stream=STREAM).counts["updated"] == 1
    for env in (b, a, b):
        again = sync_once(env, stream=STREAM)
        assert again.outcome == "ok" and OTHER_INSTALLATION_MESSAGE not in again.message, again.message
    check_exact(sandbox, replaced={still_open[3]})
    marked = [i["id"] for i in admin(sandbox.stripe_url, "dump")["invoices"] if i["metadata"].get(DUPLICATE_OF_KEY)]
    assert sorted(marked) == sorted(twins.values()), "only the race's twins are marked"


def test_a_twin_whose_retiring_is_cut_short_is_finished_on_the_next_run(make_sandbox, env_for, monkeypatch) -> None:
    """Stripe refuses the second write to the twin (after its retries): the twin is marked or untouched, never
    closed and unmarked (which looks like a mirror replaced on purpose, and was never looked at again); the next run
    finishes it."""
    sandbox = make_sandbox(patients=20, invoices=40, invoice_customers=10, seed=9)
    env = env_for(sandbox, **MIRROR_ONLY)
    ctx = context(env)
    assert all(r.outcome == "ok" for r in run_sync(ctx.paths, ctx.settings, ctx.secrets))
    kept = {iid: found[0] for iid, found in mirrors(admin(sandbox.stripe_url, "dump")).items()}
    iid = sorted(i for i, m in kept.items() if m["status"] == "open")[0]
    sdk = stripe.StripeClient(sandbox.stripe_key or "", base_addresses={"api": sandbox.stripe_url})
    sandbox.stripe.emulator.clock = lambda: time.time() + 30
    twin = _twin(sdk, kept[iid], "open")
    writes: list[str] = []

    def refuse_the_second(self, op, stripe_object, stripe_id, params, idempotency_key, _write=StripeGateway.write):
        if stripe_id == twin:
            writes.append(op)
            if len(writes) == 2:
                raise StripeFailure("transient", "Stripe asked ClinicSync to slow down (HTTP 429)")
        return _write(self, op, stripe_object, stripe_id, params, idempotency_key)

    with monkeypatch.context() as patch:
        patch.setattr(StripeGateway, "write", refuse_the_second)
        cut_short = sync_once(env, stream=STREAM)
    assert cut_short.outcome == "ok" and len(writes) == 2, (cut_short.message, writes)
    finished = sync_once(env, stream=STREAM)
    assert finished.outcome == "ok", finished.message
    assert _closed(admin(sandbox.stripe_url, "dump"), twin) == ("void", 0, kept[iid]["id"])
    check_exact(sandbox)


def test_a_draft_another_computer_is_still_writing_is_not_finalized_but_linked_once_it_is_done(
    make_sandbox, env_for
) -> None:
    """The soak, seed 808: installation B had made the Stripe invoice (a draft) and not yet added its line when A
    found it by its cross-reference, linked it and finalized it empty; B's line was then refused and the mirror
    stayed at $0. A draft found naming the invoice is left to its maker and linked once finalized."""
    sandbox = make_sandbox(patients=20, invoices=40, invoice_customers=10, seed=9)
    b = env_for(sandbox, "b", **MIRROR_ONLY)
    ctx = context(b)
    assert all(r.outcome == "ok" for r in run_sync(ctx.paths, ctx.settings, ctx.secrets))
    made = {iid: found[0] for iid, found in mirrors(admin(sandbox.stripe_url, "dump")).items()}
    iid = sorted(i for i, m in made.items() if m["status"] == "paid" and not m["post_payment_credit_notes_amount"])[0]
    sdk = stripe.StripeClient(sandbox.stripe_key or "", base_addresses={"api": sandbox.stripe_url})
    # As B's mirror of one invoice was a moment after its create: the Stripe invoice made, its line not yet added
    # (B's finished one no longer names the invoice, so the draft is the only one that does).
    sdk.v1.invoices.update(made[iid]["id"], params={"metadata": {"cliniko_invoice_id": ""}})
    draft = sdk.v1.invoices.create(
        params={
            "customer": made[iid]["customer"],
            "currency": made[iid]["currency"],
            "collection_method": "send_invoice",
            "days_until_due": 30,
            "auto_advance": False,
            "metadata": {"cliniko_invoice_id": iid},
        }
    ).id

    a = env_for(sandbox, "a", **MIRROR_ONLY)
    ctx = context(a)
    first = run_sync(ctx.paths, ctx.settings, ctx.secrets)
    assert first[-1].stream == STREAM and first[-1].counts["failed"] == 0, first[-1].counts
    invoice = sdk.v1.invoices.retrieve(draft).to_dict()
    assert (invoice["status"], invoice["total"]) == ("draft", 0), "A left B's draft alone"
    assert iid not in _links(a)

    # B finishes it: its line, finalized, paid outside Stripe; A then links it and writes nothing else to it.
    line = {"amount": made[iid]["total"], "currency": made[iid]["currency"], "description": "Consultation"}
    sdk.v1.invoice_items.create(params={"customer": made[iid]["customer"], "invoice": draft, **line})
    sdk.v1.invoices.finalize_invoice(draft, params={"auto_advance": False})
    sdk.v1.invoices.pay(draft, params={"paid_out_of_band": True})
    later = sync_once(a, stream=STREAM)
    assert later.counts["linked"] == 1 and later.counts["failed"] == 0, later.counts
    assert _links(a)[iid] == draft
    invoice = sdk.v1.invoices.retrieve(draft).to_dict()
    assert (invoice["status"], invoice["total"]) == ("paid", made[iid]["total"])
