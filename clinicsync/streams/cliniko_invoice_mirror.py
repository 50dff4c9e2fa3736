"""`cliniko.invoice_mirror` → Stripe invoices that mirror Cliniko invoices, for the books (issue 11; off unless the
setting `cliniko.invoices.mirror` is on).

One Stripe invoice per Cliniko invoice with a positive total, for its patient's customer (the patients stream's
link), with its lines (streams/invoice_lines.py: a product line takes the products stream's price when the amounts
agree; the total is Cliniko's to the cent). Stripe must never write to the patient: `send_invoice` with
`auto_advance=false`, never sent; a credit note with `email_type=none`. The Stripe invoice follows Cliniko's
status: finalized (open); paid in Cliniko → paid out of band; closed unpaid (or reversed before payment, which
closes it) → void; reversed after payment → a credit note for the whole amount, out of band (never a refund, never
a customer balance credit). $0 invoices and reversals (negative) are never mirrored; a reversal is reflected on
its original's mirror. An invoice deleted, archived or brought to $0 after it was mirrored closes its mirror (void,
or credited if paid). Invoice notes and patient extra information never leave the clinic.

What the mirror holds is kept as role links: `mirror_state` (draft, open, paid, void, credited) on the invoice,
so a status change plans only the transitions still due; a replay of a finished action is a no-op (outbox).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from clinicsync import money
from clinicsync.mapping import invoice_status
from clinicsync.mapping.apply import MappedRecord
from clinicsync.reconcile.compare import CompareRequest, Comparison, Drift, StripeScope, compare_fields, same
from clinicsync.reconcile.findings import FixKind, Severity
from clinicsync.streams import cliniko_common
from clinicsync.streams.base import (
    DUPLICATE_OF_KEY,
    FindRequest,
    NotYet,
    PlanRequest,
    Record,
    RoleLinkInfo,
    RoleRecord,
    Stream,
    StreamSettings,
    WriteStep,
    oldest_naming,
)
from clinicsync.streams.invoice_lines import LineError, MirrorLine, from_text, mirror_lines, price_fits, to_text

NAME = "cliniko.invoice_mirror"
MIRROR_SETTING = "cliniko.invoices.mirror"
DAYS_UNTIL_DUE = 30  # send_invoice needs one; the invoice is never sent, so it only shows in the Dashboard
STATE_ROLE = "mirror_state"
LINES_ROLE = "mirror_lines"  # what the Stripe invoice's lines are (a hash), to notice lines changed in Cliniko
TOTAL_ROLE = "mirror_total"  # observed only: the Stripe invoice's total, what a closing mirror's credit note is for
CREDIT_ROLE = "credit_note"
ITEM_ROLE = "invoice_item"
ITEM_KEY = "cliniko_invoice_item_id"
CHUNK = 100  # invoices whose items (and reversals) are read with one listing
# What Stripe should hold for each state, in words for plans and history.
STATE_WORDS = {
    "open": "open (finalized, never sent)",
    "paid": "paid outside Stripe",
    "void": "void",
    "credited": "paid, then credited in full outside Stripe",
}
# What ClinicSync makes in Stripe when mirroring is turned on, for the approval plan of a live account.
PLAN_NOTE = (
    "Each Cliniko invoice with a positive total becomes a Stripe invoice for the patient's customer, with its lines, "
    "total, number, issue date and status (never its notes): finalized and never sent, then marked paid outside "
    "Stripe, voided, or credited outside Stripe as Cliniko says. Stripe sends no email for these, but check the "
    "account's customer email settings in the Stripe Dashboard (Settings → Customer emails) before approving: "
    "ClinicSync cannot read them."
)


# --- reading ---------------------------------------------------------------------------------------------
def _link_id(value: Any) -> str | None:
    from clinicsync.sources.cliniko import link_id

    return link_id(value)


def _mirrored(invoice: Record) -> bool:
    """An invoice that is not itself a reversal. One with a total of $0 or less is read too (it counts as archived,
    so it is never created, but a mirror made before it fell to $0 is closed)."""
    return not _link_id(invoice.get("original_invoice"))


def _not_positive(record: Record) -> bool:
    try:
        return money.parse_amount(record.get("total_amount") or 0) <= 0
    except money.MoneyError:
        return False  # its record says what is wrong with it


def _listed(client: Any, path: str, query: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
    for page in client.iter_pages(path, query):
        yield from page.records


def _with_items(client: Any, invoices: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The invoices with their live items and their reversals: one listing of each per CHUNK invoices, never one
    request per invoice."""
    if not invoices:
        return
    ids = ",".join(str(invoice["id"]) for invoice in invoices)
    items: dict[str, list[dict[str, Any]]] = {}
    for item in _listed(client, "/invoice_items", [("q[]", f"invoice_id:={ids}")]):
        items.setdefault(str(_link_id(item.get("invoice")) or item.get("invoice_id")), []).append(item)
    reversals: dict[str, list[dict[str, Any]]] = {}
    # Only a paid invoice's reversal matters (reversing an unpaid one closes it: its status says it all).
    paid = ",".join(str(invoice["id"]) for invoice in invoices if invoice_status.is_paid(invoice.get("status")))
    if paid:
        for reversal in _listed(client, "/invoices", [("q[]", f"original_invoice_id:={paid}")]):
            original = _link_id(reversal.get("original_invoice"))
            if original:
                reversals.setdefault(original, []).append(reversal)
    for invoice in invoices:
        sid = str(invoice["id"])
        yield {
            **invoice,
            "items": items.get(sid, []),
            "reversals": [
                {"id": str(r["id"]), "status": r.get("status"), "created_at": r.get("created_at")}
                for r in reversals.get(sid, [])
            ],
        }


def _chunks(records: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _read_changed(client: Any, cursor: datetime | None) -> Iterator[Record]:
    """Invoices changed since the cursor (and the archived pass), invoices whose items changed (the items' own
    incremental listing, deleted lines included), and the originals of new reversals."""
    from clinicsync.sources.cliniko import format_cursor

    also: dict[str, None] = {}
    if cursor is not None:
        query = [("q[]", f"updated_at:>={format_cursor(cursor)}"), ("q[]", "deleted_at:*"), ("sort", "updated_at:asc")]
        for item in _listed(client, "/invoice_items", query):
            invoice_id = _link_id(item.get("invoice"))
            if invoice_id:
                also[invoice_id] = None
    yielded: set[str] = set()

    def wanted(invoices: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for invoice in invoices:
            original = _link_id(invoice.get("original_invoice"))
            if original and original not in yielded:
                also[original] = None  # a reversal shows on its original's mirror
            sid = str(invoice.get("id"))
            if _mirrored(invoice) and sid not in yielded:
                yielded.add(sid)
                yield invoice

    listing = itertools.chain(  # lazily: each hundred is handled as it is read, not after every page
        _chunks(wanted(client.iter_live_and_archived("/invoices", cursor))),
        # Default lists hide deleted invoices: a pass of their own, so a deleted invoice's mirror is closed.
        _chunks(wanted(client.iter_changed("/invoices", cursor, deleted=True))),
    )
    for chunk in listing:
        yield from _with_items(client, chunk)
    while rest := [sid for sid in also if sid not in yielded]:
        also.clear()
        for start in range(0, len(rest), CHUNK):
            ids = ",".join(rest[start : start + CHUNK])
            found = client.iter_live_and_archived("/invoices", None, filters=[("q[]", f"id:={ids}")])
            for chunk in _chunks(wanted(found)):
                yield from _with_items(client, chunk)
        yielded.update(rest)


def _read_one(client: Any, source_id: str) -> Record | None:
    invoice = client.get_record("/invoices", source_id, "invoice")
    if invoice is None or not _mirrored(invoice):
        return None
    return next(_with_items(client, [invoice]))


def _changed_at(record: Record) -> str | None:
    times = [record.get("updated_at"), *(item.get("updated_at") for item in record.get("items") or [])]
    return max((t for t in times if isinstance(t, str)), default=None)


def _archived(record: Record) -> str | None:
    """Deleted, archived, or a total of $0 or less: never created, and a mirror made before is closed."""
    gone = cliniko_common.archived_value(record, ("deleted_at", "archived_at"))
    if gone is None and _not_positive(record):
        return f"a total of {record.get('total_amount') or 0}"
    return gone


# --- what Stripe should hold -------------------------------------------------------------------------------
def wanted_state(record: Record) -> str:
    """open, paid, void or credited, from Cliniko's status and the invoice's reversals. An invoice deleted,
    archived or brought to $0 closes its mirror: credited if it was paid, else void (never a refund, no email)."""
    status = record.get("status")
    if _archived(record) is not None:
        paid = invoice_status.is_paid(status) and not _not_positive(record)
        return "credited" if paid else "void"
    if status == invoice_status.CLOSED:
        return "void"  # closed unpaid, or reversed before payment (which closes the original)
    if invoice_status.is_paid(status):
        return "credited" if record.get("reversals") else "paid"
    return "open"


def _enrich(mapped: MappedRecord, record: Record, settings: StreamSettings) -> None:
    """The mirror's lines, total, currency, patient and wanted state as `mirror.*` payload entries (so a change to
    any of them is a change to the record). A closing invoice (deleted, archived, $0) needs only its state: its
    lines may be gone and its mirror is never made again."""
    if (closing := _archived(record)) is not None:
        mapped.payload["mirror.currency"] = settings.currency
        mapped.payload["mirror.state"] = wanted_state(record)
        mapped.payload["mirror.closing"] = closing
        return
    product_of = {
        str(item.get("id")): product
        for item in record.get("items") or []
        if (product := _link_id(item.get("product")) or item.get("product_id"))
    }
    try:
        method = int(record.get("calculation_method") or 3)
        lines = mirror_lines(
            record.get("items") or [],
            calculation_method=method,
            total_amount=record.get("total_amount"),
            currency=settings.currency,
            product_of=product_of,
        )
        total = money.to_minor_units(record.get("total_amount"), settings.currency)
    except (LineError, money.MoneyError, ValueError) as exc:
        mapped.error = f"invoice lines: {exc}"
        return
    patient = _link_id(record.get("patient")) or record.get("patient_id")
    if not patient:
        mapped.error = "the invoice names no patient, so it has no Stripe customer to belong to"
        return
    mapped.payload["mirror.patient"] = str(patient)
    mapped.payload["mirror.currency"] = settings.currency
    mapped.payload["mirror.total"] = total
    mapped.payload["mirror.lines"] = to_text(lines)
    mapped.payload["mirror.state"] = wanted_state(record)


# --- the plan ----------------------------------------------------------------------------------------------
def _transitions(current: str, wanted: str) -> list[str]:
    """The actions that take a mirror from `current` to `wanted`; those Stripe cannot do (a paid or void invoice
    back to open) are left out."""
    actions: list[str] = []
    if current == "draft":
        actions.append("finalize")
        current = "open"
    if current == "open":
        actions += {"paid": ["pay"], "credited": ["pay", "credit"], "void": ["void"]}.get(wanted, [])
    elif current == "paid" and wanted == "credited":
        actions.append("credit")
    return actions


def _state_of(request: PlanRequest, role_name: str = STATE_ROLE) -> str | None:
    known = request.observed if request.observed is not None else request.roles
    return next(
        (role.fingerprint for role in known if role.role == role_name and role.stripe_id == request.stripe_id),
        None,
    )


def _lines_fingerprint(mirror: Mapping[str, Any]) -> str:
    text = f"{mirror['currency']}:{mirror['total']}:{mirror['lines']}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def _item_params(line: MirrorLine, customer: str, currency: str, invoice_id: str, links: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "customer": customer,
        "description": line.description,
        "metadata": {"cliniko_invoice_id": invoice_id, ITEM_KEY: line.item_id},
    }
    price = _product_price(line, currency, links)
    if price is not None:
        params.update(pricing={"price": price}, quantity=line.quantity)
    else:
        params.update(amount=line.amount, currency=currency)
    return params


def _product_price(line: MirrorLine, currency: str, links: Any) -> str | None:
    """The products stream's current price of the line's product, when it times the quantity is the line."""
    if line.product_id is None or links is None:
        return None
    price = links.stripe_id("cliniko.products", line.product_id, "price")
    held = links.fingerprint("cliniko.products", line.product_id, "price")
    if not price or not held:
        return None
    unit_amount, price_currency, *_ = held.split(":")
    return price if price_currency == currency and price_fits(line, int(unit_amount)) else None


def _action_step(action: str, total: int, invoice_id: str, *, ref: int | None, stripe_id: str | None) -> WriteStep:
    if action == "credit":
        params: dict[str, Any] = {
            "amount": total,
            "out_of_band_amount": total,  # the clinic refunded it, not Stripe: no refund, no balance credit
            "email_type": "none",
            "metadata": {"cliniko_invoice_id": invoice_id},
        }
        if ref is None:
            params["invoice"] = stripe_id
        records = (
            RoleRecord(CREDIT_ROLE, current=True),
            RoleRecord(STATE_ROLE, field="invoice", fingerprint="credited", current=True),
        )
        refs = {"invoice": ref} if ref is not None else {}
        note = "credited in full outside Stripe (reversed in Cliniko after payment; no email, no refund)"
        return WriteStep(CREDIT_ROLE, "create", "credit_note", params, refs=refs, records=records, note=note)
    params = {"auto_advance": False} if action == "finalize" else {"paid_out_of_band": True} if action == "pay" else {}
    fingerprint = {"finalize": "open", "pay": "paid", "void": "void"}[action]
    notes = {"finalize": "finalized, never sent", "pay": "marked paid outside Stripe", "void": "voided"}
    return WriteStep(
        "invoice",
        action,
        "invoice",
        params,
        stripe_id=stripe_id,
        refs={"": ref} if ref is not None else {},
        records=(RoleRecord(STATE_ROLE, fingerprint=fingerprint, current=True),),
        note=notes[action],
    )


def plan(request: PlanRequest) -> list[WriteStep]:
    params = dict(request.params)
    mirror = params.pop("mirror")
    invoice_id = request.mapped.source_id
    if request.op == "link" and _state_of(request) == "draft":
        # Another installation's mirror, still being written: its lines may not all be there, and finalizing it now
        # would freeze it so. Its maker finishes it (or a race's repair retires it); the record is read again.
        raise NotYet("its Stripe invoice is a draft another computer is still writing; it is linked once finalized")
    if mirror.get("closing") and request.op != "create":
        return _close(request, params, invoice_id, _state_of(request) or "open", str(mirror["state"]))
    total, currency, wanted = int(mirror["total"]), str(mirror["currency"]), str(mirror["state"])
    if request.op == "create":
        return _create(request, params, mirror, invoice_id, total, currency, wanted)
    current = _state_of(request) or "open"
    held_lines = _state_of(request, LINES_ROLE)
    if held_lines not in (None, _lines_fingerprint(mirror)) and current in ("draft", "open") and wanted != "void":
        # Lines edited in Cliniko after the mirror was finalized: Stripe cannot change a finalized invoice's lines,
        # so the mirror is voided and replaced (its successor takes the record's link).
        retire = [
            _action_step(action, total, invoice_id, ref=None, stripe_id=request.stripe_id)
            for action in _transitions(current, "void")
        ]
        retire[-1] = replace(retire[-1], note="voided: its lines changed in Cliniko, replaced by a new invoice")
        return retire + _create(request, params, mirror, invoice_id, total, currency, wanted, base=len(retire))
    if held_lines not in (None, _lines_fingerprint(mirror)) and current == "void" and wanted != "void":
        # A replacement whose old mirror was voided but whose new one was never made (Stripe refused the create,
        # e.g. the customer was deleted): the record still wants an invoice, so it gets a fresh one.
        return _create(request, params, mirror, invoice_id, total, currency, wanted)
    steps = [
        _action_step(action, total, invoice_id, ref=None, stripe_id=request.stripe_id)
        for action in _transitions(current, wanted)
    ]
    note = ""
    if not steps and current != wanted and current != "draft":
        note = f"the Stripe invoice is {current}, which Stripe cannot make {STATE_WORDS.get(wanted, wanted)}"
    update = {"metadata": params.get("metadata") or {}}
    steps.append(WriteStep("invoice", request.op, "invoice", update, stripe_id=request.stripe_id, note=note))
    return steps


def _close(request: PlanRequest, params: dict[str, Any], invoice_id: str, current: str, wanted: str) -> list[WriteStep]:
    """The mirror of an invoice deleted, archived or brought to $0 in Cliniko: voided, or (paid) credited in full
    outside Stripe for the Stripe invoice's own total; never replaced, never refunded, never emailed."""
    if current == "paid":
        wanted = "credited"  # a paid invoice cannot be voided
    held_total = _state_of(request, TOTAL_ROLE)
    total = int(held_total) if held_total and held_total.isdigit() else 0
    actions = _transitions(current, wanted)
    note = ""
    if "credit" in actions and total <= 0:
        actions = [a for a in actions if a != "credit"]
        note = "the Stripe invoice's total could not be read, so it is not credited yet"
    steps = [_action_step(a, total, invoice_id, ref=None, stripe_id=request.stripe_id) for a in actions]
    if not steps and current not in (wanted, "draft", "void", "credited") and not note:
        note = f"the Stripe invoice is {current}, which Stripe cannot make {STATE_WORDS.get(wanted, wanted)}"
    update = {"metadata": params.get("metadata") or {}}
    steps.append(WriteStep("invoice", request.op, "invoice", update, stripe_id=request.stripe_id, note=note))
    return steps


def _create(
    request: PlanRequest,
    params: dict[str, Any],
    mirror: Mapping[str, Any],
    invoice_id: str,
    total: int,
    currency: str,
    wanted: str,
    base: int = 0,  # steps before these in the plan (their refs count from the plan's first step)
) -> list[WriteStep]:
    patient = str(mirror["patient"])
    customer = request.links.stripe_id("cliniko.patients", patient) if request.links is not None else None
    if not customer:
        raise NotYet(f"waiting for Cliniko patient {patient} to have a Stripe customer (the patients sync makes it)")
    invoice_params = {
        **params,
        "customer": customer,
        "currency": currency,
        "collection_method": "send_invoice",
        "days_until_due": DAYS_UNTIL_DUE,
        "auto_advance": False,
    }
    lines = from_text(str(mirror["lines"]))
    steps = [
        WriteStep(
            "invoice",
            "create",
            "invoice",
            invoice_params,
            records=(
                RoleRecord(STATE_ROLE, fingerprint="draft", current=True),
                RoleRecord(LINES_ROLE, fingerprint=_lines_fingerprint(mirror), current=True),
            ),
            note=f"Stripe invoice of {money.display(total, currency)} with {len(lines)} line(s), "
            f"{STATE_WORDS.get(wanted, wanted)}",
        )
    ]
    steps += [
        WriteStep(
            ITEM_ROLE,
            "create",
            "invoiceitem",
            _item_params(line, customer, currency, invoice_id, request.links),
            refs={"invoice": base},
        )
        for line in lines
    ]
    steps += [
        _action_step(action, total, invoice_id, ref=base, stripe_id=None) for action in _transitions("draft", wanted)
    ]
    return steps


def observe(gateway: Any, request: PlanRequest) -> tuple[RoleLinkInfo, ...] | None:
    """A Stripe invoice linked without a known state (found by its cross-reference), or one still to be closed
    (a credit note is for its own total): its state and total, read once."""
    held = _state_of(request)
    closing = bool((request.params.get("mirror") or {}).get("closing")) and held not in ("void", "credited")
    if held is not None and not closing:
        return None
    invoice = gateway.retrieve("invoice", request.stripe_id)
    if invoice is None:
        return None
    status = str(invoice.get("status"))
    credited = invoice.get("post_payment_credit_notes_amount") or 0
    if status == "paid" and credited and credited >= (invoice.get("total") or 0):
        status = "credited"
    return (
        RoleLinkInfo(STATE_ROLE, str(request.stripe_id), status, current=True, active=True),
        RoleLinkInfo(TOTAL_ROLE, str(request.stripe_id), str(invoice.get("total") or 0), current=True, active=True),
    )


def find_created(gateway: Any, request: FindRequest) -> dict[str, Any] | None:
    """A lost create, found by listing (never Search, which lags): the customer's invoices naming the Cliniko
    invoice; the invoice's items naming the Cliniko line; the invoice's credit notes naming the Cliniko invoice."""
    params = request.params
    if request.stripe_object == "invoice":
        # A void one is never a lost create's (voiding comes later in a plan): it is a mirror replaced since.
        found = gateway.iter_objects("invoice", request.created_after, {"customer": params["customer"]})
        return oldest_naming([invoice for invoice in found if invoice.get("status") != "void"], request)
    if request.stripe_object == "invoiceitem":
        line = (params.get("metadata") or {}).get(ITEM_KEY)
        items = [
            item
            for item in gateway.iter_objects("invoiceitem", None, {"invoice": params["invoice"]})
            if (item.get("metadata") or {}).get(ITEM_KEY) == line
        ]
        return oldest_naming(items, request)
    if request.stripe_object == "credit_note":
        return oldest_naming(list(gateway.iter_objects("credit_note", None, {"invoice": params["invoice"]})), request)
    return None


# --- reconciliation (issue 12): the mirror's total and status against what Cliniko says ------------------------
def stripe_state(invoice: Mapping[str, Any]) -> str:
    """A Stripe invoice's state in the mirror's words: its status, or "credited" when paid and then credited in
    full (as `observe` reads it)."""
    status = str(invoice.get("status") or "")
    credited = invoice.get("post_payment_credit_notes_amount") or 0
    if status == "paid" and credited and credited >= (invoice.get("total") or 0):
        return "credited"
    return status


def reconcile_compare(request: CompareRequest) -> list[Drift]:
    """The mapped fields, then the mirror's own: its total (Cliniko's to the cent) and its state (open, paid,
    void, credited). A state Stripe can still be taken to is re-sent; one it cannot leave (a paid or void invoice
    back to open) can only be accepted, or corrected in Cliniko."""
    drifts = compare_fields(request)
    mirror = request.mapped.payload
    invoice = request.obj
    total = mirror.get("mirror.total")
    if total is not None and not same(total, invoice.get("total")):
        drifts.append(Drift("total", total, invoice.get("total"), severity=Severity.HIGH))
    wanted, held = mirror.get("mirror.state"), stripe_state(invoice)
    if wanted is not None and wanted != held and not (wanted == "void" and held == "credited"):
        fix = FixKind.REPUSH if _transitions(held, str(wanted)) else FixKind.MARK_INTENDED
        drifts.append(Drift("status", wanted, held, severity=Severity.HIGH, fix=fix))
    return drifts


def reconcile_listing(gateway: Any, scope: StripeScope) -> Iterator[dict[str, Any]]:
    """The Stripe invoices made from the sync's window on (every one when the scope is every invoice); a linked
    mirror made before it is read by id (Comparison.fetch)."""
    return gateway.iter_objects("invoice", scope.since)


COMPARISON = Comparison(
    compare=reconcile_compare,
    archive_fix=FixKind.ARCHIVE,
    listing=reconcile_listing,
    fetch=lambda gateway, stripe_id: gateway.retrieve("invoice", stripe_id),
    # A mirror voided to be replaced (its lines changed in Cliniko) still names the invoice, and so does a race's
    # twin closed by the twin repair (void, or paid and credited in full, marked as a duplicate): both retired.
    retired=lambda invoice: invoice.get("status") == "void" or DUPLICATE_OF_KEY in (invoice.get("metadata") or {}),
)


# --- two installations racing: one mirror kept, the other closed the mirror's way -----------------------------
def choose_twins(gateway: Any, ids: list[str]) -> list[str]:
    """Of the Stripe invoices naming one Cliniko invoice (oldest first), the race's twins, the one kept first: the
    oldest finalized one not yet retired (a draft may still be getting its lines); void ones beside a finalized one
    are mirrors replaced on purpose, not twins. Drafts only: nothing yet (each is finalized by its own plan)."""
    found = {stripe_id: gateway.retrieve("invoice", stripe_id) for stripe_id in ids}
    gone = [stripe_id for stripe_id, invoice in found.items() if invoice is None]
    retired = [i for i, invoice in found.items() if invoice and (invoice.get("metadata") or {}).get(DUPLICATE_OF_KEY)]
    others = [i for i, invoice in found.items() if invoice and i not in retired]
    status = {stripe_id: found[stripe_id]["status"] for stripe_id in others}  # type: ignore[index]
    finalized = [i for i in others if status[i] in ("open", "paid")]
    if finalized:
        return [*finalized, *(i for i in others if status[i] == "draft"), *retired, *gone]
    # None open or paid: two installations' twins voided with their invoice are still twins (one is marked, so the
    # books and reconciliation count it once); drafts are still being written by their maker: nothing yet. (A
    # mirror replaced on purpose whose replacement was voided too is taken for twins as well: harmless to Stripe's
    # totals, but it says "another computer" — the soak needs the former, see issue 8's note.)
    voided = [i for i in others if status[i] == "void"]
    if voided and not any(status[i] == "draft" for i in others):
        return [*voided, *retired, *gone]
    return []


def retire_twin(gateway: Any, twin_id: str, survivor_id: str) -> str:
    """A twin is marked as the survivor's duplicate, then closed as the mirror closes an invoice (void, or credited
    in full outside Stripe when paid: never refunded, never emailed), so the books count the invoice once. Marked
    first: a twin closed but not marked (the mark refused, the run killed) would look like a mirror replaced on
    purpose and never be looked at again; a marked one is finished on the next run. Each step is keyed by the twin,
    so two installations retiring it do it once."""
    invoice = gateway.retrieve("invoice", twin_id)
    if invoice is None:
        return f"already gone (a duplicate of {survivor_id})"
    key = f"twin:{twin_id}"
    gateway.write("update", "invoice", twin_id, {"metadata": {DUPLICATE_OF_KEY: survivor_id}}, f"{key}:mark")
    status, done = invoice.get("status"), "left void"
    if status == "draft":  # finalized to be voided, not deleted: deleting a draft would leave its lines pending
        gateway.write("finalize", "invoice", twin_id, {"auto_advance": False}, f"{key}:finalize")
        status = "open"
    if status == "open":
        gateway.write("void", "invoice", twin_id, {}, f"{key}:void")
        done = "voided"
    elif status == "paid":
        remaining = int(invoice.get("total") or 0) - int(invoice.get("post_payment_credit_notes_amount") or 0)
        if remaining > 0:
            params = {"invoice": twin_id, "amount": remaining, "out_of_band_amount": remaining, "email_type": "none"}
            gateway.write("create", "credit_note", None, {**params, "metadata": {DUPLICATE_OF_KEY: survivor_id}}, key)
        done = "credited in full outside Stripe"
    return f"marked as a duplicate of {survivor_id} and {done}"


CLINIKO_INVOICE_MIRROR = Stream(
    name=NAME,
    source_system="cliniko",
    primary_role="invoice",
    stripe_object="invoice",
    read_changed=_read_changed,
    read_one=_read_one,
    archived_value=_archived,
    changed_at=_changed_at,
    plan=plan,
    find_created=find_created,
    idle_poll={"cliniko": 6, "stripe": 1},
    retire_twin=retire_twin,
    choose_twins=choose_twins,
    observe=observe,
    depends_on=("cliniko.patients", "cliniko.products"),
    compare=COMPARISON,
    enrich=_enrich,
    source_settings=cliniko_common.settings,
    time_zone=cliniko_common.time_zone,
    country=cliniko_common.country,
    enabled_by=MIRROR_SETTING,
    plan_note=PLAN_NOTE,
)
