"""The generic sandbox server: keep-alive, latency, rate limits, faults, stats and the admin API, over real HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clinicsync.sandbox.faults import FaultPlan
from clinicsync.sandbox.http import RateLimit, Request, Response
from clinicsync.sandbox.server import RunningServer, endpoint_name, serve


class CounterEmulator:
    """A tiny emulator: POST /v1/items creates an item (idempotency keys replay), GET lists them."""

    name = "counter"

    def __init__(self) -> None:
        self.items: list[str] = []
        self.saved: dict[str, Response] = {}
        self.faults: FaultPlan | None = None
        self.rate_limit_per_minute = 3
        self.only_posts_faultable = False
        self.lock = threading.Lock()

    def handle(self, request: Request) -> Response:
        if request.path == "/v1/items" and request.method == "GET":
            return Response(200, {"items": list(self.items)})
        if request.path == "/v1/items" and request.method == "POST":
            return self._create(request)
        return Response(404, {"error": "no such route"})

    def _create(self, request: Request) -> Response:
        body = json.loads(request.body or b"{}")
        if "name" not in body:
            return Response(400, {"error": "name is required"})
        key = request.headers.get("idempotency-key")
        with self.lock:
            if key and key in self.saved:
                saved = self.saved[key]
                return Response(saved.status, saved.body, replayed=True)
            self.items.append(body["name"])
            response = Response(200, {"id": len(self.items), "name": body["name"]}, mutated=True)
            if key:
                self.saved[key] = response
            return response

    def rate_limit(self, request: Request) -> RateLimit | None:
        return RateLimit(key="everyone", limit=self.rate_limit_per_minute, per_seconds=60)

    def rate_limited_response(self, request: Request, reset_epoch: float) -> Response:
        return Response(429, {"error": "slow down"}, {"X-RateLimit-Reset": str(int(reset_epoch))})

    def fault_response(self, request: Request, status: int) -> Response:
        return Response(status, {"error": f"injected {status}"})

    def fault_eligible(self, request: Request) -> bool:
        return request.method == "POST" if self.only_posts_faultable else True

    def admin(self, action: str, params: dict[str, Any]) -> Response | None:
        if action == "reset":
            self.items.clear()
            self.saved.clear()
            return Response(200, {"ok": True})
        if action == "count":
            return Response(200, {"count": len(self.items), "echo": params})
        return None


@pytest.fixture
def emulator() -> CounterEmulator:
    return CounterEmulator()


@pytest.fixture
def server(emulator: CounterEmulator) -> Iterator[RunningServer]:
    with serve(emulator) as srv:
        yield srv


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as c:
        yield c


def set_faults(client: httpx.Client, srv: RunningServer, spec: str) -> None:
    response = client.post(f"{srv.url}/_sandbox/faults", json={"spec": spec})
    assert response.status_code == 200, response.text


def create(client: httpx.Client, srv: RunningServer, name: str, **kwargs: Any) -> httpx.Response:
    return client.post(f"{srv.url}/v1/items", json={"name": name}, **kwargs)


# -- binding, keep-alive, latency ---------------------------------------------------------------------


def test_binds_loopback_only(server: RunningServer) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server._httpd.server_address[0] == "127.0.0.1"
    if sys.platform.startswith("linux"):
        # All of 127/8 is local on Linux; a server bound to 127.0.0.1 alone refuses 127.0.0.2.
        with pytest.raises(OSError), socket.create_connection(("127.0.0.2", server.port), timeout=1):
            pass


def test_keep_alive_reuses_one_connection(server: RunningServer, client: httpx.Client) -> None:
    for i in range(20):
        assert create(client, server, f"item-{i}").status_code == 200
        response = client.get(f"{server.url}/v1/items")
        assert response.status_code == 200
        assert response.headers["content-length"] == str(len(response.content))
    stats = client.get(f"{server.url}/_sandbox/stats").json()
    assert stats["connections"] == 1
    assert stats["requests"] == 40


def test_tcp_nodelay_is_set_on_accepted_sockets(server: RunningServer, client: httpx.Client) -> None:
    client.get(f"{server.url}/v1/items")
    with server._conns_lock:
        conns = list(server._conns)
    assert conns
    assert all(c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for c in conns)


def test_latency_knob_delays_requests_but_not_admin(emulator: CounterEmulator, client: httpx.Client) -> None:
    with serve(emulator, latency_ms=150) as srv:
        started = time.perf_counter()
        client.get(f"{srv.url}/v1/items")
        assert time.perf_counter() - started >= 0.15
        started = time.perf_counter()
        client.get(f"{srv.url}/_sandbox/stats")
        assert time.perf_counter() - started < 0.15
        client.post(f"{srv.url}/_sandbox/config", json={"latency_ms": 0})
        assert srv.latency_ms == 0


def test_stop_returns_with_idle_keep_alive_connection(emulator: CounterEmulator, client: httpx.Client) -> None:
    srv = serve(emulator)
    client.get(f"{srv.url}/v1/items")  # leaves an idle kept-alive connection behind
    started = time.perf_counter()
    srv.stop()
    assert time.perf_counter() - started < 3
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{srv.url}/v1/items", timeout=1)


# -- rate limits ---------------------------------------------------------------------------------------


def test_rate_limit_answers_429_with_reset_and_executes_nothing(
    emulator: CounterEmulator, client: httpx.Client
) -> None:
    with serve(emulator, rate_limits=True) as srv:
        assert [create(client, srv, f"n{i}").status_code for i in range(3)] == [200, 200, 200]
        limited = create(client, srv, "over")
        assert limited.status_code == 429
        reset = int(limited.headers["x-ratelimit-reset"])
        assert time.time() < reset <= time.time() + 62
        assert emulator.items == ["n0", "n1", "n2"]
        stats = client.get(f"{srv.url}/_sandbox/stats").json()
        assert stats["rate_limited"] == 1
        assert stats["rejected_total"] == 0  # a rate-limit answer is not a rejection by the emulator


def test_rate_limits_can_be_switched_on_by_admin(server: RunningServer, client: httpx.Client) -> None:
    for i in range(5):
        assert create(client, server, f"n{i}").status_code == 200
    client.post(f"{server.url}/_sandbox/config", json={"rate_limits": True})
    codes = [client.get(f"{server.url}/v1/items").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]


# -- faults before execution ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "statuses"), [("before:5xx", {500, 502, 503}), ("before:429", {429})])
def test_before_status_faults_execute_nothing(
    server: RunningServer, emulator: CounterEmulator, client: httpx.Client, kind: str, statuses: set[int]
) -> None:
    set_faults(client, server, f"{kind}=1,seed=3")
    for i in range(5):
        assert create(client, server, f"n{i}").status_code in statuses
    assert emulator.items == []
    stats = server.stats.snapshot()
    assert stats["faulted"] == {kind: 5}
    assert stats["mutations_total"] == 0


def test_skip_lets_the_first_requests_through_so_an_outage_can_start_mid_run(
    server: RunningServer, emulator: CounterEmulator, client: httpx.Client
) -> None:
    set_faults(client, server, "before:503=1,skip=3")
    codes = [create(client, server, f"n{i}").status_code for i in range(6)]
    assert codes == [200, 200, 200, 503, 503, 503]
    assert len(emulator.items) == 3 and server.stats.snapshot()["faulted"] == {"before:503": 3}
    assert FaultPlan.parse("skip=2").snapshot()["skip"] == 2


def test_before_timeout_holds_then_closes_and_executes_nothing(
    server: RunningServer, emulator: CounterEmulator, client: httpx.Client
) -> None:
    set_faults(client, server, "before:timeout=1,timeout_s=0.6")
    with pytest.raises(httpx.ReadTimeout):
        create(client, server, "late", timeout=0.2)
    started = time.perf_counter()
    with pytest.raises(httpx.TransportError):  # a patient client sees the connection closed, no answer
        create(client, server, "later", timeout=5)
    assert 0.5 <= time.perf_counter() - started < 3
    assert emulator.items == []
    assert server.stats.snapshot()["faulted"] == {"before:timeout": 2}


def test_before_reset_drops_the_connection_and_executes_nothing(
    server: RunningServer, emulator: CounterEmulator, client: httpx.Client
) -> None:
    set_faults(client, server, "before:reset=1")
    with pytest.raises(httpx.TransportError):
        create(client, server, "gone")
    assert emulator.items == []
    set_faults(client, server, "")  # the same client recovers on a fresh connection
    assert create(client, server, "ok").status_code == 200
    assert emulator.items == ["ok"]


def test_after_commit_reset_keeps_the_change_but_loses_the_answer(
    server: RunningServer, emulator: CounterEmulator, client: httpx.Client
) -> None:
    set_faults(client, server, "after:reset=1")
    with pytest.raises(httpx.TransportError):
        create(client, server, "committed", headers={"Idempotency-Key": "k1"})
    assert emulator.items == ["committed"]
    set_faults(client, server, "")
    retry = create(client, server, "committed", headers={"Idempotency-Key": "k1"})
    assert retry.status_code == 200
    assert emulator.items == ["committed"]  # the retry replayed instead of creating a duplicate
    stats = server.stats.snapshot()
    assert stats["mutations"] == {"POST /v1/items": 1}
    assert stats["replays"] == {"POST /v1/items": 1}
    assert stats["faulted"] == {"after:reset": 1}


def test_faults_skip_requests_the_emulator_marks_ineligible(
    server: RunningServer, emulator: CounterEmulator, client: httpx.Client
) -> None:
    emulator.only_posts_faultable = True
    set_faults(client, server, "before:5xx=1")
    assert client.get(f"{server.url}/v1/items").status_code == 200
    assert create(client, server, "x").status_code >= 500


def test_admin_routes_are_never_faulted(server: RunningServer, client: httpx.Client) -> None:
    set_faults(client, server, "before:reset=1,after:reset=1")
    assert client.get(f"{server.url}/_sandbox/stats").status_code == 200


def test_emulator_sees_the_live_fault_plan(
    server: RunningServer, emulator: CounterEmulator, client: httpx.Client
) -> None:
    set_faults(client, server, "stored500=0.5,seed=9")
    assert emulator.faults is server.faults
    assert emulator.faults is not None and emulator.faults.rates == {"stored500": 0.5}


# -- stats and admin -----------------------------------------------------------------------------------


def test_stats_count_mutations_replays_rejections_and_faults(server: RunningServer, client: httpx.Client) -> None:
    create(client, server, "a", headers={"Idempotency-Key": "a"})
    create(client, server, "a", headers={"Idempotency-Key": "a"})  # replay
    create(client, server, "b")
    client.post(f"{server.url}/v1/items", json={})  # 400: rejected
    client.get(f"{server.url}/v1/nothing/123")  # 404: rejected, endpoint templated
    set_faults(client, server, "before:503=1")
    create(client, server, "c")
    stats = client.get(f"{server.url}/_sandbox/stats").json()
    assert stats["requests"] == 6
    assert stats["mutations"] == {"POST /v1/items": 2}
    assert stats["replays"] == {"POST /v1/items": 1}
    assert stats["rejected"] == {"POST /v1/items": 1, "GET /v1/nothing/{id}": 1}
    assert stats["faulted"] == {"before:503": 1}
    assert stats["errors"] == 0
    client.post(f"{server.url}/_sandbox/reset", json={})
    after = client.get(f"{server.url}/_sandbox/stats").json()
    assert after["requests"] == 0 and after["mutations"] == {}


def test_admin_forwards_unknown_actions_and_404s_what_the_emulator_lacks(
    server: RunningServer, client: httpx.Client
) -> None:
    create(client, server, "a")
    response = client.post(f"{server.url}/_sandbox/count", json={"x": 1})
    assert response.json() == {"count": 1, "echo": {"x": 1}}
    assert client.post(f"{server.url}/_sandbox/nope", json={}).status_code == 404
    assert client.post(f"{server.url}/_sandbox/count", content=b"{not json").status_code == 400


def test_admin_rejects_a_malformed_fault_spec(server: RunningServer, client: httpx.Client) -> None:
    response = client.post(f"{server.url}/_sandbox/faults", json={"spec": "before:5xx=lots"})
    assert response.status_code == 400
    assert "before:5xx=lots" in response.json()["error"]


def test_emulator_crash_becomes_a_500_and_is_counted(client: httpx.Client) -> None:
    class Broken:
        name = "broken"

        def handle(self, request: Request) -> Response:
            raise RuntimeError("boom")

    with serve(Broken()) as srv:
        assert client.get(f"{srv.url}/v1/x").status_code == 500
        assert srv.stats.snapshot()["errors"] == 1


def test_default_endpoint_names_template_ids() -> None:
    def name(method: str, path: str) -> str:
        return endpoint_name(object(), Request(method, path, [], {}))

    assert name("POST", "/v1/customers/cus_NffrFeUfNV2Hib") == "POST /v1/customers/{id}"
    assert name("GET", "/v1/patients/1000000000000000001") == "GET /v1/patients/{id}"
    assert name("GET", "/v1/payment_intents") == "GET /v1/payment_intents"
    assert name("GET", "/v1/customers/search") == "GET /v1/customers/search"


def test_query_pairs_keep_order_repeats_and_blanks(client: httpx.Client) -> None:
    seen: list[Request] = []

    class Recorder:
        name = "recorder"

        def handle(self, request: Request) -> Response:
            seen.append(request)
            return Response(200, "ok")

    with serve(Recorder()) as srv:
        response = client.get(f"{srv.url}/v1/x?q%5B%5D=a:%3E1&q%5B%5D=b&blank=&Z=1", headers={"X-Thing": "T"})
        assert response.text == "ok"
    request = seen[0]
    assert request.query == [("q[]", "a:>1"), ("q[]", "b"), ("blank", ""), ("Z", "1")]
    assert request.headers["x-thing"] == "T"
    assert request.base_url == srv.url


# -- the fault plan itself -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    ["before:5xx=lots", "before:boom=0.1", "before:5xx", "after:reset=1.5", "seed=x", "max=-1", "timeout_s=-2"],
)
def test_malformed_fault_spec_raises_a_clear_value_error(spec: str) -> None:
    with pytest.raises(ValueError, match="fault spec token") as info:
        FaultPlan.parse(f"seed=1, {spec}")
    assert spec.split("=")[0] in str(info.value)


def test_fault_plan_parses_the_documented_example() -> None:
    plan = FaultPlan.parse(
        "before:5xx=0.10,before:429=0.05,before:timeout=0.01,before:reset=0.01,after:reset=0.02,"
        "stored500=0.01,seed=42,timeout_s=1.5,max=20,max:stored500=3"
    )
    assert plan.rates["before:5xx"] == 0.10 and plan.rates["stored500"] == 0.01
    assert plan.seed == 42 and plan.timeout_seconds == 1.5
    assert plan.max_total == 20 and plan.max_per_kind == {"stored500": 3}
    assert FaultPlan.parse("").active is False


def test_fault_plan_is_reproducible_and_honours_limits() -> None:
    def draws(seed: int) -> list[str | None]:
        plan = FaultPlan.parse(f"before:5xx=0.3,before:reset=0.2,seed={seed}")
        return [plan.choose() for _ in range(50)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    limited = FaultPlan.parse("stored500=1,max:stored500=3")
    assert sum(limited.roll("stored500") for _ in range(10)) == 3
    capped = FaultPlan.parse("before:500=1,after:reset=1,max=4")
    fired = sum(capped.choose() is not None for _ in range(3)) + sum(capped.roll("after:reset") for _ in range(3))
    assert fired == 4


# -- the launcher --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["test", "live"])
def test_start_sandbox_serves_seeded_cliniko_and_stripe(mode: str) -> None:
    from clinicsync.sandbox.launcher import start_sandbox

    with start_sandbox(profile="hard", patients=22, stripe_mode=mode) as sb:
        env = sb.env()
        assert env["CLINICSYNC_CLINIKO_BASE_URL"] == sb.cliniko_url and sb.cliniko_url.endswith("/v1")
        assert env["CLINICSYNC_CONTACT_EMAIL"] == "sandbox@example.com"
        patients = httpx.get(
            f"{sb.cliniko_url}/patients",
            auth=(env["CLINICSYNC_CLINIKO_API_KEY"], ""),
            headers={"User-Agent": "ClinicSync tests (dev@example.com)"},
        )
        assert patients.status_code == 200
        assert patients.json()["total_entries"] == 20  # 22 seeded, one archived, one merged away
        if sb.stripe is None:
            pytest.skip("Stripe emulator not importable")
        key = env["CLINICSYNC_STRIPE_API_KEY"]
        assert key.startswith(f"sk_{mode}_") and not re.search(r"[A-Za-z0-9]{16,}", key.split("_", 2)[2])
        customers = httpx.get(f"{env['CLINICSYNC_STRIPE_BASE_URL']}/v1/customers", auth=(key, ""))
        assert customers.status_code == 200
        assert len(customers.json()["data"]) == len(sb.seeded["stripe_customers"]) == 4
        products = httpx.get(f"{env['CLINICSYNC_STRIPE_BASE_URL']}/v1/products", auth=(key, "")).json()["data"]
        assert sorted(p["name"] for p in products) == sorted(p["name"] for p in sb.seeded["stripe_products"])
        assert len(products) == 4 and {p["livemode"] for p in products} == {mode == "live"}
        catalogue = httpx.get(
            f"{sb.cliniko_url}/products",
            params={"q[]": "archived_at:*"},
            auth=(env["CLINICSYNC_CLINIKO_API_KEY"], ""),
            headers={"User-Agent": "ClinicSync tests (dev@example.com)"},
        )
        assert catalogue.json()["total_entries"] == len(sb.seeded["product_ids"]) == 200


def test_launcher_process_writes_port_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "sandbox.json"
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "clinicsync.sandbox.launcher", "--profile", "clean", "--patients", "5",
         "--port-file", str(port_file)],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert port_file.exists(), proc.stderr.read() if proc.poll() is not None and proc.stderr else "no port file"
        info = json.loads(port_file.read_text())
        response = httpx.get(
            f"{info['cliniko_url']}/patients",
            auth=(info["cliniko_key"], ""),
            headers={"User-Agent": "ClinicSync tests (dev@example.com)"},
        )
        assert response.json()["total_entries"] == 5
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert info["cliniko_url"] in out


def test_env_lines_paste_as_they_are_in_a_posix_shell_and_in_powershell() -> None:
    from clinicsync.sandbox.launcher import env_lines

    env = {"CLINICSYNC_HOME": "/tmp/clinic's sandbox", "CLINICSYNC_CONTACT_EMAIL": "sandbox@example.com"}
    posix = env_lines(env, powershell=False)
    assert posix[1] == "export CLINICSYNC_CONTACT_EMAIL=sandbox@example.com"
    shown = subprocess.run(
        ["sh", "-c", "\n".join([*posix, 'printf %s "$CLINICSYNC_HOME"'])], capture_output=True, text=True, check=True
    )
    assert shown.stdout == "/tmp/clinic's sandbox"
    assert env_lines(env, powershell=True) == [
        "$env:CLINICSYNC_HOME = '/tmp/clinic''s sandbox'",
        "$env:CLINICSYNC_CONTACT_EMAIL = 'sandbox@example.com'",
    ]


def test_launcher_rejects_a_bad_fault_spec() -> None:
    from clinicsync.sandbox.launcher import main

    assert main(["--faults", "before:nope=1"]) == 2
