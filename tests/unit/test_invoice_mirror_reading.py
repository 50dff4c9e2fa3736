"""How the invoice mirror reads Cliniko: items and reversals by one listing per hundred invoices (never a request per
invoice); an invoice whose items changed is a changed record though the invoice itself did not; a new reversal
brings its original; reversals are never records; $0, archived and deleted invoices are records that count as
archived (never created; a mirror made before is closed). And what each Cliniko state asks of Stripe."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from clinicsync.sources.cliniko import PageOf
from clinicsync.streams import cliniko_invoice_mirror as mirror

BASE = "https://api.au1.cliniko.com/v1"


def link(path: str) -> dict[str, Any]:
    return {"links": {"self": f"{BASE}/{path}"}}


def invoice(iid: int, total: str = "95.0", status: int = 10, original: int | None = None) -> dict[str, Any]:
    record = {"id": str(iid), "total_amount": total, "status": status, "updated_at": "2026-05-01T00:00:00Z"}
    if original is not None:
        record["original_invoice"] = link(f"invoices/{original}")
    return record


class FakeCliniko:
    """Listings by the filters the mirror sends; every request is counted."""

    def __init__(
        self, invoices: list[dict[str, Any]], changed: list[str], changed_items: list[str], deleted: list[str] = ()
    ) -> None:
        self.invoices = {i["id"]: i for i in invoices}
        self.changed = changed  # ids the invoice listing returns
        self.deleted = list(deleted)  # ids only the deleted pass returns
        self.changed_items = changed_items  # invoice ids of the items changed since the cursor
        self.requests: list[str] = []

    def iter_changed(
        self, path: str, cursor: datetime | None, *, archived: bool = False, deleted: bool = False
    ) -> Iterator[dict[str, Any]]:
        self.requests.append(f"{path} changed archived={archived} deleted={deleted}")
        yield from (self.invoices[i] for i in (self.deleted if deleted else self.changed))

    def iter_live_and_archived(
        self, path: str, cursor: datetime | None, *, filters: list[tuple[str, str]] | None = None
    ) -> Iterator[dict[str, Any]]:
        if filters:  # the mirror's reads by id
            yield from (r for page in self.iter_pages(path, filters) for r in page.records)
            return
        self.requests.append(f"{path} changed, live and archived")
        yield from (self.invoices[i] for i in self.changed)

    def iter_pages(self, path: str, query: list[tuple[str, str]]) -> Iterator[PageOf]:
        filters = dict(q.split(":", 1) for name, q in query if name == "q[]" and ":=" in q)
        self.requests.append(f"{path} {sorted(filters)}")
        if path == "/invoice_items" and "invoice_id" in filters:
            ids = filters["invoice_id"].removeprefix("=").split(",")
            records = [{"id": f"{i}01", "invoice": link(f"invoices/{i}"), "name": "Consult"} for i in ids]
        elif path == "/invoice_items":
            records = [{"id": f"{i}02", "invoice": link(f"invoices/{i}")} for i in self.changed_items]
        elif "original_invoice_id" in filters:
            wanted = set(filters["original_invoice_id"].removeprefix("=").split(","))
            records = [
                i
                for i in self.invoices.values()
                if i.get("original_invoice", {}).get("links", {}).get("self", "/x").rsplit("/", 1)[1] in wanted
            ]
        else:  # by id
            ids = filters["id"].removeprefix("=").split(",")
            records = [self.invoices[i] for i in ids if i in self.invoices]
        yield PageOf(records=records, total_entries=len(records), url=path, next_url=None)


def test_items_and_reversals_are_read_once_per_hundred_invoices() -> None:
    invoices = [invoice(n) for n in range(1, 251)]
    client = FakeCliniko(invoices, [i["id"] for i in invoices], [])
    records = list(mirror._read_changed(client, None))
    assert len(records) == 250 and all(r["items"][0]["name"] == "Consult" for r in records)
    item_listings = [r for r in client.requests if r.startswith("/invoice_items")]
    assert len(item_listings) == 3, client.requests  # 100 + 100 + 50


def test_changed_items_and_new_reversals_bring_their_invoices_and_reversals_are_never_records() -> None:
    invoices = [
        invoice(1),
        invoice(2, status=20),  # its items changed; the invoice itself did not
        invoice(3, status=20),  # paid, reversed after payment: its reversal is new
        invoice(4, total="-95.0", status=40, original=3),
        invoice(5, total="0.0", status=20),
    ]
    client = FakeCliniko(invoices, ["1", "4", "5"], ["2"])
    records = {r["id"]: r for r in mirror._read_changed(client, datetime(2026, 5, 1, tzinfo=UTC))}
    assert set(records) == {"1", "2", "3", "5"}
    assert records["3"]["reversals"][0]["id"] == "4"
    assert [mirror.wanted_state(records[i]) for i in ("1", "2", "3")] == ["open", "paid", "credited"]
    # $0: archived, so never created (the engine skips it), and a mirror made before it fell to $0 is voided.
    assert mirror._archived(records["5"]) == "a total of 0.0" and mirror.wanted_state(records["5"]) == "void"
    assert all(mirror._archived(records[i]) is None for i in ("1", "2", "3"))


def test_deleted_invoices_have_a_pass_of_their_own_and_close_their_mirror() -> None:
    gone = {**invoice(6, status=10), "deleted_at": "2026-05-02T00:00:00Z"}
    gone_paid = {**invoice(7, status=20), "deleted_at": "2026-05-02T00:00:00Z"}
    archived_paid = {**invoice(8, status=20), "archived_at": "2026-05-02T00:00:00Z"}
    client = FakeCliniko([gone, gone_paid, archived_paid], ["8"], [], deleted=["6", "7"])
    records = {r["id"]: r for r in mirror._read_changed(client, datetime(2026, 5, 1, tzinfo=UTC))}
    assert "/invoices changed archived=False deleted=True" in client.requests
    assert set(records) == {"6", "7", "8"}
    assert mirror._archived(records["6"]) == "deleted 2026-05-02T00:00:00Z"
    assert [mirror.wanted_state(records[i]) for i in ("6", "7", "8")] == ["void", "credited", "credited"]


def test_each_cliniko_state_asks_for_the_transitions_stripe_allows() -> None:
    assert mirror.wanted_state({"status": 30, "reversals": [{"id": "9"}]}) == "void"  # reversed before payment
    assert mirror._transitions("draft", "credited") == ["finalize", "pay", "credit"]
    assert mirror._transitions("open", "void") == ["void"]
    assert mirror._transitions("paid", "credited") == ["credit"]
    assert mirror._transitions("paid", "void") == []  # Stripe cannot void a paid invoice: left as it is
    assert mirror._transitions("void", "paid") == []


def _plan_request(held_state: str, held_lines: str) -> Any:
    from clinicsync.mapping.apply import MappedRecord
    from clinicsync.streams.base import PlanRequest, RoleLinkInfo

    class Links:
        def stripe_id(self, stream: str, source_id: str, role: str | None = None) -> str | None:
            return "cus_1" if stream == "cliniko.patients" else None

        def fingerprint(self, stream: str, source_id: str, role: str) -> str | None:
            return None

    lines = '[{"amount":9500,"description":"Consult","item_id":"101","product_id":null,"quantity":null}]'
    mirror_entry = {"patient": "7", "currency": "aud", "total": 9500, "lines": lines, "state": "open"}
    roles = (
        RoleLinkInfo(mirror.STATE_ROLE, "in_old", held_state, current=True, active=True),
        RoleLinkInfo(mirror.LINES_ROLE, "in_old", held_lines, current=True, active=True),
    )
    mapped = MappedRecord("1", {}, "Invoice 1", None, False)
    params = {"mirror": mirror_entry, "metadata": {"cliniko_invoice_id": "1"}}
    return PlanRequest("update", mapped, "in_old", params, "cliniko_invoice_id", roles=roles, links=Links())


def test_a_mirror_voided_for_new_lines_whose_replacement_was_refused_gets_a_fresh_invoice() -> None:
    # The void went through, the create was refused: the link still names the void invoice, with the old lines.
    steps = mirror.plan(_plan_request("void", "stale-lines-hash"))
    assert [(s.role, s.op) for s in steps] == [
        ("invoice", "create"),
        (mirror.ITEM_ROLE, "create"),
        ("invoice", "finalize"),
    ]
    assert steps[1].refs == {"invoice": 0} and steps[2].refs == {"": 0}
    # A void mirror whose lines are current (closed in Cliniko, say) is left as it is.
    request = _plan_request("void", "x")
    current = mirror._lines_fingerprint(request.params["mirror"])
    (update,) = mirror.plan(_plan_request("void", current))
    assert update.op == "update" and "cannot make" in update.note


def _closing_request(held_state: str, observed_total: str | None, *, looked: bool = True) -> Any:
    from clinicsync.mapping.apply import MappedRecord
    from clinicsync.streams.base import PlanRequest, RoleLinkInfo

    closing = {"currency": "aud", "state": "void", "closing": "deleted 2026-05-02T00:00:00Z"}
    roles = (RoleLinkInfo(mirror.STATE_ROLE, "in_old", held_state, current=True, active=True),)
    if observed_total is not None:
        roles += (RoleLinkInfo(mirror.TOTAL_ROLE, "in_old", observed_total, current=True, active=True),)
    mapped = MappedRecord("1", {}, "Invoice 1", None, True)
    params = {"mirror": closing, "metadata": {"cliniko_archived": closing["closing"]}}
    if not looked:  # as the engine asks observe: only what the link holds
        return PlanRequest("update", mapped, "in_old", params, "cliniko_invoice_id", roles=roles)
    return PlanRequest("update", mapped, "in_old", params, "cliniko_invoice_id", roles=(), observed=roles)


def test_a_deleted_archived_or_zero_invoice_voids_an_unpaid_mirror_and_credits_a_paid_one() -> None:
    void, update = mirror.plan(_closing_request("open", "9500"))
    assert (void.op, void.stripe_id, update.op) == ("void", "in_old", "update")
    # A paid mirror cannot be voided: credited in full, outside Stripe, for the Stripe invoice's own total.
    credit, update = mirror.plan(_closing_request("paid", "9500"))
    assert (credit.stripe_object, credit.params["invoice"]) == ("credit_note", "in_old")
    assert credit.params["amount"] == credit.params["out_of_band_amount"] == 9500
    assert credit.params["email_type"] == "none" and "refund" not in credit.params
    # Closed already: nothing but the metadata, and never a new invoice.
    for held in ("void", "credited"):
        (only,) = mirror.plan(_closing_request(held, None))
        assert only.op == "update" and only.note == ""


def test_a_closing_mirror_is_read_once_for_its_state_and_total() -> None:
    class Gateway:
        def retrieve(self, stripe_object: str, stripe_id: str) -> dict[str, Any]:
            return {"status": "paid", "total": 9500}

    observed = mirror.observe(Gateway(), _closing_request("paid", None, looked=False))
    assert observed is not None
    assert {(r.role, r.fingerprint) for r in observed} == {(mirror.STATE_ROLE, "paid"), (mirror.TOTAL_ROLE, "9500")}
    assert mirror.observe(Gateway(), _closing_request("void", None, looked=False)) is None


def test_lines_that_miss_the_total_fail_that_record_with_a_clear_message() -> None:
    from clinicsync.mapping.apply import MappedRecord
    from clinicsync.streams.base import StreamSettings

    record = {
        **invoice(9, total="90.0"),
        "patient": link("patients/7"),
        "items": [{"id": "901", "name": "Review", "unit_price": "95.0"}],  # its $5 discount was not read
    }
    mapped = MappedRecord("9", {}, "Invoice 9", None, False)
    mirror._enrich(mapped, record, StreamSettings("Australia/Sydney", "aud"))
    assert mapped.error is not None and mapped.error.startswith("invoice lines: the lines add up to 95.00 AUD")
    assert "mirror.lines" not in mapped.payload


class _Mirrors:
    def __init__(self, statuses: dict[str, str]) -> None:
        self.statuses = statuses

    def retrieve(self, kind: str, stripe_id: str) -> dict[str, Any]:
        return {"id": stripe_id, "status": self.statuses[stripe_id], "metadata": {}}


def test_race_twins_are_the_finalized_mirrors_and_void_ones_beside_one_are_replacements() -> None:
    assert mirror.choose_twins(_Mirrors({"in_1": "void", "in_2": "draft"}), ["in_1", "in_2"]) == []
    assert mirror.choose_twins(_Mirrors({"in_1": "void", "in_2": "open"}), ["in_1", "in_2"]) == ["in_2"]
    assert mirror.choose_twins(_Mirrors({"in_1": "open", "in_2": "paid"}), ["in_1", "in_2"]) == ["in_1", "in_2"]
