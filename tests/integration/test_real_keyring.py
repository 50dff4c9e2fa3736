"""Round-trip through the machine's real default keyring backend, under a throwaway service name.

Skipped when no secure keyring is available, unless CLINICSYNC_REQUIRE_REAL_KEYRING=1 (CI sets it and runs
the suite under dbus-run-session with an unlocked gnome-keyring), in which case a missing keyring fails.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

from clinicsync.secrets import (
    CLINIKO_API_KEY,
    SECRET_NAMES,
    STRIPE_API_KEY,
    KeyringSecretStore,
    SecretStoreError,
)

pytestmark = pytest.mark.keyring

FAKE_STRIPE = "sk_test_sandbox_fake"
FAKE_CLINIKO = "FakeClinikoKey0000NotReal0000-au1"


def _unavailable(reason: str) -> None:
    if os.environ.get("CLINICSYNC_REQUIRE_REAL_KEYRING") == "1":
        pytest.fail(f"CLINICSYNC_REQUIRE_REAL_KEYRING=1 but no usable secure keyring: {reason}")
    pytest.skip(f"no usable secure OS keyring: {reason}")


@pytest.fixture
def store() -> Iterator[KeyringSecretStore]:
    # Unique per run so it can never collide with (or clean up) a real clinic's "ClinicSync" service.
    service = f"ClinicSync-test-{uuid.uuid4().hex[:12]}"
    try:
        real = KeyringSecretStore(service)
        real.get(STRIPE_API_KEY)  # a locked keyring or missing D-Bus only shows on first use
    except SecretStoreError as exc:
        _unavailable(str(exc))
    yield real
    for name in SECRET_NAMES:
        with contextlib.suppress(SecretStoreError):  # cleanup must not mask the test's own outcome
            real.delete(name)


def test_round_trip_in_the_real_keyring(store: KeyringSecretStore) -> None:
    assert "keyring (" in store.backend_name
    assert store.get(STRIPE_API_KEY) is None

    store.set(STRIPE_API_KEY, FAKE_STRIPE)
    store.set(CLINIKO_API_KEY, FAKE_CLINIKO)
    assert store.get(STRIPE_API_KEY) == FAKE_STRIPE
    assert store.get(CLINIKO_API_KEY) == FAKE_CLINIKO

    # A fresh store (as after an app restart) reads what was stored.
    again = KeyringSecretStore(store.service)
    assert again.get(STRIPE_API_KEY) == FAKE_STRIPE

    store.set(STRIPE_API_KEY, FAKE_STRIPE + "_rotated")
    assert again.get(STRIPE_API_KEY) == FAKE_STRIPE + "_rotated"

    store.delete(STRIPE_API_KEY)
    assert again.get(STRIPE_API_KEY) is None
    assert again.get(CLINIKO_API_KEY) == FAKE_CLINIKO
    store.delete(STRIPE_API_KEY)  # already gone: not an error


def test_services_are_isolated(store: KeyringSecretStore) -> None:
    other = KeyringSecretStore(f"{store.service}-other")
    store.set(STRIPE_API_KEY, FAKE_STRIPE)
    try:
        assert other.get(STRIPE_API_KEY) is None
    finally:
        other.delete(STRIPE_API_KEY)
