"""Errors raised by the source clients (Cliniko, Cal.com).

Every message here may be shown to a practice manager as-is, so it says what happened and what to do, in
plain words. Messages never contain an API key: the clients build them from fixed text plus short, redacted
excerpts of what the server said, and never chain the underlying httpx exception (which holds the request,
and so the Authorization header).

The factory class methods (`SourceAuthError.rejected_key("Cliniko")`, ...) keep the wording identical
across sources.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

EXCERPT_LIMIT = 200  # a body quoted in an error message
REJECTION_LIMIT = 1_000  # a service's own words for a refused request (a 422 can list many fields)
FIELD_ERROR_LIMIT = 300


class SourceError(Exception):
    """Base class: something went wrong talking to a source. `status` is the HTTP status, if any."""

    def __init__(self, message: str, *, service: str = "The source", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.service = service
        self.status = status

    def __str__(self) -> str:
        return self.message


class SourceConfigError(SourceError):
    """The connection settings cannot work (bad shard, bad base URL, missing key or contact email)."""


class SourceAuthError(SourceError):
    """HTTP 401: the API key was rejected."""

    @classmethod
    def rejected_key(cls, service: str, status: int = 401) -> SourceAuthError:
        return cls(
            f"{service} rejected the API key (HTTP {status}). Check the key in Connections; it may have been revoked.",
            service=service,
            status=status,
        )


class SourcePermissionError(SourceError):
    """HTTP 403: the key's user may not see or change what was asked for."""

    @classmethod
    def refused(cls, service: str, what: str, status: int = 403) -> SourcePermissionError:
        return cls(
            f"{service} refused access to {what} (HTTP {status}). The {service} user who owns this API key does "
            f"not have permission for it; ask a {service} administrator to give that user a role that allows it.",
            service=service,
            status=status,
        )


class SourceNotFound(SourceError):
    """HTTP 404: the record does not exist (for Cliniko this also means it was deleted)."""

    @classmethod
    def missing(cls, service: str, what: str, status: int = 404) -> SourceNotFound:
        return cls(
            f"{service} could not find {what} (HTTP {status}). It may have been deleted.",
            service=service,
            status=status,
        )


class SourceRequestRejected(SourceError):
    """Another 4xx (typically 422 validation): permanent until someone changes the data.

    `field_errors` maps a Cliniko field name to its problem, from a 422 body `{"message", "errors": {...}}`.
    """

    def __init__(
        self,
        message: str,
        *,
        service: str = "The source",
        status: int | None = None,
        field_errors: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, service=service, status=status)
        self.field_errors = dict(field_errors or {})


class SourceUnavailable(SourceError):
    """The source could not be reached or kept failing: network errors, timeouts, 5xx after retries.

    `retry_after_s` carries a server hint (Retry-After) for the retry policy while retries are still going.
    """

    def __init__(
        self,
        message: str,
        *,
        service: str = "The source",
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, service=service, status=status)
        self.retry_after_s = retry_after_s

    @classmethod
    def unreachable(
        cls, service: str, reason: str, *, status: int | None = None, retry_after_s: float | None = None
    ) -> SourceUnavailable:
        return cls(
            f"{service} could not be reached: {reason}",
            service=service,
            status=status,
            retry_after_s=retry_after_s,
        )


class SourceRateLimited(SourceError):
    """HTTP 429: the source asked us to slow down. `retry_after_s` is how long it asked us to wait, if known."""

    def __init__(
        self,
        message: str,
        *,
        service: str = "The source",
        status: int | None = 429,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, service=service, status=status)
        self.retry_after_s = retry_after_s

    @classmethod
    def limited(cls, service: str, *, retry_after_s: float | None = None) -> SourceRateLimited:
        return cls(
            f"{service} is limiting how fast ClinicSync may send requests (HTTP 429). "
            "ClinicSync waits and tries again; if this keeps happening, another app may be using the same "
            f"{service} user's allowance.",
            service=service,
            retry_after_s=retry_after_s,
        )

    @classmethod
    def gave_up(cls, service: str, attempts: int) -> SourceRateLimited:
        return cls(
            f"{service} kept limiting how fast ClinicSync may send requests (HTTP 429), even after {attempts} "
            f"tries. Another app may be using the same {service} user's allowance; the next sync will carry on "
            "where this one stopped.",
            service=service,
        )


class SourceBadResponse(SourceError):
    """The source answered, but not with what its API promises (malformed JSON, unexpected shape, bad link)."""

    @classmethod
    def malformed(cls, service: str, problem: str, excerpt_text: str = "", *, status: int | None = None):
        message = f"{service} sent a response ClinicSync could not understand: {problem}"
        if excerpt_text:
            message += f' The response began: "{excerpt_text}"'
        return cls(message, service=service, status=status)


def excerpt(text: str, limit: int = EXCERPT_LIMIT) -> str:
    """A short, single-line excerpt of a response body for an error message."""
    collapsed = " ".join(text.split())
    if len(collapsed) <= limit:
        return collapsed
    return collapsed[: limit - 1].rstrip() + "…"


def scrubbed_excerpt(text: str, *secrets: str | None, limit: int = EXCERPT_LIMIT) -> str:
    """A short single-line excerpt of a server's words with every secret removed.

    Redacts before cutting: a cut first could split a key so that the piece left no longer matches it. Only a
    generous head is redacted (a hostile body can be megabytes); the rest is cut off anyway.
    """
    head = " ".join(text.split())[: limit * 4 + 256]
    return excerpt(redact(head, *secrets), limit)


def redact(text: str, *secrets: str | None) -> str:
    """Remove every secret from `text` in every spelling it can take (with or without a Cliniko shard suffix,
    URL-encoded, base64 as in a Basic auth header), case-insensitively.

    Servers rarely echo credentials, but an error message may end up in a log, a crash report or on screen, so
    anything built from a server's words passes through here first.
    """
    from clinicsync.logging_setup import secret_forms

    forms = {form for secret in secrets if secret for form in secret_forms(secret)}
    if not forms:
        return text
    # One pass over the text (bodies can be megabytes); longest first so no tail of a longer form is left.
    alternation = "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
    return re.sub(alternation, "[redacted]", text, flags=re.IGNORECASE)


def describe_validation_errors(errors: object) -> str:
    """Turn a 422 `errors` value ({field: message} or {field: [messages]}, or a list) into one readable line."""
    if isinstance(errors, Mapping):
        parts = []
        for field, value in errors.items():
            if isinstance(value, list | tuple):
                value = "; ".join(str(v) for v in value)
            parts.append(f"{str(field).replace('_', ' ')}: {value}")
        return ", ".join(parts)
    if isinstance(errors, list | tuple):
        return ", ".join(str(v) for v in errors)
    if errors in (None, ""):
        return ""
    return str(errors)
