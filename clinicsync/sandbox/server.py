"""A loopback HTTP server around one emulator: latency, rate limits, fault injection, stats, admin API.

Usage::

    with serve(StripeEmulator(), faults=FaultPlan.parse("before:5xx=0.1,seed=1")) as srv:
        httpx.get(srv.url + "/v1/customers")

Per request, in order: `/_sandbox/...` admin routes (never delayed, faulted or rate-limited) → latency →
rate limit (if enabled) → before-execution fault → `emulator.handle` → after-commit fault → response.

Optional emulator hooks (duck-typed, see `http.AdminCapable`): `rate_limit`, `rate_limited_response`,
`rate_limit_headers`, `fault_response`, `admin`, `fault_eligible(request) -> bool`, `endpoint_name(request) -> str`,
and a `faults` attribute that the server sets to the live `FaultPlan` (the Stripe emulator rolls `stored500`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from clinicsync.sandbox.faults import AFTER_KINDS, BEFORE_KINDS, FaultPlan
from clinicsync.sandbox.http import Admission, RateLimit, Request, Response

log = logging.getLogger("clinicsync.sandbox")

HOST = "127.0.0.1"
ADMIN_PREFIX = "/_sandbox/"

_READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DIGITS = re.compile(r"^\d+$")
# Stripe-style ids ("cus_NffrFeUfNV2Hib", "pi_3Mtw...") have a short prefix and a suffix with a digit or capital;
# resource names such as "payment_intents" or "tax_ids" have neither, so they stay literal.
_PREFIXED_ID = re.compile(r"^[a-z]{1,10}_[A-Za-z0-9_]*[0-9A-Z][A-Za-z0-9_]*$")


# -- stats ---------------------------------------------------------------------------------------------


class ServerStats:
    """Thread-safe counters; `snapshot()` is what `GET /_sandbox/stats` returns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.by_endpoint: Counter[str] = Counter()
            self.mutations: Counter[str] = Counter()
            self.replays: Counter[str] = Counter()
            self.rejected: Counter[str] = Counter()
            self.faulted: Counter[str] = Counter()
            self.rate_limited = 0
            self.errors = 0
            self.connections = 0

    def record_request(self, endpoint: str) -> None:
        with self._lock:
            self.requests += 1
            self.by_endpoint[endpoint] += 1

    def record_response(self, endpoint: str, response: Response) -> None:
        with self._lock:
            if response.mutated:
                self.mutations[endpoint] += 1
            if response.replayed:
                self.replays[endpoint] += 1
            if 400 <= response.status < 500:
                self.rejected[endpoint] += 1

    def record_fault(self, kind: str) -> None:
        with self._lock:
            self.faulted[kind] += 1

    def record_rate_limited(self) -> None:
        with self._lock:
            self.rate_limited += 1

    def record_connection(self) -> None:
        with self._lock:
            self.connections += 1

    def record_error(self) -> None:
        with self._lock:
            self.errors += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "by_endpoint": dict(self.by_endpoint),
                "mutations": dict(self.mutations),
                "mutations_total": sum(self.mutations.values()),
                "replays": dict(self.replays),
                "replays_total": sum(self.replays.values()),
                "rejected": dict(self.rejected),
                "rejected_total": sum(self.rejected.values()),
                "faulted": dict(self.faulted),
                "faulted_total": sum(self.faulted.values()),
                "rate_limited": self.rate_limited,
                "errors": self.errors,
                "connections": self.connections,  # TCP connections accepted: shows keep-alive working
            }


# -- rate limiting -------------------------------------------------------------------------------------


class RateLimiter:
    """A fixed window per bucket key: the window opens at the bucket's first request. With a block duration, the
    first refused request blocks the bucket for that long (refused requests do not extend it)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int, float]] = {}  # key -> (window start, used, blocked until)

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()

    def admit(self, key: str, limit: int, per_seconds: float) -> float | None:
        """None if admitted, else the epoch second at which the window resets."""
        admission = self.check(RateLimit(key, limit, per_seconds))
        return None if admission.admitted else admission.reset_epoch

    def check(self, bucket: RateLimit) -> Admission:
        now = self._clock()
        with self._lock:
            start, used, blocked_until = self._windows.get(bucket.key, (now, 0, 0.0))
            if now < blocked_until:
                return Admission(False, bucket.limit, 0, blocked_until)
            if blocked_until or now >= start + bucket.per_seconds:  # a block's end also starts a fresh window
                start, used = now, 0
            if used >= bucket.limit:
                if bucket.block_seconds > 0:
                    blocked_until = now + bucket.block_seconds
                    self._windows[bucket.key] = (start, used, blocked_until)
                    return Admission(False, bucket.limit, 0, blocked_until)
                # whole seconds, rounded up like Cliniko's header
                return Admission(False, bucket.limit, 0, float(int(start + bucket.per_seconds) + 1))
            self._windows[bucket.key] = (start, used + 1, 0.0)
            return Admission(True, bucket.limit, bucket.limit - used - 1, start + bucket.per_seconds)


# -- the running server --------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    sandbox: RunningServer

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        # Without TCP_NODELAY, Nagle + delayed ACK add ~40 ms to every request on a kept-alive connection.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sandbox._track(conn)
        self.sandbox.stats.record_connection()
        return conn, addr

    def shutdown_request(self, request: Any) -> None:
        self.sandbox._untrack(request)
        if request.fileno() == -1:  # already closed by a reset fault
            return
        super().shutdown_request(request)


class RunningServer:
    """One emulator served on 127.0.0.1; a context manager that stops the server on exit."""

    def __init__(self, emulator: Any, *, port: int, latency_ms: float, rate_limits: bool, faults: FaultPlan) -> None:
        self.emulator = emulator
        self.latency_ms = latency_ms
        self.rate_limits = rate_limits
        self.stats = ServerStats()
        self.limiter = RateLimiter()
        # Called after every request that may have changed the emulator's data (sandbox/persist.py saves then).
        self.on_change: Callable[[], None] | None = None
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self.faults = faults
        self.set_faults(faults)
        self._httpd = _Server((HOST, port), _make_handler(self))
        self._httpd.sandbox = self
        self.port: int = self._httpd.server_address[1]
        self.url = f"http://{HOST}:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"sandbox-{self.name}", daemon=True
        )
        self._thread.start()

    @property
    def name(self) -> str:
        return str(getattr(self.emulator, "name", "emulator"))

    def set_faults(self, plan: FaultPlan) -> None:
        self.faults = plan
        if hasattr(self.emulator, "faults"):
            self.emulator.faults = plan

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()  # wakes any handler holding a connection for a timeout fault
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:  # idle keep-alive connections would otherwise keep their threads blocked
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _track(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(conn)


def serve(
    emulator: Any,
    *,
    port: int = 0,
    latency_ms: float = 0.0,
    rate_limits: bool = False,
    faults: FaultPlan | None = None,
) -> RunningServer:
    """Start serving `emulator` on 127.0.0.1:`port` (0 = any free port) in a background thread."""
    return RunningServer(
        emulator, port=port, latency_ms=latency_ms, rate_limits=rate_limits, faults=faults or FaultPlan()
    )


# -- request pipeline ----------------------------------------------------------------------------------


class _TruncatedBody(Exception):
    """Fewer body bytes arrived than Content-Length announced."""


class _Drop(Exception):
    """Raised inside the pipeline to end the connection without a response."""

    def __init__(self, hold_seconds: float = 0.0) -> None:
        super().__init__()
        self.hold_seconds = hold_seconds


def endpoint_name(emulator: Any, request: Request) -> str:
    hook = getattr(emulator, "endpoint_name", None)
    if hook is not None:
        return str(hook(request))
    parts = ["{id}" if _DIGITS.match(seg) or _PREFIXED_ID.match(seg) else seg for seg in request.path.split("/")]
    return f"{request.method} {'/'.join(parts)}"


def _fault_eligible(emulator: Any, request: Request) -> bool:
    hook = getattr(emulator, "fault_eligible", None)
    return True if hook is None else bool(hook(request))


def _fault_response(emulator: Any, request: Request, status: int) -> Response:
    hook = getattr(emulator, "fault_response", None)
    if hook is not None:
        return hook(request, status)
    return Response(status, {"error": {"message": f"sandbox injected fault: HTTP {status}"}})


def process(srv: RunningServer, request: Request) -> Response:
    """Everything except admin routes; raises _Drop for faults that give no response."""
    emulator = srv.emulator
    endpoint = endpoint_name(emulator, request)
    srv.stats.record_request(endpoint)
    if srv.latency_ms > 0:
        time.sleep(srv.latency_ms / 1000.0)
    limited, limit_headers = _check_rate_limit(srv, request)
    if limited is not None:
        return limited
    eligible = _fault_eligible(emulator, request)
    if eligible:
        _before_fault(srv, request)  # returns normally, raises _Drop, or raises _Answer
    try:
        response = emulator.handle(request)
    except Exception:
        log.exception("sandbox %s crashed on %s %s", srv.name, request.method, request.path)
        srv.stats.record_error()
        return Response(500, {"error": {"message": "sandbox emulator error (see the server log)"}})
    srv.stats.record_response(endpoint, response)
    for name, value in limit_headers.items():  # the allowance left, on every admitted answer (Cal.com)
        response.headers.setdefault(name, value)
    after = srv.faults.choose(AFTER_KINDS) if eligible else None
    if after is not None:
        srv.stats.record_fault(after)
        if after == "after:html":
            return Response(200, CAPTIVE_PORTAL_PAGE, {"Content-Type": "text/html; charset=utf-8"})
        raise _Drop()
    return response


CAPTIVE_PORTAL_PAGE = b"<!DOCTYPE html><html><body><h1>Welcome to the clinic Wi-Fi</h1><p>Sign in</p></body></html>"


class _Answer(Exception):
    """Raised by a before-fault that answers with a status instead of executing."""

    def __init__(self, response: Response) -> None:
        super().__init__()
        self.response = response


def _check_rate_limit(srv: RunningServer, request: Request) -> tuple[Response | None, dict[str, str]]:
    """(the 429 to send, or None) and the headers an admitted answer carries (`rate_limit_headers` hook)."""
    if not srv.rate_limits:
        return None, {}
    hook = getattr(srv.emulator, "rate_limit", None)
    bucket = hook(request) if hook is not None else None
    if bucket is None:
        return None, {}
    admission = srv.limiter.check(bucket)
    if admission.admitted:
        headers_hook = getattr(srv.emulator, "rate_limit_headers", None)
        return None, (dict(headers_hook(request, admission)) if headers_hook is not None else {})
    srv.stats.record_rate_limited()
    limited_hook = getattr(srv.emulator, "rate_limited_response", None)
    if limited_hook is not None:
        return limited_hook(request, admission.reset_epoch), {}
    headers = {"X-RateLimit-Reset": str(int(admission.reset_epoch))}
    return Response(429, {"error": {"message": "rate limited"}}, headers), {}


def _before_fault(srv: RunningServer, request: Request) -> None:
    kind = srv.faults.choose(BEFORE_KINDS)
    if kind is None:
        return
    srv.stats.record_fault(kind)
    if kind == "before:timeout":
        raise _Drop(hold_seconds=srv.faults.timeout_seconds)
    if kind == "before:reset":
        raise _Drop()
    raise _Answer(_fault_response(srv.emulator, request, srv.faults.pick_status(kind)))


def handle_admin(srv: RunningServer, request: Request) -> Response:
    action = request.path[len(ADMIN_PREFIX) :].strip("/")
    try:
        params = _admin_params(request)
    except ValueError as exc:
        return Response(400, {"error": str(exc)})
    if action == "stats" and request.method == "GET":
        return Response(200, {**srv.stats.snapshot(), "faults": srv.faults.snapshot()})
    if action == "reset":
        srv.stats.reset()
        srv.limiter.reset()
        _forward_admin(srv, "reset", params)
        return Response(200, {"ok": True})
    if action == "faults":
        try:
            plan = FaultPlan.from_json(params.get("spec", params) if isinstance(params, dict) else params)
        except ValueError as exc:
            return Response(400, {"error": str(exc)})
        srv.set_faults(plan)
        return Response(200, {"ok": True, "faults": plan.snapshot()})
    if action == "config":
        return _admin_config(srv, params)
    response = _forward_admin(srv, action, params)
    return response if response is not None else Response(404, {"error": f"unknown sandbox action {action!r}"})


def _admin_config(srv: RunningServer, params: dict[str, Any]) -> Response:
    if "latency_ms" in params:
        srv.latency_ms = float(params["latency_ms"])
    if "rate_limits" in params:
        srv.rate_limits = bool(params["rate_limits"])
        srv.limiter.reset()
    return Response(200, {"latency_ms": srv.latency_ms, "rate_limits": srv.rate_limits})


def _forward_admin(srv: RunningServer, action: str, params: dict[str, Any]) -> Response | None:
    hook = getattr(srv.emulator, "admin", None)
    return None if hook is None else hook(action, params)


def _admin_params(request: Request) -> dict[str, Any]:
    if request.body.strip():
        try:
            params = json.loads(request.body)
        except json.JSONDecodeError as exc:
            raise ValueError(f"admin body is not JSON: {exc}") from exc
        if isinstance(params, str):
            return {"spec": params}
        if not isinstance(params, dict):
            raise ValueError("admin body must be a JSON object")
        return params
    return dict(request.query)


# -- HTTP plumbing -------------------------------------------------------------------------------------


def _make_handler(srv: RunningServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        sandbox = srv

    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response sends Content-Length
    sandbox: RunningServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: no stderr line per request

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        try:
            request = self._read_request()
        except _TruncatedBody:
            # The client died mid-request (e.g. a killed sync). A real server never acts on half a request.
            self.close_connection = True
            return
        srv = self.sandbox
        try:
            response = handle_admin(srv, request) if request.path.startswith(ADMIN_PREFIX) else process(srv, request)
        except _Answer as answer:
            response = answer.response
        except _Drop as drop:
            self._drop(drop.hold_seconds)
            return
        finally:
            if srv.on_change is not None and request.method.upper() not in _READ_ONLY_METHODS:
                srv.on_change()
        self._send(response)

    def _read_request(self) -> Request:
        split = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        return Request(
            method=self.command,
            path=split.path or "/",
            query=parse_qsl(split.query, keep_blank_values=True),
            headers=headers,
            body=self._read_body(headers),
            base_url=self.sandbox.url,
        )

    def _read_body(self, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return self._read_chunked()
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            length = 0  # a garbled length reads as no body; the emulator then rejects the request
        body = self.rfile.read(length) if length > 0 else b""
        if len(body) < length:
            raise _TruncatedBody()
        return body

    def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline().strip():  # trailers
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _send(self, response: Response) -> None:
        body = _encode_body(response.body)
        self.send_response_only(response.status)
        headers = {k.lower(): (k, v) for k, v in response.headers.items()}
        if "date" not in headers:
            self.send_header("Date", formatdate(usegmt=True))
        if "content-type" not in headers and body:
            is_json = not isinstance(response.body, bytes | str)
            self.send_header("Content-Type", "application/json" if is_json else "text/plain; charset=utf-8")
        for name, value in headers.values():
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.wfile.flush()

    def _drop(self, hold_seconds: float) -> None:
        """Answer nothing: optionally hold the connection open first (timeout), then reset it."""
        if hold_seconds > 0:
            self.sandbox._stopping.wait(hold_seconds)
        self.close_connection = True
        try:
            # SO_LINGER 0 makes close() send a TCP RST instead of an orderly FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.connection.close()
        except OSError:
            pass


def _encode_body(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
