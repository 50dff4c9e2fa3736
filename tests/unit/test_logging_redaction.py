from __future__ import annotations

import base64
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from clinicsync.logging_setup import (
    REDACTED,
    RedactingFilter,
    Redactor,
    default_redactor,
    redact,
    register_secret,
    setup_logging,
    teardown_logging,
)
from clinicsync.paths import AppPaths

# Obvious fakes in the real keys' shapes.
FAKE_STRIPE = "sk_test_sandbox_fake"
FAKE_STRIPE_LIVE = "rk_live_not_a_real_key_0000"
FAKE_CALCOM = "cal_live_fakefakefake0000"
FAKE_CLINIKO = "FakeClinikoKey0000NotReal0000Fake-au1"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    teardown_logging()
    root.setLevel(level)
    default_redactor().clear_registered()


@pytest.fixture
def paths(tmp_path: Path) -> AppPaths:
    return AppPaths.resolve({"CLINICSYNC_HOME": str(tmp_path / "profile")})


def our_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if any(isinstance(f, RedactingFilter) for f in h.filters)]


# --- the redactor on text ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [FAKE_STRIPE, FAKE_STRIPE_LIVE, "pk_test_fake123", "whsec_fake123", FAKE_CALCOM])
@pytest.mark.parametrize(
    "template",
    [
        "using key {key} now",
        "key={key}",
        "Authorization: Bearer {key}",
        "{{'Authorization': 'Bearer {key}'}}",
        "sent Bearer {key} to api",
    ],
)
def test_key_shaped_values_are_redacted_without_registration(key: str, template: str) -> None:
    text = template.format(key=key)
    out = Redactor().redact(text)
    assert key not in out
    assert REDACTED in out


@pytest.mark.parametrize("key", [FAKE_STRIPE, FAKE_CALCOM, FAKE_CLINIKO, FAKE_CLINIKO.removesuffix("-au1")])
@pytest.mark.parametrize(
    "encoded",
    [
        lambda k: b64(k + ":"),
        lambda k: b64(k + ":").rstrip("="),
        lambda k: b64(k),
        lambda k: b64(k).rstrip("="),
    ],
    ids=["b64-colon", "b64-colon-unpadded", "b64", "b64-unpadded"],
)
def test_basic_auth_forms_are_redacted_without_registration(key: str, encoded) -> None:  # type: ignore[no-untyped-def]
    token = encoded(key)
    for text in (f"Authorization: Basic {token}", f"creds {token} end", f"Basic {token}"):
        out = Redactor().redact(text)
        assert token not in out, text
        assert token.rstrip("=") not in out, text
        assert REDACTED in out


def test_cliniko_key_is_redacted_with_and_without_shard_suffix() -> None:
    redactor = Redactor()
    assert redactor.redact(f"key {FAKE_CLINIKO} end") == f"key {REDACTED} end"
    bare = FAKE_CLINIKO.removesuffix("-au1")
    assert redactor.redact(f"key {bare}") == f"key {REDACTED}"


def test_registered_secret_of_any_shape_is_redacted_in_every_form() -> None:
    # All lowercase letters: nothing about its shape says "key", only registration can catch it.
    secret = "plainlowercasesecretvalue"
    odd = "fake+secret/value=with spaces"
    redactor = Redactor()
    assert redactor.redact(secret) == secret
    redactor.register_secret(secret)
    redactor.register_secret(odd)
    forms = [
        secret,
        b64(secret + ":"),
        b64(secret + ":").rstrip("="),
        b64(secret),
        b64(secret).rstrip("="),
        odd,
        quote(odd, safe=""),
        b64(odd + ":"),
    ]
    for form in forms:
        out = redactor.redact(f"before {form} after")
        assert out == f"before {REDACTED} after", form


def test_short_registered_values_are_ignored() -> None:
    redactor = Redactor()
    redactor.register_secret("abc")
    redactor.register_secret("")
    redactor.register_secret(None)
    assert redactor.redact("abc is a word") == "abc is a word"


@pytest.mark.parametrize(
    "text",
    [
        "Synchronised 120 patients and 3 invoices in 4.2s",
        "Basic information about the clinic; Bearer tokens are described in the docs",
        "customer cus_ABC123 account acct_1032D82eZvKYlo2C payment pi_3MtwBwLkdIwHu7ix28a3tqPa",
        "price_1MoBy5LkdIwHu7ixZhnattbh ch_3MmlLrLkdIwHu7ix0snN0B15 req_fakeRequest123",
        "Cliniko patient 836447129235883061 invoice 1234567890123456789",
        "uuid 123e4567-e89b-12d3-a456-426614174000 sha1 3f786850e387550fdab836ed7e6dc881de23001b",
        'File "/work/main/.venv/lib/python3.11/site-packages/keyring/backends/SecretService.py", line 10',
        "GET https://api.au1.cliniko.com/v1/patients?page=2&per_page=100&sort=updated_at:asc",
        "source of stripe_api_key: keyring",
        "ClinicSync.sync.runner WARNING retrying in 2.5s (Retry-After)",
    ],
)
def test_ordinary_text_is_untouched(text: str) -> None:
    assert Redactor().redact(text) == text


def test_module_level_redact_uses_registered_secrets() -> None:
    register_secret("anotherplainsecretvalue")
    assert redact("x anotherplainsecretvalue y") == f"x {REDACTED} y"


# --- the logging filter ---------------------------------------------------------------------------------


def _raise_with_key() -> None:
    try:
        raise ConnectionError(f"upstream rejected Bearer {FAKE_CALCOM}")
    except ConnectionError as exc:
        raise RuntimeError(f"auth failed for {FAKE_STRIPE} / {b64(FAKE_CLINIKO + ':')}") from exc


def test_filter_redacts_args_exception_and_stack_info() -> None:
    logger = logging.getLogger("clinicsync.test.filter")
    try:
        _raise_with_key()
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logger.makeRecord(
        logger.name,
        logging.ERROR,
        __file__,
        1,
        "request with %s failed (%r)",
        (FAKE_STRIPE, {"Authorization": f"Basic {b64(FAKE_CLINIKO + ':')}"}),
        exc_info,
        sinfo=f'Stack (most recent call last):\n  File "x.py", line 1\n    call("{FAKE_CALCOM}")',
    )
    assert RedactingFilter(Redactor()).filter(record) is True
    text = logging.Formatter().format(record)
    for secret in (FAKE_STRIPE, FAKE_CALCOM, FAKE_CLINIKO, b64(FAKE_CLINIKO + ":")):
        assert secret not in text
    assert "Traceback (most recent call last)" in text
    assert "ConnectionError" in text  # the chained cause is kept, redacted
    assert record.exc_info is None and record.args is None  # nothing left to re-render unredacted


def test_filter_survives_bad_format_args() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d items %s", (FAKE_STRIPE,), None)
    RedactingFilter(Redactor()).filter(record)
    assert FAKE_STRIPE not in record.getMessage()


# --- setup_logging: file, console, idempotence, rotation -------------------------------------------------


def test_log_file_is_redacted_including_tracebacks(paths: AppPaths) -> None:
    setup_logging(paths)
    register_secret("plainlowercasesecretvalue")
    log = logging.getLogger("clinicsync.test.file")
    log.info("stripe %s cliniko %s calcom %s", FAKE_STRIPE, FAKE_CLINIKO, FAKE_CALCOM)
    log.info("header %s", {"Authorization": f"Basic {b64(FAKE_CLINIKO + ':').rstrip('=')}"})
    log.info("registered plainlowercasesecretvalue")
    try:
        _raise_with_key()
    except RuntimeError:
        log.exception("sync failed")
    text = paths.log_file.read_text(encoding="utf-8")
    for secret in (FAKE_STRIPE, FAKE_CLINIKO, FAKE_CALCOM, b64(FAKE_CLINIKO + ":").rstrip("="), "plainlowercase"):
        assert secret not in text
    assert text.count(REDACTED) >= 7
    assert "Traceback (most recent call last)" in text
    assert "sync failed" in text


def test_console_output_is_redacted(paths: AppPaths, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(paths, console=True)
    logging.getLogger("clinicsync.test.console").warning("key %s", FAKE_STRIPE)
    err = capsys.readouterr().err
    assert FAKE_STRIPE not in err
    assert REDACTED in err


def test_setup_is_idempotent(paths: AppPaths, tmp_path: Path) -> None:
    root = logging.getLogger()
    before = len(root.handlers)
    setup_logging(paths)
    setup_logging(paths)
    assert len(our_handlers()) == 1
    setup_logging(paths, console=True)
    setup_logging(paths, console=True)
    assert len(our_handlers()) == 2
    setup_logging(paths, console=False)
    assert len(our_handlers()) == 1
    other = AppPaths.resolve({"CLINICSYNC_HOME": str(tmp_path / "other")})
    setup_logging(other)
    assert len(our_handlers()) == 1
    logging.getLogger("clinicsync.test").warning("to the new file")
    assert "to the new file" in other.log_file.read_text(encoding="utf-8")
    teardown_logging()
    assert len(root.handlers) == before
    assert our_handlers() == []


def test_setup_sets_level(paths: AppPaths) -> None:
    setup_logging(paths, level=logging.DEBUG)
    assert logging.getLogger().level == logging.DEBUG
    setup_logging(paths, level=logging.WARNING)
    assert logging.getLogger().level == logging.WARNING


def test_rotation_happens_and_rotated_files_are_redacted(paths: AppPaths) -> None:
    setup_logging(paths, max_bytes=2_000, backup_count=3)
    log = logging.getLogger("clinicsync.test.rotation")
    for i in range(200):
        log.info("line %d with Authorization: Bearer %s and %s", i, FAKE_STRIPE, FAKE_CLINIKO)
    rotated = sorted(paths.log_dir.glob("clinicsync.log.*"))
    assert [p.name for p in rotated] == ["clinicsync.log.1", "clinicsync.log.2", "clinicsync.log.3"]
    for file in [paths.log_file, *rotated]:
        assert file.stat().st_size <= 2_000
        text = file.read_text(encoding="utf-8")
        assert REDACTED in text
        assert FAKE_STRIPE not in text
        assert FAKE_CLINIKO not in text


def test_a_registered_cliniko_key_is_redacted_without_its_shard_suffix_in_every_form() -> None:
    """Cliniko accepts its keys with or without the `-au1` suffix, so the bare key is a credential too."""
    key = "lowercaseonlyclinikokeyvalue-au1"  # not key-shaped: only registration can catch it
    bare = key.removesuffix("-au1")
    redactor = Redactor()
    redactor.register_secret(key)
    for form in (bare, b64(bare + ":"), b64(bare + ":").rstrip("="), quote(bare, safe="")):
        assert redactor.redact(f"key={form}&x=1") == f"key={REDACTED}&x=1", form


# --- patient data: library loggers stay quiet, query values and emails are scrubbed --------------------------


def test_http_and_sql_libraries_never_log_below_warning_whatever_the_apps_level(paths: AppPaths) -> None:
    setup_logging(paths, level=logging.DEBUG)
    for name in ("httpx", "httpcore.http11", "stripe", "peewee"):
        logging.getLogger(name).info("HTTP Request: GET https://api.stripe.com/v1/customers?email=ann%40example.org")
    logging.getLogger("clinicsync.test").debug("a line of our own")
    text = paths.log_file.read_text(encoding="utf-8")
    assert "ann%40example.org" not in text and "a line of our own" in text


def test_a_log_line_loses_query_values_and_email_addresses(paths: AppPaths) -> None:
    setup_logging(paths)
    log = logging.getLogger("clinicsync.test.privacy")
    log.warning("GET https://api.stripe.com/v1/customers?email=ann%40example.org&limit=100 failed")
    log.warning("GET /v1/patients?q[]=email:=bob@example.com failed")
    log.warning("Stripe refused: Invalid email address: carol.smith+spam@example.com.au")
    text = paths.log_file.read_text(encoding="utf-8")
    for value in ("ann%40example.org", "bob@example.com", "carol.smith+spam@example.com.au"):
        assert value not in text
    assert "/v1/customers?email=[redacted]&limit=[redacted]" in text and "Invalid email address: [email]" in text
