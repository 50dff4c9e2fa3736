"""Start the sandbox: a seeded Cliniko emulator, (when available) the Stripe emulator and, on request, a seeded
Cal.com emulator, all on 127.0.0.1.

In-process::

    with start_sandbox(profile="hard", patients=30) as sb:
        env = sb.env()   # CLINICSYNC_* variables pointing the app at the sandbox

As a process (what `clinicsync sandbox` runs)::

    python -m clinicsync.sandbox.launcher --profile hard --patients 30 --calcom --port-file /tmp/sandbox.json

The keys printed are sandbox-only and mean nothing to the real Cliniko, Stripe or Cal.com. `clinicsync sandbox`
also prints a `CLINICSYNC_HOME` for a demo profile of its own (a fresh folder under the system temp dir, deleted
when the sandbox stops), so pasting its `export` lines never points a real clinic's profile at invented data.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clinicsync.paths import HOME_ENV_VAR
from clinicsync.sandbox import calcom_emu, calcom_seed, persist
from clinicsync.sandbox.cliniko_emu import API_PREFIX, DEFAULT_API_KEY, ClinikoEmulator
from clinicsync.sandbox.faults import FaultPlan
from clinicsync.sandbox.seed import DEFAULT_PRODUCTS
from clinicsync.sandbox.server import RunningServer, serve

CONTACT_EMAIL = "sandbox@example.com"
STRIPE_MODES = ("test", "live")
# In a state folder: which emulators ran and what their seed made. Written last, once every snapshot exists, so
# its presence means "continue from here". No keys: they are constants in the emulators.
STATE_FILE = "sandbox.json"
STATE_FORMAT = 1


@dataclass
class Sandbox:
    cliniko: RunningServer
    stripe: RunningServer | None
    cliniko_key: str
    stripe_key: str | None
    seeded: dict[str, Any] = field(default_factory=dict)  # the Cliniko seed result: ids, cases, stripe_customers
    calcom: RunningServer | None = None
    calcom_key: str | None = None
    # The Cal.com seed result: uids, cases, identities, and the Stripe objects Cal.com's Stripe app created.
    calcom_seeded: dict[str, Any] = field(default_factory=dict)
    # With a state folder: what saves each emulator's data there (sandbox/persist.py).
    keepers: list[persist.SnapshotKeeper] = field(default_factory=list)

    @property
    def cliniko_url(self) -> str:
        return self.cliniko.url + API_PREFIX

    @property
    def stripe_url(self) -> str | None:
        return self.stripe.url if self.stripe else None

    @property
    def calcom_url(self) -> str | None:
        return self.calcom.url + calcom_emu.API_PREFIX if self.calcom else None

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
        if self.calcom is not None and self.calcom_key is not None:
            env["CLINICSYNC_CALCOM_BASE_URL"] = self.calcom.url + calcom_emu.API_PREFIX
            env["CLINICSYNC_CALCOM_API_KEY"] = self.calcom_key
        return env

    def describe(self) -> dict[str, Any]:
        return {
            "cliniko_url": self.cliniko_url,
            "cliniko_admin_url": self.cliniko.url + "/_sandbox/",
            "cliniko_key": self.cliniko_key,
            "stripe_url": self.stripe_url,
            "stripe_admin_url": self.stripe.url + "/_sandbox/" if self.stripe else None,
            "stripe_key": self.stripe_key,
            "calcom_url": self.calcom_url,
            "calcom_admin_url": self.calcom.url + "/_sandbox/" if self.calcom else None,
            "calcom_key": self.calcom_key,
            "env": self.env(),
        }

    def servers(self) -> list[RunningServer]:
        return [server for server in (self.cliniko, self.stripe, self.calcom) if server is not None]

    def stop(self) -> None:
        """Stop serving, then (with a state folder) save each emulator's data a last time. Idempotent."""
        for server in self.servers():
            server.stop()
        for keeper in self.keepers:
            keeper.close()

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
    calcom: bool = False,
    calcom_port: int = 0,
    calcom_bookings: int = 60,
    calcom_payments: bool = False,
    invoices: int = 0,  # the invoices ↔ payments scenario (sandbox/invoice_seed.py); 0: none
    invoice_customers: int = 300,
    state_dir: Path | None = None,
) -> Sandbox:
    """Start the emulators; `faults` (a plan or spec string) applies to each server with its own RNG.

    `calcom=True` also starts the Cal.com emulator, seeded from the same profile, patient count and seed as
    Cliniko, so about a third of its attendees are Cliniko's patients (their emails in other letter case).
    `calcom_payments=True` also puts in the clinic's Stripe account the payments Cal.com's Stripe app took there, as
    they would be before ClinicSync is connected (the ones on a practitioner's own account stay out of reach).

    `invoices=N` replaces the profile's invoices with the invoices ↔ payments scenario for `invoice_customers`
    patients, and seeds Stripe with their customers and payments; `seeded["invoice_scenario"]` then holds its cases,
    and `payments` maps each payment's ref to its PaymentIntent and charge ids.

    `state_dir`: the emulators keep their data in that folder. When it holds a sandbox saved earlier, that
    sandbox comes back as it was (on new ports unless given; the seeding options are then ignored), else a new
    one is seeded and saved there. A saved sandbox that can't be read raises `persist.SnapshotError`."""
    if stripe_mode not in STRIPE_MODES:
        raise ValueError(f"stripe_mode must be one of {', '.join(STRIPE_MODES)}")
    spec = faults.spec if isinstance(faults, FaultPlan) else (faults or "")
    FaultPlan.parse(spec)  # fail before anything starts
    if state_dir is not None and has_saved_sandbox(state_dir):
        ports = {"cliniko": cliniko_port, "stripe": stripe_port, "calcom": calcom_port}
        return _resume(Path(state_dir), ports, latency_ms=latency_ms, rate_limits=rate_limits, spec=spec)
    emulator = ClinikoEmulator(seed=seed)
    cliniko = serve(
        emulator, port=cliniko_port, latency_ms=latency_ms, rate_limits=rate_limits, faults=FaultPlan.parse(spec)
    )
    seeded = _admin_body(
        emulator.admin("seed", {"profile": profile, "patients": patients, "seed": seed, "products": products})
    )
    if invoices:
        params = {"invoices": invoices, "customers": invoice_customers, "seed": seed}
        seeded["invoice_scenario"] = _admin_body(emulator.admin("seed_invoices", params))
    sandbox = Sandbox(cliniko=cliniko, stripe=None, cliniko_key=DEFAULT_API_KEY, stripe_key=None, seeded=seeded)
    try:
        _start_stripe(sandbox, stripe_mode, stripe_port, latency_ms, rate_limits, spec, search_delay_s)
        if calcom:
            _start_calcom(sandbox, profile, patients, seed, calcom_bookings, calcom_port, latency_ms, rate_limits, spec)
            if calcom_payments:
                _load_calcom_payments(sandbox, stripe_mode)
        if state_dir is not None:
            _keep_state(sandbox, Path(state_dir), seed=seed, stripe_mode=stripe_mode)
    except BaseException:
        sandbox.stop()
        raise
    return sandbox


def has_saved_sandbox(state_dir: Path) -> bool:
    return (Path(state_dir) / STATE_FILE).is_file()


def _emulators(sandbox: Sandbox) -> list[Any]:
    return [server.emulator for server in sandbox.servers()]


def _keep_state(sandbox: Sandbox, state_dir: Path, *, seed: int, stripe_mode: str) -> None:
    """Save a freshly seeded sandbox in `state_dir` and keep saving it as it changes."""
    (state_dir / STATE_FILE).unlink(missing_ok=True)  # until every snapshot below is written
    for emulator in _emulators(sandbox):
        persist.save(emulator, persist.snapshot_path(state_dir, emulator))
    state = {
        "format": STATE_FORMAT,
        "emulators": [emulator.name for emulator in _emulators(sandbox)],
        "seed": seed,
        "stripe_mode": stripe_mode,
        "seeded": sandbox.seeded,
        "calcom_seeded": sandbox.calcom_seeded,
    }
    persist.write_atomically(state_dir / STATE_FILE, json.dumps(state, indent=1).encode("utf-8"))
    _attach_keepers(sandbox, state_dir)


def _attach_keepers(sandbox: Sandbox, state_dir: Path) -> None:
    for server in sandbox.servers():
        keeper = persist.SnapshotKeeper(server.emulator, persist.snapshot_path(state_dir, server.emulator))
        server.on_change = keeper.changed
        sandbox.keepers.append(keeper)


def _read_state(state_dir: Path) -> dict[str, Any]:
    path = state_dir / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise persist.SnapshotError(f"The sandbox clinic's saved data ({path}) can't be read: {exc}.") from exc
    emulators = state.get("emulators") if isinstance(state, dict) else None
    if not isinstance(emulators, list) or "cliniko" not in emulators or state.get("format") != STATE_FORMAT:
        raise persist.SnapshotError(f"The sandbox clinic's saved data ({path}) is not a sandbox ClinicSync can use.")
    return state


def _resume(state_dir: Path, ports: Mapping[str, int], *, latency_ms: float, rate_limits: bool, spec: str) -> Sandbox:
    """Bring back the sandbox saved in `state_dir`: every snapshot is read before any server starts."""
    state = _read_state(state_dir)
    seed = int(state.get("seed", 1))
    emulators: dict[str, Any] = {"cliniko": ClinikoEmulator(seed=seed)}
    if "stripe" in state["emulators"]:
        from clinicsync.sandbox.stripe_emu import StripeEmulator

        emulators["stripe"] = StripeEmulator(mode=str(state.get("stripe_mode", "test")))
    if "calcom" in state["emulators"]:
        emulators["calcom"] = calcom_emu.CalcomEmulator(seed=seed)
    for emulator in emulators.values():
        path = persist.snapshot_path(state_dir, emulator)
        if not persist.load(emulator, path):
            raise persist.SnapshotError(f"The sandbox clinic's saved data is incomplete: {path} is missing.")

    def start(name: str) -> RunningServer:
        port, plan = ports.get(name, 0), FaultPlan.parse(spec)
        return serve(emulators[name], port=port, latency_ms=latency_ms, rate_limits=rate_limits, faults=plan)

    cliniko = emulators["cliniko"]
    sandbox = Sandbox(
        cliniko=start("cliniko"),
        stripe=None,
        cliniko_key=cliniko.api_key,
        stripe_key=None,
        seeded=dict(state.get("seeded") or {}),
        calcom_seeded=dict(state.get("calcom_seeded") or {}),
    )
    try:
        if "stripe" in emulators:
            sandbox.stripe = start("stripe")
            sandbox.stripe_key = emulators["stripe"].default_key
        if "calcom" in emulators:
            sandbox.calcom = start("calcom")
            sandbox.calcom_key = emulators["calcom"].api_key
    except BaseException:
        sandbox.stop()
        raise
    _attach_keepers(sandbox, state_dir)
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
    customers = list(sandbox.seeded.get("stripe_customers") or [])
    products = sandbox.seeded.get("stripe_products") or []
    scenario = sandbox.seeded.get("invoice_scenario")
    payments = scenario["stripe"]["payments"] if scenario else []
    if scenario:
        customers += scenario["stripe"]["customers"]
    if customers or products:
        body = {"customers": customers, "products": products, "payments": payments, "livemode": mode == "live"}
        made = _admin_body(emulator.admin("seed", body))
        if scenario:
            scenario["customer_ids"] = made["refs"]  # patient id -> Stripe customer id
            scenario["payments"] = {p["ref"]: {k: p[k] for k in ("payment_intent", "charge")} for p in made["payments"]}
    sandbox.stripe = serve(
        emulator, port=port, latency_ms=latency_ms, rate_limits=rate_limits, faults=FaultPlan.parse(spec)
    )
    # Keys look like "sk_test_sandbox_clinic_a": underscores break the part after the prefix, so the key is
    # never a 16+ character alphanumeric run that secret scanners would take for a real Stripe key.
    sandbox.stripe_key = getattr(emulator, "default_key", f"sk_{mode}_sandbox_clinic_a")


def _start_calcom(
    sandbox: Sandbox,
    profile: str,
    patients: int,
    seed: int,
    bookings: int,
    port: int,
    latency_ms: float,
    rate_limits: bool,
    spec: str,
) -> None:
    emulator = calcom_emu.CalcomEmulator(seed=seed)
    params = {"profile": profile, "patients": patients, "seed": seed, "bookings": bookings}
    sandbox.calcom_seeded = _admin_body(emulator.admin("seed", params))
    sandbox.calcom = serve(
        emulator, port=port, latency_ms=latency_ms, rate_limits=rate_limits, faults=FaultPlan.parse(spec)
    )
    sandbox.calcom_key = emulator.api_key


def _load_calcom_payments(sandbox: Sandbox, stripe_mode: str) -> None:
    assert sandbox.stripe is not None
    payments = calcom_seed.clinic_payments(sandbox.calcom_seeded["payment_intents"])
    params = {"payments": payments, "livemode": stripe_mode == "live"}
    sandbox.calcom_seeded["stripe_payments"] = _admin_body(sandbox.stripe.emulator.admin("seed", params))["payments"]


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
        prog="clinicsync sandbox", description="Run loopback Cliniko, Stripe and (with --calcom) Cal.com emulators."
    )
    parser.add_argument("--profile", choices=("clean", "hard", "hostile"), default="clean")
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--products", type=int, default=DEFAULT_PRODUCTS, help="Cliniko products to seed (0: none)")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--stripe-mode", choices=STRIPE_MODES, default="test")
    parser.add_argument("--faults", default="", help="fault spec, e.g. before:5xx=0.1,after:reset=0.02,seed=1")
    parser.add_argument(
        "--rate-limits", action="store_true", help="enforce Cliniko's 200/min, Stripe's and Cal.com's 120/min limits"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cliniko-port", type=int, default=0)
    parser.add_argument("--stripe-port", type=int, default=0)
    parser.add_argument("--calcom", action="store_true", help="also run the Cal.com emulator")
    parser.add_argument("--calcom-port", type=int, default=0)
    parser.add_argument("--calcom-bookings", type=int, default=60, help="about this many seeded Cal.com bookings")
    parser.add_argument(
        "--calcom-payments", action="store_true", help="put the payments Cal.com's Stripe app took into Stripe"
    )
    parser.add_argument("--invoices", type=int, default=0, help="seed the invoices/payments scenario (0: none)")
    parser.add_argument("--invoice-customers", type=int, default=300, help="patients the invoice scenario bills")
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
            calcom=args.calcom,
            calcom_port=args.calcom_port,
            calcom_bookings=args.calcom_bookings,
            calcom_payments=args.calcom_payments,
            invoices=args.invoices,
            invoice_customers=args.invoice_customers,
        )
    except ValueError as exc:
        print(f"clinicsync sandbox: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # Its own profile: the sandbox's accounts would otherwise land in the user's real one, and a profile from
    # an earlier run would hold links to customers these fresh emulators never had.
    demo_home = Path(tempfile.mkdtemp(prefix="clinicsync-sandbox-"))
    try:
        with sandbox:
            info = sandbox.describe()
            _print_banner(info, {HOME_ENV_VAR: str(demo_home), **info["env"]})
            if args.port_file:
                _write_atomically(args.port_file, json.dumps(info, indent=2))
            while not stop.wait(0.5):
                pass
    finally:
        shutil.rmtree(demo_home, ignore_errors=True)  # invented data only, useless once the emulators stop
    return 0


def env_lines(env: Mapping[str, str], *, powershell: bool = os.name == "nt") -> list[str]:
    """Lines that set `env` when pasted into a shell: POSIX `export`, or PowerShell on Windows."""
    if powershell:
        return [f"$env:{name} = '{value.replace(chr(39), chr(39) * 2)}'" for name, value in env.items()]
    return [f"export {name}={shlex.quote(value)}" for name, value in env.items()]


def _print_banner(info: dict[str, Any], env: Mapping[str, str]) -> None:
    print(f"Cliniko sandbox: {info['cliniko_url']}  key: {info['cliniko_key']}")
    if info["stripe_url"]:
        print(f"Stripe sandbox:  {info['stripe_url']}  key: {info['stripe_key']}")
    else:
        print("Stripe sandbox:  not available (clinicsync.sandbox.stripe_emu missing)")
    if info["calcom_url"]:
        print(f"Cal.com sandbox: {info['calcom_url']}  key: {info['calcom_key']}")
    print("For a headless run in a separate demo profile (deleted when the sandbox stops), paste into a shell:")
    print()
    for line in env_lines(env):
        print(line)
    print()
    print("Ctrl+C to stop.", flush=True)


def _write_atomically(path: Path, text: str) -> None:
    # A test polling for the file must never read it half-written.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
