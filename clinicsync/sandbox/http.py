"""The contract between the sandbox's HTTP server and its emulators.

An emulator is a plain object with `handle(request) -> Response`; it knows nothing about sockets, so the
server can add latency, rate limits and faults around any emulator in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string, e.g. "/v1/customers/cus_123"
    query: list[tuple[str, str]]  # in order, repeated keys kept (Cliniko's q[] and Stripe's expand[])
    headers: dict[str, str]  # lower-cased names
    body: bytes = b""
    base_url: str = ""  # scheme://host:port the client used, for absolute links

    def query_values(self, name: str) -> list[str]:
        return [v for k, v in self.query if k == name]

    def query_value(self, name: str, default: str | None = None) -> str | None:
        values = self.query_values(name)
        return values[-1] if values else default

    def form(self) -> list[tuple[str, str]]:
        """The body as ordered form pairs (Stripe sends application/x-www-form-urlencoded)."""
        return parse_qsl(self.body.decode("utf-8"), keep_blank_values=True)


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-serialisable, or bytes/str sent as-is
    headers: dict[str, str] = field(default_factory=dict)
    # Set by an emulator when the request changed state (the server counts it as an executed mutation).
    mutated: bool = False
    # Set by an emulator when it replayed a stored response instead of executing.
    replayed: bool = False


class Emulator(Protocol):
    name: str  # "stripe", "cliniko", "calcom"

    def handle(self, request: Request) -> Response: ...


@dataclass(frozen=True)
class RateLimit:
    """One request's budget: `limit` requests per `per_seconds` in the bucket `key`.

    `block_seconds` > 0: going over blocks the bucket for that long from the refused request, whatever the window
    (Cal.com blocks a key for 60 s); 0: requests are refused only until the window turns (Cliniko, Stripe)."""

    key: str
    limit: int
    per_seconds: float
    block_seconds: float = 0.0


@dataclass(frozen=True)
class Admission:
    """What the limiter decided for one request: its bucket's allowance after it, and when that resets."""

    admitted: bool
    limit: int
    remaining: int
    reset_epoch: float  # when the window turns (admitted) or the refusal ends (refused)


class AdminCapable(Protocol):
    """Optional emulator hooks the server uses; an emulator implements what it needs."""

    def rate_limit(self, request: Request) -> RateLimit | None: ...

    def rate_limited_response(self, request: Request, reset_epoch: float) -> Response: ...

    def rate_limit_headers(self, request: Request, admission: Admission) -> dict[str, str]: ...

    def fault_response(self, request: Request, status: int) -> Response: ...

    def admin(self, action: str, params: dict[str, Any]) -> Response | None: ...
