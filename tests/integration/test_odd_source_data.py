"""Odd source data over the real HTTP path (issue 8, item 6): values of the wrong type, ids not of Cliniko's form,
one record listed twice, control characters between words. The sandbox's hostile knobs (`put_raw_patients`,
`list_twice`) serve what a real Cliniko should never send; each odd record gets its own outcome and message, the
rest sync, and nothing reaches Stripe as Python's spelling of a value.
"""

from __future__ import annotations

import json
from typing import Any

from clinicsync.store import queries
from tests.support import admin, executed_writes, stats, sync_once

STAMP = "2024-03-05T01:02:03Z"


def raw_patient(pid: str, **fields: Any) -> dict[str, Any]:
    record = {
        "id": pid,
        "first_name": "Odd",
        "last_name": f"Case{pid[-3:]}",
        "email": None,
        "created_at": STAMP,
        "updated_at": STAMP,
    }
    record.update(fields)
    return record


def live_customers(sandbox: Any) -> list[dict[str, Any]]:
    return [c for c in admin(sandbox.stripe_url, "dump")["data"] if not c["deleted"]]


def history(run_id: int) -> dict[str, Any]:
    return {event.source_id: event for event in queries.run_events(run_id)}


def test_values_of_the_wrong_type_fail_their_record_naming_the_field_and_numbers_are_read_as_text(
    make_sandbox, env_for
):
    sandbox = make_sandbox(profile="clean", patients=5)
    odd = {
        "1000000000000000001": ({"first_name": {"evil": "object"}}, "first_name"),
        "1000000000000000002": ({"first_name": True, "last_name": 12.5}, "first_name"),
        "1000000000000000003": ({"address_1": ["3 List", "Street"]}, "address_1"),
        "1000000000000000004": ({"patient_phone_numbers": {"number": "0491 570 156"}}, "patient_phone_numbers"),
        "1000000000000000005": ({"patient_phone_numbers": [{"number": {"n": 1}, "phone_type": "Mobile"}]}, "phone"),
    }
    number_id = "1000000000000000006"
    records = [raw_patient(pid, **fields) for pid, (fields, _) in odd.items()]
    records.append(raw_patient(number_id, post_code=3065, last_name=7))
    admin(sandbox.cliniko_url, "put_raw_patients", patients=records)

    result = sync_once(env_for(sandbox))
    events = history(result.run_id)
    for pid, (_, field) in odd.items():
        assert events[pid].action == "failed", (pid, events[pid].message)
        assert events[pid].message.startswith(f"{field}:"), events[pid].message
    assert "Cliniko sent an object where text was expected" in events["1000000000000000001"].message
    assert "true/false" in events["1000000000000000002"].message
    assert "a list" in events["1000000000000000003"].message
    assert result.counts["failed"] == len(odd)
    assert result.counts["created"] == 5 + 1, "the ordinary patients and the one with numbers for text"

    customers = live_customers(sandbox)
    by_pid = {c["metadata"].get("cliniko_patient_id"): c for c in customers}
    assert set(odd).isdisjoint(by_pid), "a record with a value of the wrong type never becomes a customer"
    assert by_pid[number_id]["address"]["postal_code"] == "3065"
    assert by_pid[number_id]["name"] == "Odd 7"
    sent = json.dumps(customers)
    for python_text in ("{'", "True", "['", "12.5"):
        assert python_text not in sent, python_text
    assert stats(sandbox.stripe_url)["rejected_total"] == 0


def test_ids_not_of_clinikos_form_are_rejected_one_by_one_and_never_become_customers(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=5)
    bad_ids = ["../../v1/customers", "-1", "", "0", "12abc", "99999999999999999999"]
    records = [raw_patient(pid, last_name=f"Bad{n}") for n, pid in enumerate(bad_ids)]
    admin(sandbox.cliniko_url, "put_raw_patients", patients=records)

    result = sync_once(env_for(sandbox))
    failed = [event for event in queries.run_events(result.run_id) if event.action == "failed"]
    assert result.counts["failed"] == len(bad_ids), [e.message for e in failed]
    assert result.counts["created"] == 5
    messages = sorted(event.message for event in failed)
    assert sum("the record has no id" in message for message in messages) == 1, messages
    for bad in ("../../v1/customers", "-1", "0", "12abc", "99999999999999999999"):
        assert any(f"'{bad}' is not a Cliniko id (a positive whole number)" in m for m in messages), (bad, messages)

    customers = live_customers(sandbox)
    assert len(customers) == 5
    assert {c["metadata"]["cliniko_patient_id"] for c in customers}.isdisjoint(bad_ids)
    assert not any(c["name"].startswith("Odd Bad") for c in customers)
    assert stats(sandbox.stripe_url)["rejected_total"] == 0

    again = sync_once(env_for(sandbox))
    assert again.counts["created"] == 0 and len(live_customers(sandbox)) == 5


def test_a_record_listed_twice_is_handled_once_and_later_syncs_write_nothing(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=12)
    env = env_for(sandbox)
    ids = sorted(p["id"] for p in admin(sandbox.cliniko_url, "dump")["patients"])
    # One listed twice with another name at the same change time (what a broken page does), one identical twice.
    admin(sandbox.cliniko_url, "list_twice", ids=[ids[3], ids[7]], fields={})
    admin(sandbox.cliniko_url, "list_twice", ids=[ids[3]], fields={"first_name": "Twin"})

    first = sync_once(env)
    assert first.counts["created"] == 12, first.counts
    assert executed_writes(sandbox.stripe_url) == 12, "one create per patient, no update after it"
    notes = [e for e in queries.run_events(first.run_id) if e.source_id == ids[3] and e.action == "note"]
    assert len(notes) == 1 and "listed this record twice" in notes[0].message

    # Read again on every sync it changes (and within the read overlap): one update each time, never two.
    admin(sandbox.cliniko_url, "edit", ids=[ids[3]], fields={"last_name": "Edited"})
    edited = sync_once(env)
    assert edited.counts["updated"] == 1, edited.counts
    assert executed_writes(sandbox.stripe_url) == 13, "the same id twice on a page must not write twice"
    later = sync_once(env)
    assert later.counts["updated"] == 0 and later.counts["created"] == 0, later.counts
    assert executed_writes(sandbox.stripe_url) == 13
    names = [c["name"] for c in live_customers(sandbox)]
    assert len(names) == 12 and not any(name.startswith("Twin ") for name in names), "the first version was used"


def test_a_product_listed_twice_is_handled_once_too(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=1, products=6)
    env = env_for(sandbox)
    products = sorted(p["id"] for p in admin(sandbox.cliniko_url, "dump")["products"])
    admin(sandbox.cliniko_url, "list_twice", ids=[products[2]], fields={"name": "Twin product"})

    first = sync_once(env, stream="cliniko.products")
    created = first.counts["created"]
    assert created >= 6 and executed_writes(sandbox.stripe_url) == created, "each product and its price in one"
    admin(sandbox.cliniko_url, "edit_products", ids=[products[2]], fields={"item_code": "TWIN-1"})
    edited = sync_once(env, stream="cliniko.products")
    assert edited.counts["updated"] == 1, edited.counts
    assert executed_writes(sandbox.stripe_url) == created + 1


def test_control_characters_between_words_become_one_space(make_sandbox, env_for):
    sandbox = make_sandbox(profile="clean", patients=2)
    pid = "1000000000000000042"
    admin(
        sandbox.cliniko_url,
        "put_raw_patients",
        patients=[
            raw_patient(pid, first_name="Ann\x07e", last_name="\ttab\rreturn", address_1="3 Line\n\x0bBreak St ")
        ],
    )
    result = sync_once(env_for(sandbox))
    assert history(result.run_id)[pid].action == "created"
    customer = next(c for c in live_customers(sandbox) if c["metadata"]["cliniko_patient_id"] == pid)
    assert customer["name"] == "Anne tab return"
    assert customer["address"]["line1"] == "3 Line Break St"
