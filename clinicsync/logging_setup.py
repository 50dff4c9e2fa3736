"""Logging for the app: a rotating file in the profile's log folder, optional console, and redaction.

Every handler installed here carries a :class:`RedactingFilter`, so API keys never reach a log file, the
console or anything that reads formatted records — whether they appear in a message, its arguments, an
exception message or a traceback. The CLI uses :func:`redact` for its own output too.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import logging.handlers
import re
import sys
import threading
import traceback
from urllib.parse import quote, quote_plus

from clinicsync.paths import AppPaths

REDACTED = "[redacted]"

DEFAULT_MAX_BYTES = 1_000_000
DEFAULT_BACKUP_COUNT = 5
LOG_FORMAT = "%(asctime)s %(levelname)-7s [%(threadName)s] %(name)s: %(message)s"

# Shorter "secrets" would blank out ordinary words all over the log; real API keys are far longer.
MIN_REGISTERED_SECRET_LENGTH = 8
_SHARD_SUFFIX = re.compile(r"-[a-z]{2}\d{1,2}$", re.IGNORECASE)  # Cliniko's `-au1` key suffix

# Stripe secret/restricted/publishable keys and webhook signing secrets. The look-behind (instead of \b)
# also catches keys glued to an identifier, e.g. "api_key_sk_test_...".
_STRIPE_KEY = r"(?<![A-Za-z0-9])(?:(?:sk|rk|pk)_(?:test|live)_[A-Za-z0-9_]+|whsec_[A-Za-z0-9]+)"
_CALCOM_KEY = r"(?<![A-Za-z0-9])cal_(?:live|test)_[A-Za-z0-9_]+"
_KEY_SHAPED = re.compile(f"{_STRIPE_KEY}|{_CALCOM_KEY}")

# `Authorization: Basic xxx`, `"Authorization": "Bearer xxx"`, `authorization=xxx` ...: the whole value goes.
_AUTH_HEADER = re.compile(
    r"""(?P<prefix>\bauthorization["']?\s*[:=]\s*["']?)(?:(?P<scheme>basic|bearer|token)\s+)?(?P<value>[^\s"',;}]+)""",
    re.IGNORECASE,
)
# A bare "Bearer <token>" / "Basic <b64>" outside a header; the token check below spares "Basic information".
_BARE_SCHEME = re.compile(r"\b(?P<scheme>Bearer|Basic)(?P<space>\s+)(?P<value>[A-Za-z0-9._~+/\-]{8,}=*)")
# api_key=..., "password": "..." in query strings, dict reprs and config dumps. The look-behind (not \b) lets
# "stripe_api_key=..." match; values are only redacted if token-like, so "source of stripe_api_key: keyring" stays.
_NAMED_SECRET = re.compile(
    r"""(?P<prefix>(?<![A-Za-z0-9])(?:api[_-]?key|apikey|client[_-]?secret|password|passwd|"""
    r"""access[_-]?token|refresh[_-]?token)["']?\s*[:=]\s*["']?)(?P<value>[^\s"',;&}]+)""",
    re.IGNORECASE,
)
# Cliniko keys are long base64-ish tokens with an optional "-au1"-style shard suffix; base64 Basic-auth
# credentials look the same. The look-arounds stop matches starting or ending inside a longer word, which is
# what keeps Stripe ids (cus_..., pi_3Mtw...), dotted names and path segments out.
_BASE64_TOKEN = re.compile(
    r"(?<![A-Za-z0-9_+/=.\-])(?P<token>[A-Za-z0-9+/]{20,}={0,2})(?P<suffix>-[a-z]{2}\d{1,2})?(?![A-Za-z0-9_+/=\-])"
)


def _looks_like_token(text: str) -> bool:
    # English words are letters only; tokens almost always carry a digit or punctuation, or are very long.
    return len(text) >= 20 or any(c.isdigit() or c in "._~+/=-" for c in text)


def _decodes_to_key(token: str) -> bool:
    """True if ``token`` is base64 of text holding a key-shaped value (e.g. Basic auth of ``sk_test_...:``)."""
    padded = token + "=" * (-len(token) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            decoded = decode(padded).decode("ascii")
        except (binascii.Error, ValueError):
            continue
        if _KEY_SHAPED.search(decoded):
            return True
    return False


def _is_secret_looking(token: str) -> bool:
    if token.startswith("/"):  # an absolute POSIX path, not a key
        return False
    has_mixed_alnum = (
        any(c.isupper() for c in token) and any(c.islower() for c in token) and any(c.isdigit() for c in token)
    )
    return has_mixed_alnum or _decodes_to_key(token)


def _b64(data: str) -> str:
    return base64.b64encode(data.encode("utf-8")).decode("ascii")


def key_variants(value: str) -> set[str]:
    """The key as given and, for a Cliniko key, without its `-au1` shard suffix: Cliniko accepts both."""
    variants = {value}
    base = _SHARD_SUFFIX.sub("", value)
    if len(base) >= MIN_REGISTERED_SECRET_LENGTH:  # never a tiny fragment: that would mangle ordinary words
        variants.add(base)
    return variants


def secret_forms(value: str) -> set[str]:
    """The spellings of ``value`` that can show up in logs: as is, URL-encoded, and base64 (Basic auth)."""
    forms: set[str] = set()
    for variant in key_variants(value):
        forms |= {variant, quote(variant, safe=""), quote_plus(variant)}
        # Basic auth is base64("user:password"); API keys go in as the user (Cliniko, Stripe) or on their own.
        for encoded in (_b64(variant + ":"), _b64(variant), _b64(":" + variant)):
            forms.add(encoded)
            forms.add(encoded.rstrip("="))
            forms.add(encoded.replace("+", "-").replace("/", "_"))  # the URL-safe alphabet
    return {form for form in forms if form}


class Redactor:
    """Replaces key-shaped text and registered secret values with :data:`REDACTED`. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._forms: frozenset[str] = frozenset()
        self._registered: re.Pattern[str] | None = None

    def register_secret(self, value: str | None) -> None:
        """Redact this exact value (and its encodings) from now on, whatever its shape."""
        if not value or len(value.strip()) < MIN_REGISTERED_SECRET_LENGTH:
            return
        with self._lock:
            forms = self._forms | secret_forms(value.strip())
            if forms == self._forms:
                return
            # Longest first so a form that contains another is replaced whole, not leaving a tail behind.
            alternation = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
            # Swap both at once: readers on other threads see either the old or the new pattern.
            self._forms, self._registered = frozenset(forms), re.compile(alternation)

    def clear_registered(self) -> None:
        with self._lock:
            self._forms, self._registered = frozenset(), None

    def redact(self, text: str) -> str:
        if not text:
            return text
        registered = self._registered
        if registered is not None:
            text = registered.sub(REDACTED, text)
        text = _AUTH_HEADER.sub(_sub_auth_header, text)
        text = _BARE_SCHEME.sub(_sub_bare_scheme, text)
        text = _NAMED_SECRET.sub(_sub_named_secret, text)
        text = _KEY_SHAPED.sub(REDACTED, text)
        return _BASE64_TOKEN.sub(_sub_base64_token, text)


def _sub_auth_header(match: re.Match[str]) -> str:
    scheme = match["scheme"]
    return f"{match['prefix']}{scheme + ' ' if scheme else ''}{REDACTED}"


def _sub_bare_scheme(match: re.Match[str]) -> str:
    if match["value"] == REDACTED or not _looks_like_token(match["value"]):
        return match[0]
    return f"{match['scheme']}{match['space']}{REDACTED}"


def _sub_named_secret(match: re.Match[str]) -> str:
    if match["value"] == REDACTED or not _looks_like_token(match["value"]):
        return match[0]
    return f"{match['prefix']}{REDACTED}"


def _sub_base64_token(match: re.Match[str]) -> str:
    return REDACTED if _is_secret_looking(match["token"]) else match[0]


# The process-wide redactor used by the log handlers and the CLI. Secrets are registered as they are read.
_DEFAULT_REDACTOR = Redactor()


def default_redactor() -> Redactor:
    return _DEFAULT_REDACTOR


def register_secret(value: str | None) -> None:
    """Register a secret value in use with the process-wide redactor."""
    _DEFAULT_REDACTOR.register_secret(value)


def redact(text: str) -> str:
    """Redact ``text`` with the process-wide redactor (for the CLI's own output)."""
    return _DEFAULT_REDACTOR.redact(text)


class RedactingFilter(logging.Filter):
    """Redacts a record in place: message with its args applied, exception text and stack info.

    The record is formatted once here and the raw parts (args, exc_info) are dropped, so no later
    formatter or handler can re-render an unredacted version.
    """

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._redactor = redactor or _DEFAULT_REDACTOR

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record, self._redactor)
        return True


# Libraries whose log lines carry patient data at any level below WARNING: httpx and httpcore log request lines
# with their query (`GET /v1/customers?email=…`), the Stripe SDK logs every request's URL and body, peewee every
# SQL statement with its parameters (names, the plan's samples). They stay at WARNING whatever the app's level.
QUIET_LIBRARIES = ("httpx", "httpcore", "stripe", "peewee", "urllib3", "hpack", "h11", "h2")

# Second line of defence, for log lines only: a URL's query values and anything shaped like an email address.
_URL_QUERY = re.compile(r"(?P<url>\b(?:https?://|/v\d+/)[^\s?#\"'<>]*)\?(?P<query>[^\s#\"'<>]+)")
_QUERY_PAIR = re.compile(r"(?P<name>[^=&]+)=(?P<value>[^&]*)")
_EMAIL = re.compile(r"[^\s@<>()\[\]\"',;:]+@[^\s@<>()\[\]\"',;:]+\.[A-Za-z]{2,}")


def _sub_query(match: re.Match[str]) -> str:
    query = _QUERY_PAIR.sub(lambda pair: f"{pair['name']}={REDACTED}" if pair["value"] else pair[0], match["query"])
    return f"{match['url']}?{query}"


def scrub_patient_data(text: str) -> str:
    """Query values of URLs and email addresses out of a log line: they are how patient data would get in."""
    return _EMAIL.sub("[email]", _URL_QUERY.sub(_sub_query, text))


def redact_record(record: logging.LogRecord, redactor: Redactor) -> None:
    record.msg = scrub_patient_data(redactor.redact(_message_of(record)))
    record.args = None
    if record.exc_info and not record.exc_text:
        record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    record.exc_info = None
    if record.exc_text:
        record.exc_text = scrub_patient_data(redactor.redact(record.exc_text))
    if record.stack_info:
        record.stack_info = redactor.redact(record.stack_info)


def _message_of(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # bad %-args: keep what we can rather than lose the line (it is redacted all the same)
        return f"{record.msg!s} (unformattable args: {record.args!r})"


# --- handlers ---------------------------------------------------------------------------------------------

_ROLE_ATTR = "_clinicsync_role"
_FILE_ROLE = "file"
_CONSOLE_ROLE = "console"


def setup_logging(
    paths: AppPaths,
    *,
    level: int = logging.INFO,
    console: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backup_count: int = DEFAULT_BACKUP_COUNT,
) -> None:
    """Install the app's handlers on the root logger, so third-party logs (httpx, stripe) are redacted too.

    Idempotent: a second call never adds handlers; it brings the setup in line with the latest arguments
    (a different log file replaces the old file handler, ``console=False`` removes the console handler).
    """
    paths.ensure()
    root = logging.getLogger()
    root.setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    formatter = logging.Formatter(LOG_FORMAT)

    file_handler = _find_handler(root, _FILE_ROLE)
    wanted_file = str(paths.log_file)
    if file_handler is not None and (
        getattr(file_handler, "baseFilename", None) != wanted_file
        or getattr(file_handler, "maxBytes", None) != max_bytes
        or getattr(file_handler, "backupCount", None) != backup_count
    ):
        _remove(root, file_handler)
        file_handler = None
    if file_handler is None:
        try:
            handler = LogFileHandler(paths.log_file, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8")
        except OSError as exc:  # a folder in its place, no permission: the app works on, without a log file
            _say_log_file_failed(paths.log_file, exc)
        else:
            _install(root, handler, _FILE_ROLE, formatter)

    console_handler = _find_handler(root, _CONSOLE_ROLE)
    if console and console_handler is None:
        _install(root, logging.StreamHandler(sys.stderr), _CONSOLE_ROLE, formatter)
    elif not console and console_handler is not None:
        _remove(root, console_handler)


class LogFileHandler(logging.handlers.RotatingFileHandler):
    """The rotating log file. When it cannot be written (a full disk, a vanished folder) it says so once, in one
    line, and stops trying for the rest of the run: logging's default is a traceback on stderr per record, which
    buried the one message that mattered under hundreds of lines."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        self.failed = True
        error = sys.exc_info()[1]
        _say_log_file_failed(self.baseFilename, error)
        with contextlib.suppress(OSError):  # closing flushes, which fails the same way
            self.close()


def _say_log_file_failed(path: object, error: BaseException | None) -> None:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else (str(error) or "unknown error")
    with contextlib.suppress(OSError, ValueError):  # no usable stderr either (a closed pipe): nothing more to do
        print(
            f"ClinicSync could not write its log file {path} ({reason}); it carries on without a log file.",
            file=sys.stderr,
        )


def teardown_logging() -> None:
    """Remove and close the handlers :func:`setup_logging` installed (app shutdown, tests)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _ROLE_ATTR, None) is not None:
            _remove(root, handler)


def _find_handler(logger: logging.Logger, role: str) -> logging.Handler | None:
    return next((h for h in logger.handlers if getattr(h, _ROLE_ATTR, None) == role), None)


def _install(logger: logging.Logger, handler: logging.Handler, role: str, formatter: logging.Formatter) -> None:
    setattr(handler, _ROLE_ATTR, role)
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)


def _remove(logger: logging.Logger, handler: logging.Handler) -> None:
    logger.removeHandler(handler)
    handler.close()
