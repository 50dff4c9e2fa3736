"""calcom.reference's plan: one update of the product calcom.event_types linked, with this stream's keys only
(an empty one removed), or nothing yet while that product is not synced."""

from __future__ import annotations

import pytest

from clinicsync.mapping.apply import MappedRecord
from clinicsync.streams.base import NotYet, PlanRequest
from clinicsync.streams.calcom_reference import CALCOM_REFERENCE, OWN_KEYS


class Links:
    def __init__(self, linked: dict[tuple[str, str], str]) -> None:
        self.linked = linked

    def stripe_id(self, stream: str, source_id: str, role: str | None = None) -> str | None:
        return self.linked.get((stream, source_id))


def request(links: Links, op: str = "create", stripe_id: str | None = None) -> PlanRequest:
    payload = {
        "name": "Initial consultation",
        "metadata.calcom_event_type_id": "4001",
        "metadata.calcom_schedule": "Clinic hours",
        "metadata.calcom_schedule_time_zone": "Australia/Sydney",
        "metadata.calcom_team_id": None,
        "metadata.calcom_team_slug": None,
        "metadata.calcom_owner_name": "Dr Sandbox",
        "metadata.calcom_owner_time_zone": "Australia/Sydney",
        "metadata.calcom_reference_archived": None,
    }
    mapped = MappedRecord("4001", payload, "Initial consultation", None, False)
    return PlanRequest(op, mapped, stripe_id, {}, "calcom_event_type_id", links=links)


def test_the_event_types_product_gets_this_streams_keys_only() -> None:
    links = Links({("calcom.event_types", "4001"): "prod_event_type"})
    for op, matched in (("create", None), ("link", "prod_same_name_elsewhere"), ("update", "prod_event_type")):
        (step,) = CALCOM_REFERENCE.plan(request(links, op, matched))
        assert (step.op, step.stripe_object, step.stripe_id) == ("update", "product", "prod_event_type")
        assert set(step.params) == {"metadata"} and set(step.params["metadata"]) == set(OWN_KEYS)
        assert step.params["metadata"]["calcom_team_id"] == "", "an empty key is removed, not left behind"
        assert step.params["metadata"]["calcom_schedule"] == "Clinic hours"


def test_an_event_type_not_in_stripe_yet_waits() -> None:
    with pytest.raises(NotYet, match="not in Stripe yet"):
        CALCOM_REFERENCE.plan(request(Links({})))
