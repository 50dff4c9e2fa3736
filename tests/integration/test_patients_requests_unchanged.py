"""The patients stream, now one declared stream of the multi-stream engine, sends Stripe exactly the requests it
sent before the engine learnt write plans: the same scenario is replayed and its requests compared with a
recording made by the engine before the change (tests/golden/patients_requests.json).

Requests are compared as a multiset (writes go out in parallel, so their order varies), with Stripe ids replaced
by the patient each object belongs to and times that depend on when the test runs blanked.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from tests.support import admin, sync_once

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "patients_requests.json"
_STRIPE_ID = re.compile(r"\b(cus|prod|price)_[A-Za-z0-9]+")
_NOW = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")  # "archived <now>": the time of the test run


def record_scenario(make_sandbox: Any, env_for: Any) -> list[str]:
    """Hard profile: a first sync (creates, links, reviews), 7 edits, an archive and an unarchive, more syncs."""
    sandbox = make_sandbox(profile="hard", patients=60, seed=4242)
    env = env_for(sandbox)
    admin(sandbox.stripe_url, "request_log", enabled=True)
    sync_once(env)
    admin(sandbox.cliniko_url, "edit", count=7)
    patients = admin(sandbox.cliniko_url, "dump")["patients"]
    live = sorted(p["id"] for p in patients if not p.get("archived_at"))
    admin(sandbox.cliniko_url, "archive", ids=live[:2])
    sync_once(env)
    admin(sandbox.cliniko_url, "unarchive", ids=live[:1])
    sync_once(env)
    requests = admin(sandbox.stripe_url, "request_log")["requests"]
    owners = {
        customer["id"]: (customer.get("metadata") or {}).get("cliniko_patient_id") or "unlinked"
        for customer in admin(sandbox.stripe_url, "dump")["data"]
    }
    return sorted(_normalised(request, owners) for request in requests)


def _normalised(request: dict[str, Any], owners: dict[str, str]) -> str:
    def name(match: re.Match[str]) -> str:
        return f"<{match.group(1)} of {owners.get(match.group(0), 'unknown')}>"

    query = sorted((key, "<t>" if key.startswith("created") else value) for key, value in request["query"])
    body = sorted(parse_qsl(request["body"], keep_blank_values=True))
    text = json.dumps([request["method"], request["path"], query, body], ensure_ascii=False)
    return _NOW.sub("<now>", _STRIPE_ID.sub(name, text))


def test_the_patients_stream_sends_exactly_the_requests_it_sent_before(make_sandbox, env_for):
    recorded = record_scenario(make_sandbox, env_for)
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    missing = Counter(expected) - Counter(recorded)
    extra = Counter(recorded) - Counter(expected)
    assert not missing and not extra, f"missing {list(missing)[:5]}\nextra {list(extra)[:5]}"
    assert len(recorded) > 60, "the scenario sent the writes it is about"


if __name__ == "__main__":  # re-record (only when a change of requests is intended): python -m tests.integration.…
    from clinicsync.sandbox.launcher import start_sandbox
    from tests.support import profile_env

    started = []

    def make(**kwargs: Any) -> Any:
        started.append(start_sandbox(**kwargs))
        return started[-1]

    import tempfile

    home = Path(tempfile.mkdtemp())
    try:
        lines = record_scenario(make, lambda sandbox: profile_env(home / "profile", sandbox.env()))
    finally:
        for sandbox in started:
            sandbox.stop()
    GOLDEN.write_text(json.dumps(lines, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print(f"{len(lines)} requests recorded to {GOLDEN}", file=sys.stderr)
