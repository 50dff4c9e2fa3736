"""`clinicsync mapping …` as a user runs it: a subprocess against the loopback sandbox, keys from the environment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from clinicsync.sandbox import seed
from tests.integration.test_patients_stream import by_patient_id, customers, patients
from tests.support import executed_writes, sync_once

REPO = Path(__file__).resolve().parents[2]


def clinicsync(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    # Keys come from the environment, so the keyring is never used; the fail backend proves it.
    full_env = {**env, "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    return subprocess.run(
        [sys.executable, "-m", "clinicsync", *args],
        cwd=REPO,
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_show_export_import_allow_preview_headless(make_sandbox, env_for, tmp_path: Path):
    sandbox = make_sandbox(profile="clean", patients=6)
    env = env_for(sandbox)

    shown = clinicsync(env, "mapping", "show")
    assert shown.returncode == 0, shown.stderr
    assert "built-in default" in shown.stdout and "scope: all records" in shown.stdout
    assert "10. metadata.cliniko_patient_id" in shown.stdout and "[cross_ref]" in shown.stdout

    exported = tmp_path / "mapping.json"
    assert clinicsync(env, "mapping", "export", str(exported)).returncode == 0
    document = json.loads(exported.read_text())
    assert document["stream"] == "cliniko.patients" and document["version"] == 0
    document["rules"][0] = {
        "target": "name",
        "transform": "template",
        "options": {"template": "{last_name}, {first_name}"},
        "overflow": "truncate",
    }
    document["rules"].append(
        {"target": "metadata.health_fund", "sources": [f"custom_fields.{seed.CUSTOM_FIELD_HEALTH_FUND_TOKEN}"]}
    )
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(document))

    refused = clinicsync(env, "mapping", "import", str(edited))
    assert refused.returncode == 2
    assert "row 11 (metadata.health_fund ← custom_fields." in refused.stderr and "[clinical-field]" in refused.stderr

    field = f"custom_fields.{seed.CUSTOM_FIELD_HEALTH_FUND_TOKEN}"
    unconfirmed = clinicsync(env, "mapping", "allow", field)
    assert unconfirmed.returncode == 2 and "WARNING:" in unconfirmed.stdout and "Health fund" in unconfirmed.stdout
    allowed = clinicsync(env, "mapping", "allow", field, "--yes")
    assert allowed.returncode == 0 and "Allowed" in allowed.stdout

    imported = clinicsync(env, "mapping", "import", str(edited))
    assert imported.returncode == 0, imported.stderr
    assert "version 1" in imported.stdout and "re-reads every record" in imported.stdout
    assert json.loads(clinicsync(env, "mapping", "show", "--json").stdout)["version"] == 1
    assert clinicsync(env, "mapping", "import", str(edited)).stdout.startswith(
        "The cliniko.patients mapping is already"
    )

    pid = sorted(patients(sandbox))[0]
    patient = patients(sandbox)[pid]
    preview = clinicsync(env, "mapping", "preview", "--record", pid, "--json")
    assert preview.returncode == 0, preview.stderr
    shown_preview = json.loads(preview.stdout)
    assert shown_preview["op"] == "create" and shown_preview["stripe_id"] is None
    assert shown_preview["params"]["name"] == f"{patient['last_name']}, {patient['first_name']}"
    assert (
        shown_preview["params"]["metadata"]["health_fund"]
        == patient["custom_fields"][seed.CUSTOM_FIELD_HEALTH_FUND_TOKEN]
    )
    assert executed_writes(sandbox.stripe_url) == 0 and executed_writes(sandbox.cliniko_url) == 0

    sync_once(env)
    assert by_patient_id(customers(sandbox))[pid]["name"] == f"{patient['last_name']}, {patient['first_name']}"
    writes = executed_writes(sandbox.stripe_url)
    human = clinicsync(env, "mapping", "preview", "--record", pid)
    assert human.returncode == 0 and "linked to cus_" in human.stdout and "no change against Stripe now" in human.stdout
    assert executed_writes(sandbox.stripe_url) == writes

    missing = clinicsync(env, "mapping", "preview", "--record", "1")
    assert missing.returncode == 1 and "No patient 1" in missing.stdout

    fields = clinicsync(env, "mapping", "fields")
    assert "Clinic sync › Health fund (allowed)" in fields.stdout
    assert "Clinic sync › Stripe customer ID — needs an allowance" in fields.stdout
    assert clinicsync(env, "mapping", "disallow", field).returncode == 2  # still mapped
    assert clinicsync(env, "mapping", "reset").returncode == 0
    assert clinicsync(env, "mapping", "disallow", field).returncode == 0
    assert clinicsync(env, "mapping", "show", "--stream", "cliniko.nothing").returncode == 2


def test_files_that_cannot_be_read_or_written_are_named_not_a_traceback(make_sandbox, env_for, tmp_path: Path):
    env = env_for(make_sandbox(profile="clean", patients=1))
    missing = clinicsync(env, "mapping", "import", str(tmp_path / "nowhere.json"))
    assert missing.returncode == 2 and "Could not read" in missing.stderr and "nowhere.json" in missing.stderr
    binary = tmp_path / "photo.json"
    binary.write_bytes(b"\xff\xd8\xff\xe0 not text")
    assert "Could not read" in clinicsync(env, "mapping", "import", str(binary)).stderr
    unwritable = clinicsync(env, "mapping", "export", str(tmp_path / "no-such-folder" / "out.json"))
    assert unwritable.returncode == 2 and "Could not write" in unwritable.stderr
    for ran in (missing, unwritable):
        assert "Traceback" not in ran.stderr
