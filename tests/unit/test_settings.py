"""Settings: every SettingSpec's default, parsing, limits and checks; environment over stored over default."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from peewee import SqliteDatabase

from clinicsync.store.db import open_database
from clinicsync.store.models import Setting
from clinicsync.store.settings import SPECS, SPECS_BY_KEY, SettingError, Settings, SettingSpec, parse_value, spec_for

BASE_URL_KEYS = ("cliniko.base_url", "stripe.base_url", "calcom.base_url")

# What each setting is expected to be out of the box (a change to a default must be deliberate).
EXPECTED_DEFAULTS = {
    "contact_email": "",
    "cliniko.shard": "au1",
    "cliniko.base_url": "",
    "cliniko.requests_per_minute": 150,
    "calcom.requests_per_minute": 100,
    "identity.primary_source": "cliniko",
    "stripe.base_url": "",
    "stripe.requests_per_second": 0.0,
    "stripe.workers": 12,
    "stripe.timeout_seconds": 30.0,
    "calcom.base_url": "",
    "calcom.webhook.enabled": False,
    "calcom.webhook.address": "127.0.0.1",
    "calcom.webhook.port": 8788,
    "sync.email_match": "auto_link",
    "sync.cursor_overlap_seconds": 120,
    "sync.paused": False,
    "currency": "",
    "cliniko.products.price_basis": "including_tax",
    "streams.cliniko.products.enabled": True,
    "streams.cliniko.invoices.enabled": True,
    "cliniko.invoices.match_days_before": 7,
    "cliniko.invoices.match_days_after": 30,
    "cliniko.invoices.mirror": False,  # an optional stream, off unless a person turns it on
    "retry.max_attempts": 6,
    "retry.base_delay_seconds": 0.5,
    "retry.max_delay_seconds": 60.0,
    "stripe.search_settle_seconds": 90.0,
    "schedule.interval_seconds": 60,
    "schedule.cliniko.patients.enabled": True,
    "schedule.cliniko.products.enabled": True,
    "schedule.cliniko.patients.interval_seconds": 0,
    "schedule.cliniko.products.interval_seconds": 0,
    "schedule.cliniko.invoices.enabled": True,
    "schedule.cliniko.invoices.interval_seconds": 0,
    "schedule.cliniko.invoice_mirror.enabled": True,
    "schedule.cliniko.invoice_mirror.interval_seconds": 0,
    "schedule.calcom.event_types.enabled": True,
    "schedule.calcom.bookings.enabled": True,
    "schedule.calcom.event_types.interval_seconds": 0,
    "schedule.calcom.bookings.interval_seconds": 0,
    "schedule.calcom.booking_payments.enabled": True,
    "schedule.calcom.booking_payments.interval_seconds": 0,
    "schedule.calcom.reference.enabled": True,
    "schedule.calcom.reference.interval_seconds": 0,
    "schedule.reconcile.frequency": "daily",
    "schedule.reconcile.time": "02:00",
    "schedule.reconcile.day": "monday",
    "alerts.outage_minutes": 30,
    "alerts.notify": True,
}


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SqliteDatabase]:
    database = open_database(tmp_path / "db.sqlite3")
    yield database
    database.close()


def spec_ids(specs: tuple[SettingSpec, ...]) -> list[str]:
    return [spec.key for spec in specs]


def stored(key: str) -> object:
    row = Setting.get_or_none(Setting.key == key)
    return None if row is None else row.value


# --- defaults --------------------------------------------------------------------------------------------


def test_every_setting_has_the_expected_default_and_type() -> None:
    assert {spec.key for spec in SPECS} == set(EXPECTED_DEFAULTS)
    assert len(SPECS) == len(SPECS_BY_KEY), "a key is declared twice"
    for spec in SPECS:
        assert spec.default == EXPECTED_DEFAULTS[spec.key], spec.key
        assert type(spec.default) is spec.type, f"{spec.key}: default {spec.default!r} is not a {spec.type.__name__}"
        assert spec.label, f"{spec.key} has no label for the settings screen"


@pytest.mark.parametrize("spec", SPECS, ids=spec_ids(SPECS))
def test_each_default_passes_its_own_validation(spec: SettingSpec) -> None:
    assert parse_value(spec, spec.default) == spec.default


@pytest.mark.parametrize("spec", SPECS, ids=spec_ids(SPECS))
def test_each_setting_defaults_when_nothing_is_stored_or_set(db: SqliteDatabase, spec: SettingSpec) -> None:
    item = Settings({}).lookup(spec.key)
    assert (item.key, item.value, item.source) == (spec.key, spec.default, "default")


def test_env_names_follow_the_prefix_rule() -> None:
    assert spec_for("sync.email_match").env_name == "CLINICSYNC_SYNC_EMAIL_MATCH"
    assert spec_for("cliniko.requests_per_minute").env_name == "CLINICSYNC_CLINIKO_REQUESTS_PER_MINUTE"
    assert spec_for("contact_email").env_name == "CLINICSYNC_CONTACT_EMAIL"
    names = [spec.env_name for spec in SPECS]
    assert len(set(names)) == len(names)
    # A setting must never shadow the variables that carry secrets or the profile folder.
    assert not {"CLINICSYNC_CLINIKO_API_KEY", "CLINICSYNC_STRIPE_API_KEY", "CLINICSYNC_HOME"} & set(names)


def test_all_lists_every_setting_in_declaration_order(db: SqliteDatabase) -> None:
    assert [item.key for item in Settings({}).all()] == [spec.key for spec in SPECS]


# --- parsing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "on", " On ", True])
def test_bool_true_spellings(raw: object) -> None:
    assert parse_value(spec_for("sync.paused"), raw) is True


@pytest.mark.parametrize("raw", ["0", "false", "False", "no", "off", " OFF", False])
def test_bool_false_spellings(raw: object) -> None:
    assert parse_value(spec_for("sync.paused"), raw) is False


@pytest.mark.parametrize("raw", ["maybe", "", "2", "y", "enabled"])
def test_bool_rejects_anything_else(raw: str) -> None:
    with pytest.raises(SettingError, match=re.escape("sync.paused must be true or false")):
        parse_value(spec_for("sync.paused"), raw)


def test_int_parsing() -> None:
    spec = spec_for("stripe.workers")
    assert parse_value(spec, "8") == 8 and isinstance(parse_value(spec, "8"), int)
    assert parse_value(spec, " 3 ") == 3
    assert parse_value(spec, 5) == 5
    for raw in ("4.5", "four", "", "0x10"):
        with pytest.raises(SettingError, match=re.escape("stripe.workers must be a whole number")):
            parse_value(spec, raw)


def test_float_parsing() -> None:
    spec = spec_for("retry.base_delay_seconds")
    assert parse_value(spec, "0.25") == 0.25
    assert parse_value(spec, "2") == 2.0 and isinstance(parse_value(spec, "2"), float)
    assert parse_value(spec, " 1e-3 ") == 0.001
    assert parse_value(spec, 3) == 3.0
    for raw in ("fast", "", "1,5"):
        with pytest.raises(SettingError, match=re.escape("retry.base_delay_seconds must be a number")):
            parse_value(spec, raw)


def test_choices() -> None:
    spec = spec_for("sync.email_match")
    assert parse_value(spec, "review") == "review"
    assert parse_value(spec, " auto_link ") == "auto_link"
    with pytest.raises(SettingError) as raised:
        parse_value(spec, "maybe")
    assert str(raised.value) == "sync.email_match must be one of auto_link, review, not 'maybe'"
    with pytest.raises(SettingError):
        parse_value(spec, "Review")  # choices are exact


LIMITED = tuple(spec for spec in SPECS if spec.minimum is not None or spec.maximum is not None)


@pytest.mark.parametrize("spec", LIMITED, ids=spec_ids(LIMITED))
def test_minimum_and_maximum_are_inclusive_and_enforced(spec: SettingSpec) -> None:
    step = 1 if spec.type is int else 0.001
    if spec.minimum is not None:
        low = spec.type(spec.minimum)
        assert parse_value(spec, str(low)) == low
        with pytest.raises(SettingError, match=re.escape(f"{spec.key} must be at least")):
            parse_value(spec, str(low - step))
    if spec.maximum is not None:
        high = spec.type(spec.maximum)
        assert parse_value(spec, str(high)) == high
        with pytest.raises(SettingError, match=re.escape(f"{spec.key} must be at most")):
            parse_value(spec, str(high + step))


def test_the_limits_that_protect_the_services() -> None:
    assert spec_for("stripe.workers").minimum == 1 and spec_for("stripe.workers").maximum == 16
    # Cliniko allows 200 requests a minute per user: a client-side budget above it would only earn 429s.
    assert spec_for("cliniko.requests_per_minute").maximum == 200
    assert spec_for("retry.max_attempts").minimum == 1
    assert spec_for("sync.cursor_overlap_seconds").minimum == 0


def test_contact_email_check() -> None:
    spec = spec_for("contact_email")
    assert parse_value(spec, "") == ""
    assert parse_value(spec, "manager@clinic.example.com") == "manager@clinic.example.com"
    for bad in ("manager", "a@b", "two words@example.com", "a@@example.com"):
        with pytest.raises(SettingError, match="is not an email address"):
            parse_value(spec, bad)


def test_shard_check() -> None:
    spec = spec_for("cliniko.shard")
    for good in ("au1", "au4", "uk2", "ca1", "au12"):
        assert parse_value(spec, good) == good
    for bad in ("zz999", "AU1", "au", "1au", "", "au-1"):
        with pytest.raises(SettingError, match="is not a Cliniko shard"):
            parse_value(spec, bad)


# --- base URLs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", BASE_URL_KEYS)
@pytest.mark.parametrize(
    "url",
    [
        "",  # blank: the service's real address
        "https://api.au1.cliniko.com/v1",
        "https://api.stripe.com",
        "https://example.com:8443/v1/",
        "http://127.0.0.1:8080/v1",
        "http://127.5.6.7:1",
        "http://localhost:9000",
        "http://[::1]:9000/v1",
    ],
)
def test_base_url_accepts_https_anywhere_and_http_only_on_loopback(key: str, url: str) -> None:
    assert parse_value(spec_for(key), url) == url


@pytest.mark.parametrize("key", BASE_URL_KEYS)
@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.com", "must start with https://"),
        ("http://api.stripe.com/v1", "must start with https://"),
        ("http://localhost.example.com", "must start with https://"),
        ("http://10.0.0.5:8080", "must start with https://"),
        ("http://0.0.0.0:8080", "must start with https://"),
        ("ftp://example.com", "not a valid web address"),
        ("example.com/v1", "not a valid web address"),
        ("https://", "not a valid web address"),
        ("https://example.com:99999", "not a valid web address"),
        ("https://user:pass@example.com", "must not contain a user name or password"),
        ("https://example.com/v1?token=1", "must not contain '?' or '#'"),
        ("https://example.com/v1#x", "must not contain '?' or '#'"),
    ],
)
def test_base_url_rejections(key: str, url: str, reason: str) -> None:
    with pytest.raises(SettingError) as raised:
        parse_value(spec_for(key), url)
    assert str(raised.value).startswith(f"{key}: ")
    assert reason in str(raised.value)


def test_base_url_message_names_the_service_in_plain_words() -> None:
    """The message is shown to the practice manager; it must read as a sentence."""
    with pytest.raises(SettingError) as raised:
        parse_value(spec_for("cliniko.base_url"), "http://example.com")
    assert str(raised.value).startswith("cliniko.base_url: The service address must start with https://")
    assert "The this service" not in str(raised.value)


# --- sources: environment, stored, default -----------------------------------------------------------------


def test_set_stores_the_typed_value_and_lookup_reports_stored(db: SqliteDatabase) -> None:
    settings = Settings({})
    assert settings.set("stripe.workers", "6") == 6
    assert stored("stripe.workers") == 6  # JSON number, not the text typed
    assert settings.set("sync.paused", "yes") is True
    assert stored("sync.paused") is True
    item = settings.lookup("stripe.workers")
    assert (item.value, item.source) == (6, "stored")
    assert settings.get("sync.paused") is True


def test_set_refuses_a_bad_value_and_keeps_the_old_one(db: SqliteDatabase) -> None:
    settings = Settings({})
    settings.set("sync.email_match", "review")
    with pytest.raises(SettingError):
        settings.set("sync.email_match", "maybe")
    assert settings.lookup("sync.email_match").value == "review"
    assert stored("sync.email_match") == "review"


def test_unset_returns_to_the_default(db: SqliteDatabase) -> None:
    settings = Settings({})
    settings.set("retry.max_attempts", "3")
    settings.unset("retry.max_attempts")
    assert settings.lookup("retry.max_attempts").source == "default"
    assert stored("retry.max_attempts") is None
    settings.unset("retry.max_attempts")  # unsetting twice is fine


def test_unknown_keys_are_refused_everywhere_with_the_known_list(db: SqliteDatabase) -> None:
    settings = Settings({})
    for call in (
        lambda: settings.get("sync.nope"),
        lambda: settings.set("sync.nope", "1"),
        lambda: settings.unset("sync.nope"),
    ):
        with pytest.raises(SettingError) as raised:
            call()
        assert "Unknown setting 'sync.nope'" in str(raised.value)
        assert "sync.email_match" in str(raised.value)
    assert Setting.select().count() == 0


@pytest.mark.parametrize(
    ("key", "raw", "value"),
    [
        ("sync.email_match", "review", "review"),
        ("stripe.workers", "2", 2),
        ("sync.paused", "on", True),
        ("retry.max_delay_seconds", "1.5", 1.5),
        ("cliniko.base_url", "http://127.0.0.1:1/v1", "http://127.0.0.1:1/v1"),
    ],
)
def test_environment_wins_over_stored_and_is_reported(db: SqliteDatabase, key: str, raw: str, value: object) -> None:
    plain = Settings({})
    plain.set(key, spec_for(key).default)
    env = {spec_for(key).env_name: raw}
    item = Settings(env).lookup(key)
    assert (item.value, item.source) == (value, "environment")
    assert Settings(env).get(key) == value
    # The environment is never written to the database.
    assert stored(key) == spec_for(key).default
    assert plain.lookup(key).source == "stored"


def test_setting_while_the_environment_overrides_stores_but_the_environment_still_wins(db: SqliteDatabase) -> None:
    settings = Settings({"CLINICSYNC_STRIPE_WORKERS": "2"})
    assert settings.set("stripe.workers", "9") == 9
    assert stored("stripe.workers") == 9
    assert settings.lookup("stripe.workers").value == 2
    assert Settings({}).lookup("stripe.workers").value == 9


def test_only_the_exact_env_name_counts(db: SqliteDatabase) -> None:
    env = {"CLINICSYNC_STRIPE_WORKER": "2", "clinicsync_stripe_workers": "3", "STRIPE_WORKERS": "5"}
    assert Settings(env).lookup("stripe.workers").source == "default"


def test_an_invalid_environment_value_is_an_error_not_a_silent_default(db: SqliteDatabase) -> None:
    with pytest.raises(SettingError, match=re.escape("stripe.workers must be at least 1")):
        Settings({"CLINICSYNC_STRIPE_WORKERS": "0"}).get("stripe.workers")


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("stripe.workers", 99),
        ("stripe.workers", "many"),
        ("stripe.workers", 2.5),
        ("stripe.workers", True),
        ("sync.email_match", "maybe"),
        ("sync.email_match", 5),
        ("sync.paused", "perhaps"),
        ("cliniko.base_url", "http://example.com"),
        ("cliniko.shard", "zz999"),
        ("retry.max_attempts", 0),
        ("stripe.timeout_seconds", [1, 2]),
        ("stripe.timeout_seconds", float("nan")),
    ],
)
def test_a_stored_value_that_does_not_validate_is_reported_not_silently_defaulted(
    db: SqliteDatabase, key: str, bad: object
) -> None:
    Setting.insert(key=key, value=bad).on_conflict_replace().execute()  # as a hand edit or an older version left it
    item = Settings({}).lookup(key)
    assert item.source == "stored" and item.problem, item
    assert f"The stored setting {key}" in item.problem and f"clinicsync config unset {key}" in item.problem
    with pytest.raises(SettingError, match=re.escape(f"The stored setting {key}")):
        Settings({}).get(key)  # used: refused, never quietly replaced by the default
    assert stored(key) == bad or bad != bad, "looking up must not rewrite what is stored"


@pytest.mark.parametrize("text", ["{not json", "", "NaN", "Infinity", "nope", "null"])
def test_a_stored_row_that_is_not_json_or_not_finite_is_reported(db: SqliteDatabase, text: str) -> None:
    db.execute_sql("INSERT OR REPLACE INTO setting (key, value) VALUES ('stripe.timeout_seconds', ?)", (text,))
    settings = Settings({})
    item = settings.lookup("stripe.timeout_seconds")
    assert item.problem.startswith("The stored setting stripe.timeout_seconds"), item
    listed = {entry.key: entry for entry in settings.all()}
    assert listed["stripe.timeout_seconds"].problem and not listed["stripe.workers"].problem, "the rest still lists"
    with pytest.raises(SettingError):
        settings.get("stripe.timeout_seconds")


def test_problems_lists_every_unusable_value_from_the_database_and_the_environment(db: SqliteDatabase) -> None:
    db.execute_sql("INSERT INTO setting (key, value) VALUES ('stripe.timeout_seconds', 'NaN')")
    settings = Settings({"CLINICSYNC_STRIPE_WORKERS": "lots"})
    keys = [item.key for item in settings.problems()]
    assert keys == ["stripe.workers", "stripe.timeout_seconds"]
    assert "CLINICSYNC_STRIPE_WORKERS" in settings.lookup("stripe.workers").problem


NUMBER_SPECS = tuple(spec for spec in SPECS if spec.type in (int, float))


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", float("nan"), float("inf")])
def test_numbers_must_be_finite(raw: object) -> None:
    for spec in (s for s in NUMBER_SPECS if s.type is float):
        with pytest.raises(SettingError, match=re.escape(f"{spec.key} must be a finite number")):
            parse_value(spec, raw)
    with pytest.raises(SettingError, match=re.escape("stripe.workers must be a whole number")):
        parse_value(spec_for("stripe.workers"), raw)


def test_a_timeout_must_be_in_range() -> None:
    spec = spec_for("stripe.timeout_seconds")
    for raw in ("-1", "0", "0.5", "121", "1e9"):
        with pytest.raises(SettingError, match=r"stripe.timeout_seconds must be at (least 1|most 120)"):
            parse_value(spec, raw)


@pytest.mark.parametrize("spec", NUMBER_SPECS, ids=spec_ids(NUMBER_SPECS))
def test_every_number_setting_has_a_floor_and_a_finite_ceiling(spec: SettingSpec) -> None:
    assert spec.minimum is not None, "a negative count, delay or rate means nothing"
    with pytest.raises(SettingError):
        parse_value(spec, "1e300" if spec.type is float else str(10**300))


def test_whole_numbers_from_json_must_be_whole() -> None:
    spec = spec_for("stripe.workers")
    assert parse_value(spec, 4.0) == 4
    for raw in (2.5, True, "4.0"):
        with pytest.raises(SettingError, match=re.escape("stripe.workers must be a whole number")):
            parse_value(spec, raw)
    with pytest.raises(SettingError, match=re.escape("sync.email_match must be text")):
        parse_value(spec_for("sync.email_match"), 5)
