"""The webhook receiver's verdicts, without HTTP: signature, shape, age and repeats (clinicsync.sync.webhook)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from clinicsync.sync.webhook import STALE_AFTER, judge, signature

SECRET = "sandbox-webhook-secret-not-real-0002"
NOW = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)


class Memory:
    def __init__(self) -> None:
        self.keys: set[str] = set()

    def __call__(self, key: str, created: datetime, now: datetime) -> bool:
        if key in self.keys:
            return False
        self.keys.add(key)
        return True


def body_of(trigger: str = "BOOKING_CREATED", created: str = "2026-03-04T09:59:00.000Z", **payload: object) -> bytes:
    return json.dumps({"triggerEvent": trigger, "createdAt": created, "payload": {"uid": "bk_1", **payload}}).encode()


def verdict(body: bytes, signed: str | None = "", memory: Memory | None = None):  # type: ignore[no-untyped-def]
    return judge(body, signature(body, SECRET) if signed == "" else signed, SECRET, NOW, memory or Memory())


def test_a_signed_booking_delivery_acts_once_and_its_repeat_is_answered_without_acting() -> None:
    memory = Memory()
    first = verdict(body_of(), memory=memory)
    assert (first.status, first.booking_uid, first.trigger) == (200, "bk_1", "BOOKING_CREATED")
    again = verdict(body_of(), memory=memory)
    assert again.status == 200 and not again.acts
    other_trigger = verdict(body_of("BOOKING_CANCELLED"), memory=memory)
    assert other_trigger.acts, "the same booking's next event is a new delivery"


def test_signatures_missing_unsigned_or_wrong_are_refused_before_anything_is_remembered() -> None:
    memory = Memory()
    assert verdict(body_of(), None, memory).status == 401
    assert verdict(body_of(), "no-secret-provided", memory).status == 401
    assert verdict(body_of(), signature(body_of(), "other"), memory).status == 403
    assert verdict(body_of(), "zz" * 32, memory).status == 403
    assert verdict(body_of(), "é", memory).status == 403  # not hex, not ASCII: refused, no exception
    assert memory.keys == set()


def test_stale_future_and_malformed_deliveries_are_refused() -> None:
    old = (NOW - STALE_AFTER - timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    assert verdict(body_of(created=old)).status == 400
    assert verdict(body_of(created="2026-03-05T12:00:00Z")).status == 400
    assert verdict(body_of(created="yesterday")).status == 400
    assert verdict(b"[1, 2]").status == 400
    assert verdict(b"\xff\xfe").status == 400


def test_tests_and_triggers_that_are_not_bookings_are_answered_and_ignored() -> None:
    ping = verdict(body_of("PING"))
    assert ping.status == 200 and not ping.acts and ping.message.startswith("Test received")
    assert not verdict(body_of("MEETING_ENDED")).acts
    no_show = json.dumps(
        {"triggerEvent": "BOOKING_NO_SHOW_UPDATED", "createdAt": "2026-03-04T09:59:00Z", "payload": {"bookingUid": "b"}}
    ).encode()
    assert verdict(no_show).booking_uid == "b"
