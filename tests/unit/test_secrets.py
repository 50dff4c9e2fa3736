"""SecretStore behaviour with injected fake keyring backends: nothing here touches the real OS keyring.

The fakes are duck-typed on purpose: subclassing keyring's KeyringBackend would register them in keyring's
global backend registry, where the real backend detection (in other tests) could pick them up.
"""

from __future__ import annotations

import sys
from pathlib import Path

import keyring
import keyring.backends.chainer
import keyring.backends.fail
import keyring.backends.null
import keyring.errors
import pytest

from clinicsync.paths import AppPaths
from clinicsync.secrets import (
    CALCOM_API_KEY,
    CLINIKO_API_KEY,
    SECRET_NAMES,
    STRIPE_API_KEY,
    EnvSecretStore,
    InsecureKeyringError,
    KeyringSecretStore,
    LayeredSecrets,
    MemorySecretStore,
    ReadOnlySecretStoreError,
    SecretStore,
    SecretStoreError,
    install_hint,
    open_secrets,
    select_secure_backend,
    service_for,
)

FAKE_STRIPE = "sk_test_sandbox_fake"
FAKE_CLINIKO = "FakeClinikoKey0000NotReal0000-au1"
FAKE_CALCOM = "cal_test_sandboxfake"


class FakeSecureBackend:
    """Behaves like a working OS keyring (priority >= 1), in memory."""

    priority = 5
    name = "fake secure"

    def __init__(self) -> None:
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if (service, username) not in self.passwords:
            raise keyring.errors.PasswordDeleteError("Password not found")
        del self.passwords[(service, username)]


class FakePlaintextBackend(FakeSecureBackend):
    """Looks like keyrings.alt's PlaintextKeyring, even with a high priority."""

    priority = 9


FakePlaintextBackend.__module__ = "keyrings.alt.file"


class FakeLowPriorityBackend(FakeSecureBackend):
    priority = 0.5


class FakeUnusableBackend(FakeSecureBackend):
    @property
    def priority(self) -> float:  # what keyring backends do when they cannot work here
        raise RuntimeError("The Secret Service daemon is neither running nor activatable through D-Bus")


class DbusError(Exception):
    pass


DbusError.__module__ = "jeepney.wrappers"


class FailingBackend(FakeSecureBackend):
    """Raises ``error`` from every operation; the message may echo the password, as a careless backend might."""

    def __init__(self, error: Exception, *, echo_password: bool = False) -> None:
        super().__init__()
        self.error = error
        self.echo_password = echo_password

    def get_password(self, service: str, username: str) -> str | None:
        raise self.error

    def set_password(self, service: str, username: str, password: str) -> None:
        if self.echo_password:
            raise keyring.errors.PasswordSetError(f"could not store {password!r}")
        raise self.error

    def delete_password(self, service: str, username: str) -> None:
        raise self.error


@pytest.fixture
def linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")


# --- refusing insecure backends -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend",
    [
        keyring.backends.fail.Keyring(),
        keyring.backends.null.Keyring(),
        FakePlaintextBackend(),
        FakeLowPriorityBackend(),
        FakeUnusableBackend(),
    ],
    ids=["fail", "null", "keyrings.alt", "priority<1", "not-viable"],
)
def test_insecure_backends_are_refused_with_install_advice(backend: object, linux: None) -> None:
    with pytest.raises(InsecureKeyringError) as excinfo:
        KeyringSecretStore("ClinicSync-test", backend=backend)  # type: ignore[arg-type]
    message = str(excinfo.value)
    assert type(backend).__name__ in message
    assert "GNOME Keyring" in message
    assert "apt install gnome-keyring" in message
    assert "KWallet" in message
    assert "CLINICSYNC_STRIPE_API_KEY" in message  # the headless alternative


def test_insecure_keyring_error_is_a_secret_store_error() -> None:
    with pytest.raises(SecretStoreError):
        KeyringSecretStore("ClinicSync-test", backend=keyring.backends.null.Keyring())


def test_install_hint_per_os() -> None:
    assert "apt install gnome-keyring" in install_hint("linux")
    assert "KWallet" in install_hint("linux")
    assert "Keychain is built in" in install_hint("darwin")
    assert "Credential Locker is built in" in install_hint("win32")


def test_chainer_without_secure_backends_is_refused(monkeypatch: pytest.MonkeyPatch, linux: None) -> None:
    monkeypatch.setattr(
        keyring.backends.chainer.ChainerBackend, "backends", [FakePlaintextBackend(), FakeLowPriorityBackend()]
    )
    with pytest.raises(InsecureKeyringError, match="chainer has no secure backend") as excinfo:
        KeyringSecretStore("ClinicSync-test", backend=keyring.backends.chainer.ChainerBackend())
    assert "gnome-keyring" in str(excinfo.value)


def test_chainer_uses_its_best_secure_member_only(monkeypatch: pytest.MonkeyPatch) -> None:
    plaintext, secure = FakePlaintextBackend(), FakeSecureBackend()
    monkeypatch.setattr(keyring.backends.chainer.ChainerBackend, "backends", [plaintext, secure])
    chosen = select_secure_backend(keyring.backends.chainer.ChainerBackend())
    assert chosen is secure
    store = KeyringSecretStore("ClinicSync-test", backend=keyring.backends.chainer.ChainerBackend())
    store.set(STRIPE_API_KEY, FAKE_STRIPE)
    assert plaintext.passwords == {}
    assert secure.passwords == {("ClinicSync-test", STRIPE_API_KEY): FAKE_STRIPE}


def test_default_backend_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keyring, "get_keyring", lambda: keyring.backends.fail.Keyring())
    with pytest.raises(InsecureKeyringError):
        KeyringSecretStore("ClinicSync-test")


def test_broken_keyring_configuration_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> object:
        raise ValueError("bad keyringrc.cfg")

    monkeypatch.setattr(keyring, "get_keyring", broken)
    with pytest.raises(SecretStoreError, match="Could not load the OS keyring"):
        KeyringSecretStore("ClinicSync-test")


# --- keyring store behaviour and its errors ------------------------------------------------------------------


def test_keyring_store_round_trip_under_its_service() -> None:
    backend = FakeSecureBackend()
    store = KeyringSecretStore("ClinicSync-abc", backend=backend)  # type: ignore[arg-type]
    assert store.get(CLINIKO_API_KEY) is None
    store.set(CLINIKO_API_KEY, FAKE_CLINIKO)
    assert store.get(CLINIKO_API_KEY) == FAKE_CLINIKO
    assert backend.passwords == {("ClinicSync-abc", CLINIKO_API_KEY): FAKE_CLINIKO}
    store.delete(CLINIKO_API_KEY)
    assert store.get(CLINIKO_API_KEY) is None
    store.delete(CLINIKO_API_KEY)  # deleting a missing key is not an error
    assert "fake secure" in store.backend_name
    assert isinstance(store, SecretStore)


def test_unknown_names_and_empty_values_are_rejected() -> None:
    store = KeyringSecretStore("ClinicSync-abc", backend=FakeSecureBackend())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown secret name"):
        store.get("stripe_key")
    with pytest.raises(ValueError):
        store.set(STRIPE_API_KEY, "  ")


def test_locked_keyring_error_is_clear_and_secret_free() -> None:
    store = KeyringSecretStore(
        "ClinicSync-abc",
        backend=FailingBackend(keyring.errors.KeyringLocked("Failed to unlock the collection!")),  # type: ignore[arg-type]
    )
    with pytest.raises(SecretStoreError) as excinfo:
        store.get(STRIPE_API_KEY)
    message = str(excinfo.value)
    assert "stripe_api_key" in message
    assert "locked" in message.lower()
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__


def test_dbus_failure_explains_what_is_missing(linux: None) -> None:
    store = KeyringSecretStore(
        "ClinicSync-abc",
        backend=FailingBackend(DbusError("org.freedesktop.DBus.Error.ServiceUnknown")),  # type: ignore[arg-type]
    )
    with pytest.raises(SecretStoreError, match="D-Bus") as excinfo:
        store.get(CALCOM_API_KEY)
    assert "gnome-keyring" in str(excinfo.value)


def test_unopenable_collection_says_to_unlock_it(linux: None) -> None:
    error = keyring.errors.InitError("Failed to create the collection: Prompt dismissed..")
    store = KeyringSecretStore("ClinicSync-abc", backend=FailingBackend(error))  # type: ignore[arg-type]
    with pytest.raises(SecretStoreError, match="could not be opened or unlocked") as excinfo:
        store.get(CLINIKO_API_KEY)
    assert "Prompt dismissed. The keyring" in str(excinfo.value)


def test_store_error_never_contains_the_value() -> None:
    store = KeyringSecretStore(
        "ClinicSync-abc",
        backend=FailingBackend(RuntimeError("boom"), echo_password=True),  # type: ignore[arg-type]
    )
    with pytest.raises(SecretStoreError) as excinfo:
        store.set(STRIPE_API_KEY, FAKE_STRIPE)
    assert FAKE_STRIPE not in str(excinfo.value)
    assert FAKE_STRIPE not in repr(excinfo.value.args)
    assert excinfo.value.__context__ is None or excinfo.value.__suppress_context__
    assert "[redacted]" in str(excinfo.value)


def test_delete_failure_of_an_existing_key_is_reported() -> None:
    class UndeletableBackend(FakeSecureBackend):
        def delete_password(self, service: str, username: str) -> None:
            raise keyring.errors.PasswordDeleteError("access denied")

    backend = UndeletableBackend()
    store = KeyringSecretStore("ClinicSync-abc", backend=backend)  # type: ignore[arg-type]
    store.set(STRIPE_API_KEY, FAKE_STRIPE)
    with pytest.raises(SecretStoreError, match="Could not delete stripe_api_key") as excinfo:
        store.delete(STRIPE_API_KEY)
    assert FAKE_STRIPE not in str(excinfo.value)


# --- environment and layering --------------------------------------------------------------------------------


def test_env_store_reads_the_documented_variables() -> None:
    env = {
        "CLINICSYNC_CLINIKO_API_KEY": FAKE_CLINIKO,
        "CLINICSYNC_STRIPE_API_KEY": f"  {FAKE_STRIPE}\n",
        "CLINICSYNC_CALCOM_API_KEY": "",
    }
    store = EnvSecretStore(env)
    assert store.get(CLINIKO_API_KEY) == FAKE_CLINIKO
    assert store.get(STRIPE_API_KEY) == FAKE_STRIPE
    assert store.get(CALCOM_API_KEY) is None
    assert store.backend_name == "environment"


def test_env_store_is_read_only() -> None:
    store = EnvSecretStore({"CLINICSYNC_STRIPE_API_KEY": FAKE_STRIPE})
    with pytest.raises(ReadOnlySecretStoreError, match="CLINICSYNC_STRIPE_API_KEY") as excinfo:
        store.set(STRIPE_API_KEY, FAKE_STRIPE)
    assert FAKE_STRIPE not in str(excinfo.value)
    with pytest.raises(ReadOnlySecretStoreError):
        store.delete(STRIPE_API_KEY)


def _keyring_must_not_be_touched() -> SecretStore:
    raise AssertionError("the keyring was created although the environment had the secret")


def test_environment_secrets_never_touch_the_keyring() -> None:
    env = {
        "CLINICSYNC_CLINIKO_API_KEY": FAKE_CLINIKO,
        "CLINICSYNC_STRIPE_API_KEY": FAKE_STRIPE,
        "CLINICSYNC_CALCOM_API_KEY": FAKE_CALCOM,
        "CLINICSYNC_CALCOM_WEBHOOK_SECRET": "sandbox-webhook-secret",
    }
    secrets = LayeredSecrets(EnvSecretStore(env), _keyring_must_not_be_touched)
    assert secrets.get(CLINIKO_API_KEY) == FAKE_CLINIKO
    assert secrets.get(STRIPE_API_KEY) == FAKE_STRIPE
    assert secrets.get(CALCOM_API_KEY) == FAKE_CALCOM
    assert {secrets.source(name) for name in SECRET_NAMES} == {"environment"}
    assert "environment" in secrets.backend_name


def test_open_secrets_with_all_keys_in_env_works_without_any_keyring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_keyring() -> object:
        raise AssertionError("keyring.get_keyring() must not be called")

    monkeypatch.setattr(keyring, "get_keyring", no_keyring)
    env = {
        "CLINICSYNC_CLINIKO_API_KEY": FAKE_CLINIKO,
        "CLINICSYNC_STRIPE_API_KEY": FAKE_STRIPE,
        "CLINICSYNC_CALCOM_API_KEY": FAKE_CALCOM,
        "CLINICSYNC_CALCOM_WEBHOOK_SECRET": "sandbox-webhook-secret",
    }
    secrets = open_secrets(AppPaths.under(tmp_path), env)
    expected = [FAKE_CLINIKO, FAKE_STRIPE, FAKE_CALCOM, "sandbox-webhook-secret"]
    assert [secrets.get(name) for name in SECRET_NAMES] == expected


def test_keyring_is_created_lazily_once_when_env_lacks_a_secret() -> None:
    calls: list[int] = []
    memory = MemorySecretStore({STRIPE_API_KEY: FAKE_STRIPE})

    def factory() -> SecretStore:
        calls.append(1)
        return memory

    secrets = LayeredSecrets(EnvSecretStore({"CLINICSYNC_CLINIKO_API_KEY": FAKE_CLINIKO}), factory)
    assert secrets.get(CLINIKO_API_KEY) == FAKE_CLINIKO
    assert calls == []
    assert secrets.get(STRIPE_API_KEY) == FAKE_STRIPE
    assert secrets.source(STRIPE_API_KEY) == "keyring"
    assert secrets.source(CALCOM_API_KEY) is None
    assert secrets.get(CALCOM_API_KEY) is None
    assert calls == [1]


def test_environment_wins_over_keyring_and_writes_go_to_the_keyring() -> None:
    memory = MemorySecretStore({STRIPE_API_KEY: "sk_test_sandbox_fake_in_keyring"})
    secrets = LayeredSecrets(EnvSecretStore({"CLINICSYNC_STRIPE_API_KEY": FAKE_STRIPE}), lambda: memory)
    assert secrets.get(STRIPE_API_KEY) == FAKE_STRIPE
    secrets.set(CALCOM_API_KEY, FAKE_CALCOM)
    assert memory.get(CALCOM_API_KEY) == FAKE_CALCOM
    secrets.delete(CALCOM_API_KEY)
    assert memory.get(CALCOM_API_KEY) is None


def test_insecure_keyring_only_matters_for_secrets_missing_from_env() -> None:
    def refuse() -> SecretStore:
        return KeyringSecretStore("ClinicSync-test", backend=keyring.backends.null.Keyring())

    secrets = LayeredSecrets(EnvSecretStore({"CLINICSYNC_STRIPE_API_KEY": FAKE_STRIPE}), refuse)
    assert secrets.get(STRIPE_API_KEY) == FAKE_STRIPE
    with pytest.raises(InsecureKeyringError):
        secrets.get(CLINIKO_API_KEY)


def test_on_secret_sees_every_value_in_use() -> None:
    seen: list[str] = []
    secrets = LayeredSecrets(
        EnvSecretStore({"CLINICSYNC_STRIPE_API_KEY": FAKE_STRIPE}),
        lambda: MemorySecretStore({CLINIKO_API_KEY: FAKE_CLINIKO}),
        on_secret=seen.append,
    )
    secrets.get(STRIPE_API_KEY)
    secrets.get(CLINIKO_API_KEY)
    secrets.get(CALCOM_API_KEY)
    secrets.set(CALCOM_API_KEY, FAKE_CALCOM)
    assert seen == [FAKE_STRIPE, FAKE_CLINIKO, FAKE_CALCOM]


def test_service_name_is_tied_to_the_profile(tmp_path: Path) -> None:
    assert service_for(AppPaths.resolve({})) == "ClinicSync"
    sandbox = AppPaths.resolve({"CLINICSYNC_HOME": str(tmp_path)})
    assert service_for(sandbox) == f"ClinicSync-{sandbox.profile_id}"
    assert service_for(sandbox) != service_for(AppPaths.resolve({"CLINICSYNC_HOME": str(tmp_path / "other")}))


def test_memory_store() -> None:
    store = MemorySecretStore()
    store.set(STRIPE_API_KEY, FAKE_STRIPE)
    assert store.get(STRIPE_API_KEY) == FAKE_STRIPE
    store.delete(STRIPE_API_KEY)
    store.delete(STRIPE_API_KEY)
    assert store.get(STRIPE_API_KEY) is None
    assert isinstance(store, SecretStore)
