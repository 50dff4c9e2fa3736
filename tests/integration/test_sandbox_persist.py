"""The sandbox keeps its data in a folder: saved atomically, restored on new ports, and a damaged snapshot is a
clear message, never a traceback or a half-restored store."""

from __future__ import annotations

import os
import pickle
import random

import httpx
import pytest
import stripe

from clinicsync.sandbox import persist
from clinicsync.sandbox.calcom_emu import CalcomEmulator
from clinicsync.sandbox.cliniko_emu import ClinikoEmulator
from clinicsync.sandbox.launcher import STATE_FILE, has_saved_sandbox, start_sandbox
from clinicsync.sandbox.stripe_emu import StripeEmulator


def stripe_client(sandbox) -> stripe.StripeClient:
    return stripe.StripeClient(sandbox.stripe_key, base_addresses={"api": sandbox.stripe_url}, max_network_retries=0)


def customer_emails(sandbox) -> list[str]:
    page = stripe_client(sandbox).v1.customers.list({"limit": 100})
    return sorted(customer.email or "" for customer in page.auto_paging_iter())


def cliniko_patient_count(sandbox) -> int:
    response = httpx.get(
        sandbox.cliniko_url + "/patients",
        auth=(sandbox.cliniko_key, ""),
        headers={"Accept": "application/json", "User-Agent": "ClinicSync tests (tests@example.com)"},
        timeout=10,
    )
    response.raise_for_status()
    return int(response.json()["total_entries"])


@pytest.fixture
def started():
    sandboxes = []
    yield sandboxes
    for sandbox in sandboxes:
        sandbox.stop()


def test_a_sandbox_comes_back_from_its_folder_with_its_data_on_new_ports(tmp_path, started):
    first = start_sandbox(profile="hard", patients=20, products=2, calcom=True, state_dir=tmp_path)
    started.append(first)
    assert has_saved_sandbox(tmp_path)
    stripe_client(first).v1.customers.create({"email": "added.after.seeding@example.com", "name": "Added Later"})
    before = customer_emails(first)
    patients = cliniko_patient_count(first)
    first_urls = (first.cliniko_url, first.stripe_url, first.calcom_url)
    first.stop()

    again = start_sandbox(profile="clean", patients=3, state_dir=tmp_path)  # seeding options: ignored
    started.append(again)
    assert customer_emails(again) == before and "added.after.seeding@example.com" in before
    assert cliniko_patient_count(again) == patients
    assert again.calcom is not None, "the Cal.com emulator came back too"
    assert again.seeded["cases"] == first.seeded["cases"]
    assert again.env()["CLINICSYNC_STRIPE_BASE_URL"] == again.stripe_url
    assert first_urls[1] != again.stripe_url or first_urls[0] != again.cliniko_url, "served on new ports"
    assert again.stripe_key.startswith("sk_test_sandbox") and again.cliniko_key == first.cliniko_key


def test_keys_are_never_in_the_saved_files(tmp_path, started):
    sandbox = start_sandbox(profile="hard", patients=5, calcom=True, state_dir=tmp_path)
    started.append(sandbox)
    sandbox.stop()
    keys = [sandbox.stripe_key, sandbox.cliniko_key, sandbox.calcom_key]
    for path in tmp_path.iterdir():
        data = path.read_bytes()
        assert not [key for key in keys if key and key.encode() in data], path.name


def test_a_change_over_http_is_saved_soon_after_without_stopping(tmp_path, started, qtbot_free_wait):
    sandbox = start_sandbox(profile="clean", patients=3, products=0, state_dir=tmp_path)
    started.append(sandbox)
    keeper = next(k for k in sandbox.keepers if k.emulator.name == "stripe")
    keeper.delay_s = 0.01
    stripe_client(sandbox).v1.customers.create({"email": "saved.soon@example.com"})
    qtbot_free_wait(lambda: keeper.saves >= 1)

    restored = StripeEmulator()
    assert persist.load(restored, persist.snapshot_path(tmp_path, restored))
    emails = [
        record.current.email for scope in restored._scopes.values() for record in scope.customers.records.values()
    ]
    assert "saved.soon@example.com" in emails


@pytest.fixture
def qtbot_free_wait():
    """Poll a condition (a background save) with a generous limit; nothing here proves an order by the clock."""
    import time

    def wait(condition, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.005)

    return wait


def plain(value: object) -> object:
    """A value's content as nested builtins, to compare stores whose classes define no equality."""
    if isinstance(value, random.Random):
        return value.getstate()
    if isinstance(value, dict):
        return {repr(plain(k)): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted(repr(plain(item)) for item in value)
    if hasattr(value, "__dict__") or hasattr(type(value), "__slots__"):
        slots = [n for cls in type(value).__mro__ for n in vars(cls).get("__slots__", ())]
        fields = {**getattr(value, "__dict__", {}), **{n: getattr(value, n) for n in slots if hasattr(value, n)}}
        return (type(value).__name__, plain(fields))
    return value


SEEDS = {
    "stripe": {
        "customers": [{"email": "a@example.com"}],
        "products": [{"name": "Massage", "prices": [{"unit_amount": 9000, "currency": "aud"}]}],
    },
    "cliniko": {"profile": "hard", "patients": 5, "seed": 3},
    "calcom": {"profile": "hard", "patients": 5, "seed": 3, "bookings": 10},
}


@pytest.mark.parametrize("make", [StripeEmulator, ClinikoEmulator, CalcomEmulator], ids=lambda m: m.name)
def test_every_emulator_round_trips_including_state_added_later(tmp_path, make):
    emulator = make()
    assert emulator.admin("seed", SEEDS[emulator.name]).status == 200
    # A resource another change adds later is just another attribute: saved with no edit to persist.py.
    emulator.payment_things = {"pt_1": {"amount": 1200, "currency": "aud"}}
    path = persist.snapshot_path(tmp_path, emulator)
    persist.save(emulator, path)

    restored = make()
    assert persist.load(restored, path)
    assert restored.payment_things == {"pt_1": {"amount": 1200, "currency": "aud"}}
    assert plain(persist.state_of(restored)) == plain(persist.state_of(emulator)), "the whole store came back"
    assert restored._lock is not emulator._lock and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_snapshot_from_before_a_field_existed_gets_its_default(tmp_path):
    emulator = StripeEmulator()
    emulator.admin("seed", {"customers": [{"email": "a@example.com"}]})
    (scope,) = emulator._scopes.values()
    del vars(scope)["lookup_keys"]  # as if saved before the scope had this table
    path = tmp_path / "stripe.snapshot"
    persist.save(emulator, path)

    restored = StripeEmulator()
    assert persist.load(restored, path)
    (scope,) = restored._scopes.values()
    assert scope.lookup_keys == {}


def test_no_snapshot_means_nothing_to_restore(tmp_path):
    emulator = ClinikoEmulator()
    assert persist.load(emulator, tmp_path / "cliniko.snapshot") is False and emulator.patients == {}


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda good: good[: len(good) // 2], "damaged"),
        (lambda good: b"not a snapshot at all", "damaged"),
        (lambda good: b"", "damaged"),
        (lambda good: pickle.dumps({"format": 1, "emulator": "cliniko", "state": {}}), "another version"),
        (lambda good: pickle.dumps({"format": 99, "emulator": "stripe", "state": {}}), "another version"),
        (lambda good: pickle.dumps(["a", "list"]), "not a sandbox snapshot"),
    ],
    ids=["truncated", "garbage", "empty", "other emulator", "newer format", "not a snapshot"],
)
def test_a_damaged_snapshot_is_a_clear_message_and_changes_nothing(tmp_path, damage, words):
    emulator = StripeEmulator()
    emulator.admin("seed", {"customers": [{"email": "a@example.com"}]})
    path = tmp_path / "stripe.snapshot"
    persist.save(emulator, path)
    path.write_bytes(damage(path.read_bytes()))

    fresh = StripeEmulator()
    with pytest.raises(persist.SnapshotError, match=words) as caught:
        persist.load(fresh, path)
    assert str(path) in str(caught.value) and "Stripe" in str(caught.value)
    assert fresh._scopes == {}, "nothing half-restored"


class _RunsCode:
    def __reduce__(self):
        return (os.remove, ("/definitely/not/here",))


def test_a_tampered_snapshot_cannot_run_code(tmp_path):
    path = tmp_path / "cliniko.snapshot"
    path.write_bytes(pickle.dumps({"format": 1, "emulator": "cliniko", "state": {"x": _RunsCode()}}))
    with pytest.raises(persist.SnapshotError, match=r"damaged.*unexpected (posix|os)\.remove"):
        persist.load(ClinikoEmulator(), path)


def test_a_failed_write_keeps_the_previous_snapshot(tmp_path, monkeypatch):
    emulator = ClinikoEmulator()
    emulator.admin("seed", {"profile": "clean", "patients": 2})
    path = tmp_path / "cliniko.snapshot"
    persist.save(emulator, path)
    good = path.read_bytes()
    emulator.admin("seed", {"profile": "clean", "patients": 4})

    def full_disk(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(persist.os, "replace", full_disk)
    keeper = persist.SnapshotKeeper(emulator, path, delay_s=60)
    assert keeper.flush() is False, "a failed save is reported, not raised"
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == [path.name], "no temp file left"


def test_the_keeper_saves_a_burst_once_and_closes_with_the_latest(tmp_path):
    emulator = ClinikoEmulator()
    path = tmp_path / "cliniko.snapshot"
    keeper = persist.SnapshotKeeper(emulator, path, delay_s=60)
    for _ in range(5):
        keeper.changed()
    emulator.admin("seed", {"profile": "clean", "patients": 3})
    assert keeper.saves == 0 and not path.exists(), "debounced: nothing written yet"
    assert keeper.close() and keeper.saves == 1
    keeper.changed()
    assert keeper.saves == 1, "closed: no more saves"
    restored = ClinikoEmulator()
    assert persist.load(restored, path) and len(restored.patients) == 3


def test_a_damaged_saved_sandbox_starts_nothing_and_says_why(tmp_path, started):
    sandbox = start_sandbox(profile="clean", patients=3, products=0, state_dir=tmp_path)
    sandbox.stop()
    (tmp_path / "stripe.snapshot").write_bytes(b"\x80\x05garbage")
    with pytest.raises(persist.SnapshotError, match=r"saved Stripe data .* is damaged"):
        started.append(start_sandbox(state_dir=tmp_path))
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(persist.SnapshotError, match="can't be read"):
        started.append(start_sandbox(state_dir=tmp_path))
    (tmp_path / STATE_FILE).unlink()
    fresh = start_sandbox(profile="clean", patients=3, products=0, state_dir=tmp_path)  # no saved sandbox: seeds
    started.append(fresh)
    assert cliniko_patient_count(fresh) == 3 and has_saved_sandbox(tmp_path)


def test_a_snapshot_cannot_build_a_class_clinicsync_only_imports(tmp_path):
    import pickle

    from clinicsync.sandbox import persist

    class Evil:
        def __reduce__(self):
            from clinicsync.sandbox import server

            return (server.ThreadingHTTPServer, (("127.0.0.1", 0), server.BaseHTTPRequestHandler))

    data = pickle.dumps({"format": persist.FORMAT, "emulator": "stripe", "state": {"x": Evil()}})
    with pytest.raises(pickle.UnpicklingError):
        persist._SandboxUnpickler(__import__("io").BytesIO(data)).load()


def test_a_snapshot_cannot_build_a_server_even_one_clinicsync_defines(tmp_path):
    import io
    import pickle

    from clinicsync.sandbox import persist, server

    class Evil:
        def __reduce__(self):
            return (server._Server, (("127.0.0.1", 0), server.BaseHTTPRequestHandler))

    data = pickle.dumps({"format": persist.FORMAT, "emulator": "stripe", "state": {"x": Evil()}})
    with pytest.raises(pickle.UnpicklingError):
        persist._SandboxUnpickler(io.BytesIO(data)).load()
