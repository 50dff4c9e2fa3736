"""API keys: kept only in the OS keyring, or for a headless run in the process environment.

Never in SQLite, settings, logs or exception messages. The keyring wrapper refuses backends that would store
keys in plaintext (or not at all) instead of silently falling back to them, and every error it raises names
the secret and the backend but never contains the secret's value.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import keyring
import keyring.backends.chainer
import keyring.backends.fail
import keyring.backends.null
import keyring.errors

from clinicsync.paths import DEFAULT_PROFILE_ID, AppPaths

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

CLINIKO_API_KEY = "cliniko_api_key"
STRIPE_API_KEY = "stripe_api_key"
CALCOM_API_KEY = "calcom_api_key"
# What signs Cal.com's webhook deliveries (clinicsync.sync.webhook): ClinicSync makes it, the manager pastes it
# into Cal.com. A secret like the keys, so it lives where they do and is redacted from logs the same way.
CALCOM_WEBHOOK_SECRET = "calcom_webhook_secret"
SECRET_NAMES: tuple[str, ...] = (CLINIKO_API_KEY, STRIPE_API_KEY, CALCOM_API_KEY, CALCOM_WEBHOOK_SECRET)
SOURCE_KEYS: tuple[str, ...] = (CLINIKO_API_KEY, CALCOM_API_KEY)
# What a sync (and the scheduler's host, which runs the webhook receiver) reads: every secret (a source without
# a key is simply not connected; no webhook secret, no receiver).
SYNC_SECRETS = SECRET_NAMES


def environment_only(secrets: Any) -> Callable[[str], str | None] | None:
    """How a headless run reads its keys: with Stripe's key in the environment, the others are looked for there
    only (a server without a keyring must not fail over a key it never meant to set). None otherwise."""
    from_environment = getattr(secrets, "from_environment", None)
    return from_environment if from_environment is not None and from_environment(STRIPE_API_KEY) else None


def missing_for_sync(found: Mapping[str, str]) -> list[str]:
    """The keys a sync still lacks: Stripe's, and one source's at least (Cliniko's is named when neither is set,
    as most clinics use Cliniko)."""
    missing = [] if found.get(STRIPE_API_KEY) else [STRIPE_API_KEY]
    if not any(found.get(name) for name in SOURCE_KEYS):
        missing.insert(0, CLINIKO_API_KEY)
    return missing


# Headless runs (servers, CI, the sandbox) may supply keys through these instead of a keyring.
ENV_VARS: Mapping[str, str] = {
    CLINIKO_API_KEY: "CLINICSYNC_CLINIKO_API_KEY",
    STRIPE_API_KEY: "CLINICSYNC_STRIPE_API_KEY",
    CALCOM_API_KEY: "CLINICSYNC_CALCOM_API_KEY",
    CALCOM_WEBHOOK_SECRET: "CLINICSYNC_CALCOM_WEBHOOK_SECRET",
}

DEFAULT_SERVICE = "ClinicSync"

SecretSource = Literal["environment", "keyring"]


class SecretStoreError(Exception):
    """A secret could not be read, stored or deleted. The message never contains a secret value."""


class InsecureKeyringError(SecretStoreError):
    """The only keyring available would store keys in plaintext, or not at all."""


class ReadOnlySecretStoreError(SecretStoreError):
    """The store (the environment) cannot be written to."""


@runtime_checkable
class SecretStore(Protocol):
    @property
    def backend_name(self) -> str: ...

    def get(self, name: str) -> str | None: ...

    def set(self, name: str, value: str) -> None: ...

    def delete(self, name: str) -> None: ...


def service_for(paths: AppPaths) -> str:
    """Keyring service name of a profile, so tests and the sandbox never touch a real clinic's keys."""
    if paths.profile_id == DEFAULT_PROFILE_ID:
        return DEFAULT_SERVICE
    return f"{DEFAULT_SERVICE}-{paths.profile_id}"


def _check_name(name: str) -> None:
    # A typo would otherwise read as "no key configured" and store keys under names nothing reads back.
    if name not in SECRET_NAMES:
        raise ValueError(f"unknown secret name {name!r}; expected one of {', '.join(SECRET_NAMES)}")


def _check_value(value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a secret value must be a non-empty string")


class MemorySecretStore:
    """In-process store for tests and demo mode."""

    def __init__(self, initial: Mapping[str, str] | None = None) -> None:
        self._values: dict[str, str] = {}
        for name, value in (initial or {}).items():
            self.set(name, value)

    @property
    def backend_name(self) -> str:
        return "memory"

    def get(self, name: str) -> str | None:
        _check_name(name)
        return self._values.get(name)

    def set(self, name: str, value: str) -> None:
        _check_name(name)
        _check_value(value)
        self._values[name] = value

    def delete(self, name: str) -> None:
        _check_name(name)
        self._values.pop(name, None)


class EnvSecretStore:
    """Read-only secrets from ``CLINICSYNC_*_API_KEY`` environment variables."""

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        self._env = env

    @property
    def backend_name(self) -> str:
        return "environment"

    def get(self, name: str) -> str | None:
        _check_name(name)
        # API keys never contain whitespace; a stray newline from `export X=$(cat keyfile)` would break auth.
        value = self._env.get(ENV_VARS[name], "").strip()
        return value or None

    def set(self, name: str, value: str) -> None:
        raise self._read_only(name)

    def delete(self, name: str) -> None:
        raise self._read_only(name)

    @staticmethod
    def _read_only(name: str) -> ReadOnlySecretStoreError:
        _check_name(name)
        return ReadOnlySecretStoreError(
            f"{name} comes from the environment variable {ENV_VARS[name]}, which ClinicSync cannot change; "
            "edit the variable instead, or unset it to keep the key in the OS keyring"
        )


# --- the OS keyring ---------------------------------------------------------------------------------------


def install_hint(platform: str | None = None) -> str:
    """What a user on ``platform`` (default: this one) should do to get a secure keyring."""
    platform = platform or sys.platform
    headless = (
        " For a headless run you can instead set "
        + ", ".join(ENV_VARS.values())
        + " in the environment of the ClinicSync process."
    )
    if platform.startswith("linux") or platform.startswith("freebsd"):
        return (
            "On Linux, install and unlock a Secret Service keyring such as GNOME Keyring "
            "(`apt install gnome-keyring`) or KWallet, and run ClinicSync inside a desktop session "
            "(it needs the D-Bus session bus)." + headless
        )
    if platform == "darwin":
        return (
            "On macOS the Keychain is built in: make sure your login keychain is unlocked and that no other "
            "keyring backend is configured (PYTHON_KEYRING_BACKEND or keyringrc.cfg)." + headless
        )
    if platform.startswith("win"):
        return (
            "On Windows the Credential Locker is built in: make sure no other keyring backend is configured "
            "(PYTHON_KEYRING_BACKEND or keyringrc.cfg)." + headless
        )
    return "Install a secure keyring backend supported by the Python `keyring` package." + headless


def _describe(backend: object) -> str:
    cls = type(backend)
    return f"{cls.__module__}.{cls.__qualname__}"


def _insecure_reason(backend: object) -> str | None:
    """Why ``backend`` must not hold API keys, or None if it is acceptable. Chainers are handled by the caller."""
    if isinstance(backend, keyring.backends.fail.Keyring):
        return "no keyring backend is available"
    if isinstance(backend, keyring.backends.null.Keyring):
        return "the null backend silently discards keys"
    if type(backend).__module__.startswith("keyrings.alt"):
        return "keyrings.alt backends keep keys in a file (plaintext or weakly encrypted)"
    try:
        priority = float(backend.priority)  # type: ignore[attr-defined]
    except Exception as exc:  # keyring backends signal "not usable here" by raising from priority
        return f"the backend is not usable here ({type(exc).__name__}: {exc})"
    if priority < 1:
        return f"the backend's priority is {priority:g}; keyring marks backends below 1 as not recommended"
    return None


def select_secure_backend(backend: KeyringBackend) -> KeyringBackend:
    """Return the backend to use, or raise :class:`InsecureKeyringError` with what to install.

    For a chainer, use its best secure member directly: a chainer also reads from and falls back to its
    lower-priority members, which may be plaintext ones, and "where did this key come from" must have one answer.
    """
    if isinstance(backend, keyring.backends.chainer.ChainerBackend):
        members = list(backend.backends)
        for member in members:  # already sorted by priority, highest first
            if _insecure_reason(member) is None:
                return member
        found = ", ".join(_describe(m) for m in members) or "none"
        raise InsecureKeyringError(
            f"ClinicSync will not store API keys: the keyring chainer has no secure backend (found: {found}). "
            + install_hint()
        )
    reason = _insecure_reason(backend)
    if reason is not None:
        raise InsecureKeyringError(
            f"ClinicSync will not store API keys with the keyring backend {_describe(backend)}: {reason}. "
            + install_hint()
        )
    return backend


class KeyringSecretStore:
    """Secrets in the OS keyring under one service name (see :func:`service_for`).

    ``backend`` is for tests; by default the keyring package's configured/detected backend is used, and it
    is checked before anything is read or written.
    """

    def __init__(self, service: str, *, backend: KeyringBackend | None = None) -> None:
        if not service:
            raise ValueError("a keyring service name is required")
        self._service = service
        try:
            detected = backend if backend is not None else keyring.get_keyring()
        except Exception as exc:  # a broken keyringrc.cfg or plugin; no secret can be involved yet
            raise SecretStoreError(
                f"Could not load the OS keyring ({type(exc).__name__}: {exc}). " + install_hint()
            ) from None
        self._backend = select_secure_backend(detected)

    @property
    def service(self) -> str:
        return self._service

    @property
    def backend_name(self) -> str:
        return f"keyring ({getattr(self._backend, 'name', None) or _describe(self._backend)})"

    def get(self, name: str) -> str | None:
        _check_name(name)
        try:
            return self._backend.get_password(self._service, name)
        except Exception as exc:
            raise self._error("read", name, exc) from None

    def set(self, name: str, value: str) -> None:
        _check_name(name)
        _check_value(value)
        try:
            self._backend.set_password(self._service, name, value)
        except Exception as exc:
            raise self._error("store", name, exc, value) from None

    def delete(self, name: str) -> None:
        """Remove the secret; deleting one that is not there is not an error."""
        _check_name(name)
        try:
            self._backend.delete_password(self._service, name)
        except keyring.errors.PasswordDeleteError as exc:
            if self.get(name) is not None:  # it is there and could not be removed: a real failure
                raise self._error("delete", name, exc) from None
        except Exception as exc:
            raise self._error("delete", name, exc) from None

    def _error(self, action: str, name: str, exc: BaseException, value: str | None = None) -> SecretStoreError:
        # `from None` at the raise sites: the original exception (and anything it holds) is not chained, and
        # its message is scrubbed of the value in case a backend echoes what it was given.
        detail = str(exc).strip().rstrip(".")
        if value:
            detail = detail.replace(value, "[redacted]")
        return SecretStoreError(
            f"Could not {action} {name} in the OS keyring ({self.backend_name}, service {self._service!r}): "
            f"{type(exc).__name__}: {detail or 'no details'}.{_hint_for(exc, detail)}"
        )


def _hint_for(exc: BaseException, detail: str) -> str:
    if isinstance(exc, keyring.errors.KeyringLocked):
        return " The keyring is locked: unlock it (e.g. log in to the desktop session) and try again."
    if isinstance(exc, keyring.errors.InitError):
        # secretstorage reports a dismissed unlock prompt or a missing default collection this way.
        return (
            " The keyring's default collection could not be opened or unlocked: unlock it (e.g. log in to the "
            "desktop session) and try again. " + install_hint()
        )
    if _looks_like_dbus_failure(exc, detail):
        return " The D-Bus session bus or the Secret Service is not reachable. " + install_hint()
    return ""


def _looks_like_dbus_failure(exc: BaseException, detail: str) -> bool:
    # secretstorage/jeepney raise their own types (not keyring's) when the session bus or daemon is missing.
    module = type(exc).__module__
    return (
        module.startswith(("secretstorage", "jeepney", "dbus")) or "d-bus" in detail.lower() or "dbus" in detail.lower()
    )


# --- environment first, then the keyring -----------------------------------------------------------------


class LayeredSecrets:
    """Environment variables win; the keyring is only created (lazily) when the environment lacks a secret.

    So a headless run with every key in its environment works on a machine with no keyring at all.
    ``on_secret`` is called with every value read or stored, e.g. to register it with the log redactor.
    """

    def __init__(
        self,
        env_store: SecretStore,
        keyring_factory: Callable[[], SecretStore],
        *,
        on_secret: Callable[[str], None] | None = None,
    ) -> None:
        self._env = env_store
        self._factory = keyring_factory
        self._on_secret = on_secret
        self._keyring: SecretStore | None = None
        self._lock = threading.Lock()

    @property
    def backend_name(self) -> str:
        # Describes the layering without creating the keyring just to name it.
        inner = self._keyring.backend_name if self._keyring is not None else "keyring"
        return f"{self._env.backend_name}, then {inner}"

    def keyring(self) -> SecretStore:
        """The keyring store, created on first use. A failed creation is retried on the next call."""
        with self._lock:
            if self._keyring is None:
                self._keyring = self._factory()
            return self._keyring

    def get(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None:
            value = self.keyring().get(name)
        self._notify(value)
        return value

    def from_environment(self, name: str) -> str | None:
        """The environment's value only: the keyring is not opened."""
        return self._env.get(name)

    def source(self, name: str) -> SecretSource | None:
        if self._env.get(name) is not None:
            return "environment"
        if self.keyring().get(name) is not None:
            return "keyring"
        return None

    def set(self, name: str, value: str) -> None:
        """Store in the keyring (an environment value for the same name still wins on :meth:`get`)."""
        self._notify(value)
        self.keyring().set(name, value)

    def delete(self, name: str) -> None:
        self.keyring().delete(name)

    def _notify(self, value: str | None) -> None:
        if value and self._on_secret is not None:
            self._on_secret(value)


def open_secrets(
    paths: AppPaths,
    env: Mapping[str, str] = os.environ,
    *,
    on_secret: Callable[[str], None] | None = None,
) -> LayeredSecrets:
    """The app's secrets for a profile: environment first, then that profile's keyring service."""
    service = service_for(paths)
    return LayeredSecrets(EnvSecretStore(env), lambda: KeyringSecretStore(service), on_secret=on_secret)
