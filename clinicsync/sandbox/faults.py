"""Seeded, reproducible fault injection for the sandbox servers.

Spec grammar (comma-separated tokens, whitespace ignored, empty spec = no faults)::

    spec    := token ("," token)*
    token   := KIND "=" RATE          probability in [0, 1] that an eligible request gets this fault
             | "max" "=" INT          at most INT faults in total (all kinds together)
             | "max:" KIND "=" INT    at most INT faults of this kind
             | "seed" "=" INT         RNG seed (default 0), so a run is reproducible
             | "skip" "=" INT         the first INT requests pass untouched, so an outage can start mid-run
             | "timeout_s" "=" FLOAT  how long a `before:timeout` holds the connection (default 2.0)

    KIND    := "before:5xx"      answer 500, 502 or 503 (picked by the RNG) without executing
             | "before:500" | "before:502" | "before:503"   one specific status, not executed
             | "before:429"      answer the emulator's 429 without executing
             | "before:timeout"  hold the connection silently for timeout_s, then close it
             | "before:reset"    drop the connection (TCP RST) without executing
             | "after:reset"     execute the request (its change is kept), then drop the connection
             | "after:html"      execute the request, then answer 200 with an HTML page (a proxy or captive
                                 portal answering for the service: the outcome is unknown to the client)
             | "stored500"       Stripe emulator only: store a 500 under the idempotency key

Example: ``before:5xx=0.10,before:429=0.05,after:reset=0.02,stored500=0.01,seed=42,max=20``.

All `before:*` kinds are drawn with one random number per request (their rates are stacked), so the
sum of their rates is the chance that a request is faulted before execution.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

BEFORE_KINDS: tuple[str, ...] = (
    "before:5xx",
    "before:500",
    "before:502",
    "before:503",
    "before:429",
    "before:timeout",
    "before:reset",
)
AFTER_KINDS: tuple[str, ...] = ("after:reset", "after:html")
EMULATOR_KINDS: tuple[str, ...] = ("stored500",)
KINDS: frozenset[str] = frozenset(BEFORE_KINDS + AFTER_KINDS + EMULATOR_KINDS)

DEFAULT_TIMEOUT_S = 2.0


@dataclass
class FaultPlan:
    """Fault rates per kind plus a private RNG; every method is thread-safe."""

    rates: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    timeout_seconds: float = DEFAULT_TIMEOUT_S
    max_total: int | None = None
    max_per_kind: dict[str, int] = field(default_factory=dict)
    spec: str = ""
    skip: int = 0  # requests (draws of the before-kinds, one per request) that pass untouched first

    def __post_init__(self) -> None:
        for kind, rate in self.rates.items():
            _check_kind(kind, f"{kind}={rate}")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault spec token {kind}={rate!r}: rate must be between 0 and 1")
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self.fired: dict[str, int] = {}
        self._requests = 0

    # -- parsing ---------------------------------------------------------------------------------------

    @classmethod
    def parse(cls, spec: str | None) -> FaultPlan:
        """Parse the compact spec described in the module docstring; ValueError names a bad token."""
        spec = (spec or "").strip()
        plan_args: dict[str, Any] = {"rates": {}, "max_per_kind": {}, "spec": spec}
        for raw in spec.split(","):
            token = raw.strip()
            if token:
                _apply_token(token, plan_args)
        return cls(**plan_args)

    @classmethod
    def from_json(cls, obj: Any) -> FaultPlan:
        """Accept what the admin API receives: a spec string, {"spec": "..."}, or {"kind": rate, ...}."""
        if obj is None:
            return cls()
        if isinstance(obj, str):
            return cls.parse(obj)
        if isinstance(obj, dict):
            if "spec" in obj:
                return cls.parse(obj["spec"])
            return cls.parse(",".join(f"{k}={v}" for k, v in obj.items()))
        raise ValueError(f"fault spec must be a string or an object, not {type(obj).__name__}")

    # -- rolling ---------------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return any(rate > 0 for rate in self.rates.values())

    def roll(self, kind: str) -> bool:
        """True if a fault of `kind` should happen now (counts it against the limits)."""
        _check_kind(kind, kind)
        rate = self.rates.get(kind, 0.0)
        if rate <= 0.0:
            return False
        with self._lock:
            if self._rng.random() >= rate or not self._allowed(kind):
                return False
            self._count(kind)
            return True

    def choose(self, kinds: Iterable[str] = BEFORE_KINDS) -> str | None:
        """Pick at most one of `kinds` with a single draw (stacked rates); None = no fault."""
        candidates = [(k, self.rates.get(k, 0.0)) for k in kinds]
        with self._lock:
            if any(k in BEFORE_KINDS for k, _ in candidates):  # the server draws the before-kinds once a request
                self._requests += 1
            if self._requests <= self.skip or not any(rate > 0 for _, rate in candidates):
                return None
            draw = self._rng.random()
            upper = 0.0
            for kind, rate in candidates:
                upper += rate
                if draw < upper:
                    if not self._allowed(kind):
                        return None
                    self._count(kind)
                    return kind
            return None

    def pick_status(self, kind: str) -> int:
        """The HTTP status for a before:5xx-style kind (5xx picks one of 500/502/503 reproducibly)."""
        if kind == "before:5xx":
            with self._lock:
                return self._rng.choice((500, 502, 503))
        if kind == "before:429":
            return 429
        return int(kind.split(":", 1)[1])

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "spec": self.spec,
                "rates": dict(self.rates),
                "seed": self.seed,
                "timeout_s": self.timeout_seconds,
                "max": self.max_total,
                "max_per_kind": dict(self.max_per_kind),
                "skip": self.skip,
                "fired": dict(self.fired),
            }

    def _allowed(self, kind: str) -> bool:
        if self.max_total is not None and sum(self.fired.values()) >= self.max_total:
            return False
        limit = self.max_per_kind.get(kind)
        return limit is None or self.fired.get(kind, 0) < limit

    def _count(self, kind: str) -> None:
        self.fired[kind] = self.fired.get(kind, 0) + 1


def _check_kind(kind: str, token: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"fault spec token {token!r}: unknown fault kind {kind!r} (known: {', '.join(sorted(KINDS))})")


def _apply_token(token: str, plan_args: dict[str, Any]) -> None:
    name, sep, value = token.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise ValueError(f"fault spec token {token!r}: expected NAME=VALUE")
    try:
        if name == "seed":
            plan_args["seed"] = int(value)
        elif name == "timeout_s":
            plan_args["timeout_seconds"] = _non_negative(float(value), token)
        elif name == "skip":
            plan_args["skip"] = int(_non_negative(int(value), token))
        elif name == "max":
            plan_args["max_total"] = int(_non_negative(int(value), token))
        elif name.startswith("max:"):
            kind = name[4:]
            _check_kind(kind, token)
            plan_args["max_per_kind"][kind] = int(_non_negative(int(value), token))
        else:
            _check_kind(name, token)
            rate = float(value)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault spec token {token!r}: rate must be between 0 and 1")
            plan_args["rates"][name] = rate
    except ValueError as exc:
        if str(exc).startswith("fault spec token"):
            raise
        raise ValueError(f"fault spec token {token!r}: bad value {value!r}") from exc


def _non_negative(value: float, token: str) -> float:
    if value < 0:
        raise ValueError(f"fault spec token {token!r}: must not be negative")
    return value
