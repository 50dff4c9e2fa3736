"""Start the sandbox: a seeded Cliniko emulator and (when available) the Stripe emulator on 127.0.0.1.

In-process::

    with start_sandbox(profile="hard", patients=30) as sb:
        env = sb.env()   # CLINICSYNC_* variables pointing the app at the sandbox

As a process (what `clinicsync sandbox` runs)::

    python -m clinicsync.sandbox.launcher --profile hard --patients 30 --port-file /tmp/sandbox.json

The keys printed are sandbox-only and mean nothing to the real Cliniko or Stripe.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clinicsync.sandbox.cliniko_emu import API_PREFIX, DEFAULT_API_KEY, ClinikoEmulator
from clinicsync.sandbox.faults import FaultPlan
from clinicsync.sandbox.seed import DEFAULT_PRODUCTS
from clinicsync.sandbox.server import RunningServer, serve

CONTACT_EMAIL = "sandbox@example.com"
STRIPE_MODES = ("test", "live")


@dataclass
class Sandbox:
    cliniko: RunningServer
    stripe: RunningServer | None
    cliniko_key: str
    stripe_key: str | None
    seeded: dict[str, Any] = field(default_factory=dict)  # the Cliniko seed result: ids, cases, stripe_customers

    @property
    def cliniko_url(self) -> str:
        return self.cliniko.url + API_PREFIX

    @property
    def stripe_url(self) -> str | None:
        return self.stripe.url if self.stripe else None

    def env(self) -> dict[str, str]:
        """Environment variables that point a headless ClinicSync run at this sandbox."""
        env = {
            "CLINICSYNC_CLINIKO_BASE_URL": self.cliniko_url,
            "CLINICSYNC_CLINIKO_API_KEY": self.cliniko_key,
            "CLINICSYNC_CONTACT_EMAIL": CONTACT_EMAIL,
        }
        if self.stripe is not None and self.stripe_key is not None:
            env["CLINICSYNC_STRIPE_BASE_URL"] = self.stripe.url
            env["CLINICSYNC_STRIPE_API_KEY"] = self.stripe_key
        return env

    def describe(self) -> dict[str, Any]:
        return {
            "cliniko_url": self.cliniko_url,
            "cliniko_admin_url": self.cliniko.url + "/_sandbox/",
            "cliniko_key": self.cliniko_key,
            "stripe_url": self.stripe_url,
            "stripe_admin_url": self.stripe.url + "/_sandbox/" if self.stripe else None,
            "stripe_key": self.stripe_key,
            "env": self.env(),
        }

    def stop(self) -> None:
        self.cliniko.stop()
        if self.stripe is not None:
            self.stripe.stop()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_sandbox(
    profile: str = "clean",
    patients: int = 50,
    latency_ms: float = 0,
    stripe_mode: str = "test",
    faults: FaultPlan | str | None = None,
    rate_limits: bool = False,
    seed: int = 1,
    *,
    cliniko_port: int = 0,
    stripe_port: int = 0,
    products: int = DEFAULT_PRODUCTS,  # Cliniko products; the hard profile also pre-creates some in Stripe
    search_delay_s: float | None = None,
) -> Sandbox:
    """Start both emulators; `faults` (a plan or spec string) applies to each server with its own RNG."""
    if stripe_mode not in STRIPE_MODES:
        raise ValueError(f"stripe_mode must be one of {', '.join(STRIPE_MODES)}")
    spec = faults.spec if isinstance(faults, FaultPlan) else (faults or "")
    FaultPlan.parse(spec)  # fail before anything starts
    emulator = ClinikoEmulator(seed=seed)
    cliniko = serve(
        emulator, port=cliniko_port, latency_ms=latency_ms, rate_limits=rate_limits, faults=FaultPlan.parse(spec)
    )
    seeded = _admin_body(
        emulator.admin("seed", {"profile": profile, "patients": patients, "seed": seed, "products": products})
    )
    sandbox = Sandbox(cliniko=cliniko, stripe=None, cliniko_key=DEFAULT_API_KEY, stripe_key=None, seeded=seeded)
    try:
        _start_stripe(sandbox, stripe_mode, stripe_port, latency_ms, rate_limits, spec, search_delay_s)
    except BaseException:
        sandbox.stop()
        raise
    return sandbox


def _start_stripe(
    sandbox: Sandbox,
    mode: str,
    port: int,
    latency_ms: float,
    rate_limits: bool,
    spec: str,
    search_delay_s: float | None,
) -> None:
    try:
        from clinicsync.sandbox.stripe_emu import StripeEmulator
    except ImportError:  # the Stripe emulator is optional for Cliniko-only runs
        return
    kwargs: dict[str, Any] = {"mode": mode}
    if search_delay_s is not None:
        kwargs["search_delay_s"] = search_delay_s
    emulator = StripeEmulator(**kwargs)
    customers = sandbox.seeded.get("stripe_customers") or []
    products = sandbox.seeded.get("stripe_products") or []
    if customers or products:
        _admin_body(emulator.admin("seed", {"customers": customers, "products": products, "livemode": mode == "live"}))
    sandbox.stripe = serve(
        emulator, port=port, latency_ms=latency_ms, rate_limits=rate_limits, faults=FaultPlan.parse(spec)
    )
    # Keys look like "sk_test_sandbox_clinic_a": underscores break the part after the prefix, so the key is
    # never a 16+ character alphanumeric run that secret scanners would take for a real Stripe key.
    sandbox.stripe_key = getattr(emulator, "default_key", f"sk_{mode}_sandbox_clinic_a")


def _admin_body(response: Any) -> dict[str, Any]:
    if response is None or response.status != 200:
        body = getattr(response, "body", None)
        raise RuntimeError(f"sandbox admin call failed: {body!r}")
    return dict(response.body)


# -- in its own process ---------------------------------------------------------------------------------


class SandboxStartError(RuntimeError):
    pass


def spawn(
    args: list[str], port_file: Path, *, timeout_s: float = 60.0, **popen: Any
) -> tuple[subprocess.Popen[Any], dict[str, Any]]:
    """Start `python -m clinicsync.sandbox.launcher ARGS --port-file PORT_FILE` in its own process and wait
    until it serves: the process, and what it wrote to the port file (URLs, keys, `env`). `popen` goes to
    subprocess.Popen (stdout, env, ...). Raises SandboxStartError if it exits or is not serving in time."""
    command = [sys.executable, "-m", "clinicsync.sandbox.launcher", *args, "--port-file", str(port_file)]
    process = subprocess.Popen(command, **popen)
    deadline = time.monotonic() + timeout_s
    while not port_file.exists():  # written atomically once both emulators serve
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait(timeout=5)
            raise SandboxStartError("the sandbox did not start")
        time.sleep(0.02)
    return process, json.loads(port_file.read_text(encoding="utf-8"))


# -- command line --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clinicsync sandbox", description="Run loopback Cliniko and Stripe emulators."
    )
    parser.add_argument("--profile", choices=("clean", "hard", "hostile"), default="clean")
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--products", type=int, default=DEFAULT_PRODUCTS, help="Cliniko products to seed (0: none)")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--stripe-mode", choices=STRIPE_MODES, default="test")
    parser.add_argument("--faults", default="", help="fault spec, e.g. before:5xx=0.1,after:reset=0.02,seed=1")
    parser.add_argument("--rate-limits", action="store_true", help="enforce Cliniko's 200/min and Stripe's limits")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cliniko-port", type=int, default=0)
    parser.add_argument("--stripe-port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, help="write the URLs and keys here as JSON once serving")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sandbox = start_sandbox(
            profile=args.profile,
            patients=args.patients,
            products=args.products,
            latency_ms=args.latency_ms,
            stripe_mode=args.stripe_mode,
            faults=args.faults,
            rate_limits=args.rate_limits,
            seed=args.seed,
            cliniko_port=args.cliniko_port,
            stripe_port=args.stripe_port,
        )
    except ValueError as exc:
        print(f"clinicsync sandbox: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with sandbox:
        info = sandbox.describe()
        _print_banner(info)
        if args.port_file:
            _write_atomically(args.port_file, json.dumps(info, indent=2))
        while not stop.wait(0.5):
            pass
    return 0


def _print_banner(info: dict[str, Any]) -> None:
    print(f"Cliniko sandbox: {info['cliniko_url']}  key: {info['cliniko_key']}")
    if info["stripe_url"]:
        print(f"Stripe sandbox:  {info['stripe_url']}  key: {info['stripe_key']}")
    else:
        print("Stripe sandbox:  not available (clinicsync.sandbox.stripe_emu missing)")
    print("Environment for a headless run:")
    for name, value in info["env"].items():
        print(f"  {name}={value}")
    print("Ctrl+C to stop.", flush=True)


def _write_atomically(path: Path, text: str) -> None:
    # A test polling for the file must never read it half-written.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
