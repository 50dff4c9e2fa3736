"""`clinicsync reconcile` as a person runs it: a subprocess against the loopback sandbox, checked by exit code,
output and the files it writes. Exit 0: nothing to report; 1: findings; 2: usage; 4: a sync holds the profile."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from clinicsync.paths import AppPaths
from clinicsync.profile_lock import ProfileLock
from tests.integration.test_cli import cli, cli_env, expect  # noqa: F401 (cli_env is a fixture)
from tests.integration.test_reconcile import stripe_call
from tests.support import admin

CSV_HEADER = ["type", "stream", "severity", "source_id", "stripe_id", "field", "source_value", "stripe_value",
              "explanation", "suggested_fix"]  # fmt: skip


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == CSV_HEADER
        return list(reader)


def finding_ids(listing: str) -> dict[str, list[int]]:
    """`reconcile list` output → finding numbers by type."""
    found: dict[str, list[int]] = {}
    for line in listing.splitlines():
        if line.startswith("#"):
            number, kind = line.split()[:2]
            found.setdefault(kind, []).append(int(number[1:]))
    return found


def live_customers(sandbox: Any) -> list[dict[str, Any]]:
    return [c for c in admin(sandbox.stripe_url, "dump")["data"] if not c["deleted"]]


def test_reconcile_exit_codes_csv_fixes_and_marks(make_sandbox, cli_env, tmp_path):  # noqa: F811
    sandbox = make_sandbox(profile="clean", patients=30)
    env = cli_env(
        sandbox,
        CLINICSYNC_STREAMS_CLINIKO_PRODUCTS_ENABLED="false",
        CLINICSYNC_STREAMS_CLINIKO_INVOICES_ENABLED="false",
    )
    expect(cli(env, "sync", "--once"), 0)

    clean = expect(cli(env, "reconcile", "--csv", str(tmp_path / "clean.csv"), "--html", str(tmp_path / "r.html")), 0)
    assert "nothing to report" in clean.out and "30 source records, 30 Stripe objects" in clean.out
    assert rows(tmp_path / "clean.csv") == []
    assert "Reconciliation report" in (tmp_path / "r.html").read_text(encoding="utf-8")

    by_patient = {c["metadata"]["cliniko_patient_id"]: c for c in live_customers(sandbox)}
    edited, deleted = sorted(by_patient)[:2]
    stripe_call(sandbox, "POST", f"customers/{by_patient[edited]['id']}", {"name": "Edited In Stripe"})
    admin(sandbox.stripe_url, "delete", ids=[by_patient[deleted]["id"]])
    keep = stripe_call(sandbox, "POST", "customers", {"name": "Walk In", "email": "walk.in@example.org"})
    extra = stripe_call(sandbox, "POST", "customers", {"name": "Walk-in", "email": "WALK.IN@example.org"})
    if (extra["created"], extra["id"]) < (keep["created"], keep["id"]):
        keep, extra = extra, keep

    found = expect(cli(env, "reconcile", "--csv", str(tmp_path / "found.csv")), 1)
    assert "3 to report" in found.out
    assert "field_drift" in found.out and "missing_in_stripe" in found.out and "duplicate" in found.out
    table = {(row["type"], row["source_id"], row["stripe_id"]): row for row in rows(tmp_path / "found.csv")}
    assert set(table) == {
        ("field_drift", edited, by_patient[edited]["id"]),
        ("missing_in_stripe", deleted, by_patient[deleted]["id"]),
        ("duplicate", "", extra["id"]),
    }
    drift = table[("field_drift", edited, by_patient[edited]["id"])]
    assert (drift["stream"], drift["field"], drift["stripe_value"]) == ("cliniko.patients", "name", "Edited In Stripe")
    assert drift["source_value"] == by_patient[edited]["name"] and drift["severity"] == "medium"
    assert all(row["explanation"] and row["suggested_fix"] for row in table.values())

    ids = finding_ids(expect(cli(env, "reconcile", "list"), 0).out)
    (dup_id,) = ids["duplicate"]
    refused = expect(cli(env, "reconcile", "fix", str(dup_id), "--fix", "delete"), 2)
    assert "confirm" in refused.out and any(c["id"] == extra["id"] for c in live_customers(sandbox))
    expect(cli(env, "reconcile", "fix", str(dup_id), "--fix", "delete", "--yes"), 0)
    assert not any(c["id"] == extra["id"] for c in live_customers(sandbox))

    expect(cli(env, "reconcile", "intend", str(ids["field_drift"][0]), "--note", "the clinic prefers it"), 0)
    fixed = expect(cli(env, "reconcile", "fix", "--all-suggested"), 0)
    assert "repush: scheduled" in fixed.out
    expect(cli(env, "sync", "--once"), 0)

    after = expect(cli(env, "reconcile"), 0)
    assert "nothing to report" in after.out and "1 marked as intended earlier" in after.out
    export = expect(cli(env, "reconcile", "export", "--csv", str(tmp_path / "after.csv")), 0)
    assert "0 finding(s) written" in export.out and rows(tmp_path / "after.csv") == []
    assert "#1" in expect(cli(env, "reconcile", "reports"), 0).out

    assert "Unknown stream" in expect(cli(env, "reconcile", "--stream", "nope"), 2).err
    assert "No finding 9999" in expect(cli(env, "reconcile", "fix", "9999"), 2).err
    with ProfileLock(AppPaths.resolve(env).lock_file):
        assert "Another sync is already running" in expect(cli(env, "reconcile"), 4).err
