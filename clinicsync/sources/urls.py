"""URL rules shared by every HTTP client (Cliniko, Cal.com, Stripe).

API keys travel in headers, so the one thing a base URL must never do is send them in clear text over the
network. `https://` is required everywhere except the loopback interface, where the sandbox emulators run
over plain `http://` and nothing leaves the machine.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from clinicsync.sources.errors import SourceConfigError

_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback_host(host: str | None) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1: addresses that never leave this computer."""
    if not host:
        return False
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate_base_url(url: str, service_name: str) -> str:
    """Check a configured API base URL and return it without a trailing slash.

    Raises SourceConfigError (worded for the person who typed it) when the URL is not `https://`
    (plain `http://` is allowed for loopback hosts only), has no host, or carries credentials, a query
    or a fragment.
    """
    raw = (url or "").strip()
    try:
        parts = urlsplit(raw)
        _ = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError:
        raise SourceConfigError(
            f"The {service_name} address '{raw}' is not a valid web address.", service=service_name
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise SourceConfigError(
            f"The {service_name} address '{raw}' is not a valid web address; it should look like "
            "https://example.com/v1.",
            service=service_name,
        )
    if scheme == "http" and not is_loopback_host(parts.hostname):
        raise SourceConfigError(
            f"The {service_name} address must start with https:// (got '{raw}'). Plain http:// would send "
            "the API key unencrypted, so it is only allowed for this computer (localhost or 127.0.0.1).",
            service=service_name,
        )
    if parts.username is not None or parts.password is not None:
        raise SourceConfigError(
            f"The {service_name} address must not contain a user name or password; enter the API key in "
            "Connections instead.",
            service=service_name,
        )
    if parts.query or parts.fragment:
        raise SourceConfigError(
            f"The {service_name} address '{raw}' must not contain '?' or '#' parts.", service=service_name
        )
    return raw.rstrip("/")


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the default port filled in, for same-origin checks."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
    return scheme, (parts.hostname or "").rstrip(".").lower(), port


def same_origin(url: str, base_url: str) -> bool:
    """True when `url` goes to the same scheme, host and port as `base_url` (so it may receive the key)."""
    target = origin(url)
    return bool(target[1]) and target == origin(base_url)
