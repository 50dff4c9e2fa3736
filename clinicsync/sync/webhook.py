"""Cal.com webhook receiver: a self-hosted Cal.com on the clinic's network tells ClinicSync of a booking as it
happens, and that booking's sync starts at once instead of at the next poll. Polling stays the default and the
fallback (a delivery may be lost: Cal.com does not promise retries).

A small HTTP listener (the standard library's, on one thread of its own) on the address and port chosen in
Connections, loopback by default. What it answers (Cal.com only logs the status):

- 200  accepted (a booking event queues a sync of the bookings); a delivery already received (same trigger,
       booking uid and `createdAt`: Cal.com sends no delivery id) is answered 200 again and not acted on; a test
       delivery and triggers ClinicSync does not sync are answered 200 and ignored;
- 401  no signature (no `X-Cal-Signature-256`, or Cal.com's `no-secret-provided`: the webhook has no secret);
- 403  a signature that is not the HMAC-SHA256 of the body with this clinic's secret;
- 411  no Content-Length (a chunked body cannot be bounded before it is read);
- 413  a body over 1 MB, refused from its Content-Length without reading it;
- 400  not a JSON delivery with `triggerEvent` and `createdAt`; or `createdAt` more than a day old (or an hour
       ahead): the signature has no timestamp of its own, so an old delivery replayed must not act again;
- 404/405 another path or method; 503 the receiver cannot store what it received (nothing is acted on).

Checks run in that order, and nothing a refused request carried reaches the database or the sync. The secret is
never logged (it is registered with the log redactor when read, like the API keys).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from clinicsync.sources.calcom import parse_instant

log = logging.getLogger(__name__)

PATH = "/calcom/webhook"
SIGNATURE_HEADER = "X-Cal-Signature-256"
NO_SECRET = "no-secret-provided"  # what Cal.com sends as the signature of a webhook without a secret
MAX_BODY_BYTES = 1024 * 1024
STALE_AFTER = timedelta(days=1)
AHEAD_LIMIT = timedelta(hours=1)  # a clock this far ahead is not a clock, it is a forged date
SEEN_LIMIT = 5000  # deliveries remembered at most (a day of a busy clinic's bookings, several times over)
READ_TIMEOUT_S = 10.0  # a client that stops sending mid-body must not hold the only listening thread
LINGER_S = 1.0  # after refusing an oversized body: how long, and how much of it, to drain so the answer arrives
LINGER_BYTES = 64 * 1024
TEST_TRIGGER = "PING"  # what Connections' Test button sends (Cal.com's own "Ping test" sends this too)
BOOKING_TRIGGERS = frozenset(
    {
        "BOOKING_CREATED",
        "BOOKING_PAYMENT_INITIATED",
        "BOOKING_PAID",
        "BOOKING_RESCHEDULED",
        "BOOKING_REQUESTED",
        "BOOKING_CANCELLED",
        "BOOKING_REJECTED",
        "BOOKING_NO_SHOW_UPDATED",
    }
)
LOOPBACK = "127.0.0.1"


def signature(body: bytes, secret: str) -> str:
    """Cal.com's signature of a body: HMAC-SHA256 keyed with the secret, lowercase hex."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def new_secret() -> str:
    """A fresh webhook secret for the manager to paste into Cal.com (256 random bits)."""
    return secrets.token_hex(32)


def url_for(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}{PATH}"


@dataclass(frozen=True)
class Verdict:
    """What to answer a delivery, and whether it is a booking whose sync to start (`booking_uid`)."""

    status: int
    message: str
    trigger: str = ""
    booking_uid: str | None = None

    @property
    def acts(self) -> bool:
        return self.booking_uid is not None


# Remembers a delivery by key and `createdAt`; False when it was already there. Raises when it cannot store.
Remember = Callable[[str, datetime, datetime], bool]


def judge(body: bytes, signed: str | None, secret: str, now: datetime, remember: Remember) -> Verdict:
    """The answer to a delivery whose size was already checked: signature, shape, age, then repeat."""
    if not signed or signed.strip() == NO_SECRET:
        return Verdict(401, "Unsigned delivery: give the webhook in Cal.com the secret shown in ClinicSync.")
    if not hmac.compare_digest(signed.strip().lower().encode("ascii", "replace"), signature(body, secret).encode()):
        return Verdict(403, "Wrong signature: the webhook's secret in Cal.com is not the one shown in ClinicSync.")
    try:
        delivery = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return Verdict(400, "Not a JSON delivery: leave the webhook's custom payload template in Cal.com empty.")
    if not isinstance(delivery, dict) or not isinstance(delivery.get("triggerEvent"), str):
        return Verdict(400, "Not a Cal.com delivery: it has no triggerEvent.")
    trigger = delivery["triggerEvent"]
    created = parse_instant(delivery.get("createdAt"))
    if created is None:
        return Verdict(400, "Not a Cal.com delivery: it has no readable createdAt.", trigger)
    if created < now - STALE_AFTER:
        return Verdict(400, "Refused: the delivery was made more than a day ago.", trigger)
    if created > now + AHEAD_LIMIT:
        return Verdict(400, "Refused: the delivery is dated in the future; check the Cal.com server's clock.", trigger)
    uid = booking_uid(delivery)
    key = hashlib.sha256(f"{trigger}\n{uid or ''}\n{delivery['createdAt']}".encode()).hexdigest()
    if not remember(key, created, now):
        return Verdict(200, "Already received.", trigger)
    if trigger == TEST_TRIGGER:
        return Verdict(200, "Test received: ClinicSync is listening.", trigger)
    if trigger not in BOOKING_TRIGGERS or not uid:
        return Verdict(200, "Received; ClinicSync does not sync this kind of event.", trigger)
    return Verdict(200, "Accepted: the booking will be synced now.", trigger, uid)


def booking_uid(delivery: dict[str, Any]) -> str | None:
    payload = delivery.get("payload")
    if not isinstance(payload, dict):
        return None
    uid = payload.get("uid") or payload.get("bookingUid")  # the no-show update names it bookingUid
    return str(uid) if isinstance(uid, str | int) and str(uid) else None


def remember_delivery(key: str, created: datetime, now: datetime) -> bool:
    """Store a delivery as received (the database); False when it was already. Forgets the ones too old to be
    accepted again anyway, and the oldest beyond SEEN_LIMIT."""
    from clinicsync.store.db import database_proxy
    from clinicsync.store.models import WebhookDelivery

    naive = created.astimezone(UTC).replace(tzinfo=None)
    with database_proxy.atomic():
        WebhookDelivery.delete().where(
            WebhookDelivery.created_at < (now - STALE_AFTER).astimezone(UTC).replace(tzinfo=None)
        ).execute()
        if WebhookDelivery.get_or_none(WebhookDelivery.key == key) is not None:
            return False
        WebhookDelivery.create(key=key, created_at=naive, received_at=now.astimezone(UTC).replace(tzinfo=None))
        excess = WebhookDelivery.select().count() - SEEN_LIMIT
        if excess > 0:
            oldest = WebhookDelivery.select(WebhookDelivery.key).order_by(WebhookDelivery.received_at).limit(excess)
            WebhookDelivery.delete().where(WebhookDelivery.key.in_(oldest)).execute()
    return True


class WebhookListener:
    """The HTTP listener: `start()` binds and serves on a thread of its own; `stop()` closes it.

    `on_booking(uid, trigger)` is called on the listener's thread for each accepted booking delivery, before the
    answer is sent; it must only note the request and return (the scheduler's host queues the sync).
    """

    def __init__(
        self,
        address: str,
        port: int,
        secret: str,
        on_booking: Callable[[str, str], None],
        *,
        remember: Remember = remember_delivery,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.address = address
        self.port = port
        self.secret = secret  # may be replaced while running (a new secret made in Connections)
        self._on_booking = on_booking
        self._remember = remember
        self._now = now
        self._server: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return url_for(self.address, self.bound_port)

    @property
    def bound_port(self) -> int:
        return self._server.server_address[1] if self._server is not None else self.port

    def start(self) -> None:
        """Bind (raises OSError when the address is not this computer's or the port is taken) and serve."""
        server_class = _IPv6Server if ":" in self.address else HTTPServer
        self._server = server_class((self.address, self.port), _handler_for(self))
        self._thread = threading.Thread(target=self._serve, name="calcom-webhook", daemon=True)
        self._thread.start()
        log.info("receiving Cal.com webhooks at %s", self.url)

    def _serve(self) -> None:
        assert self._server is not None
        try:
            self._server.serve_forever(poll_interval=0.5)
        finally:
            _close_thread_connection()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None
        log.info("stopped receiving Cal.com webhooks")

    def receive(self, body: bytes, signed: str | None) -> Verdict:
        try:
            verdict = judge(body, signed, self.secret, self._now(), self._remember)
        except Exception:
            log.exception("could not record a Cal.com delivery")
            return Verdict(503, "ClinicSync could not store the delivery; it will sync at its next check.")
        if verdict.acts:
            assert verdict.booking_uid is not None
            self._on_booking(verdict.booking_uid, verdict.trigger)
        return verdict


class _IPv6Server(HTTPServer):
    address_family = socket.AF_INET6


def _close_thread_connection() -> None:
    from clinicsync.store.db import database_proxy

    try:
        if database_proxy.obj is not None:
            database_proxy.close()
    except Exception:
        log.debug("could not close the webhook thread's database connection", exc_info=True)


def _handler_for(listener: WebhookListener) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "ClinicSync"
        sys_version = ""
        timeout = READ_TIMEOUT_S

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != PATH:
                self._answer(404, f"Not found: Cal.com's subscriber URL ends in {PATH}.")
                return
            if self.headers.get("Transfer-Encoding"):
                self._answer(411, "A Content-Length is required.", close=True)
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._answer(411, "A Content-Length is required.", close=True)
                return
            if length < 0:
                self._answer(400, "Invalid Content-Length.", close=True)
                return
            if length > MAX_BODY_BYTES:  # refused unread: the connection is closed instead
                self._answer(413, "The delivery is over 1 MB.", close=True)
                self._linger()
                return
            body = self.rfile.read(length)
            if len(body) < length:
                return  # the client went away mid-body: nothing to answer
            verdict = listener.receive(body, self.headers.get(SIGNATURE_HEADER))
            if verdict.status != 200:
                log.info("refused a Cal.com delivery (%s): %s", verdict.status, verdict.message)
            self._answer(verdict.status, verdict.message)

        def do_GET(self) -> None:
            self._answer(405, "Cal.com posts its deliveries here.", allow="POST")

        do_PUT = do_DELETE = do_PATCH = do_GET

        def _answer(self, status: int, message: str, *, close: bool = False, allow: str = "") -> None:
            data = json.dumps({"status": "ok" if status == 200 else "refused", "message": message}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if allow:
                self.send_header("Allow", allow)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def _linger(self) -> None:
            """Let the refusal reach the client before closing: closing a socket with unread data resets the
            connection, which can discard the answer. A little of what is still coming is read and dropped."""
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)
                self.connection.settimeout(LINGER_S)
                drained = 0
                while drained < LINGER_BYTES and (chunk := self.connection.recv(16384)):
                    drained += len(chunk)
            except OSError:
                pass

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("webhook %s: " + format, self.client_address[0], *args)

    return Handler


# --- this computer's addresses, for Connections ------------------------------------------------------------
def local_addresses() -> list[str]:
    """This computer's IPv4 addresses on its networks (loopback first), for the manager to choose from: Cal.com
    on another machine reaches ClinicSync at one of the non-loopback ones."""
    found: list[str] = [LOOPBACK]
    candidates: list[str] = []
    with contextlib.suppress(OSError):
        candidates += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        # The address of the route out: a UDP "connect" sends nothing; TEST-NET-1 is never routed anywhere real.
        probe.connect(("192.0.2.1", 9))
        candidates.append(probe.getsockname()[0])
    for address in candidates:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if not ip.is_loopback and not ip.is_unspecified and address not in found:
            found.append(address)
    return found


def send_test(address: str, port: int, secret: str, *, timeout: float = 5.0) -> tuple[bool, str]:
    """Post a signed test delivery to the listener at `address:port`, as Cal.com would: (worked, what happened)."""
    import httpx

    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = json.dumps({"triggerEvent": TEST_TRIGGER, "createdAt": now, "payload": {"uid": new_secret()[:16]}})
    target = url_for(LOOPBACK if address in ("0.0.0.0", "::") else address, port)
    try:
        response = httpx.post(
            target,
            content=body.encode(),
            headers={"Content-Type": "application/json", SIGNATURE_HEADER: signature(body.encode(), secret)},
            timeout=timeout,
        )
    except httpx.HTTPError:
        return False, (
            "Nothing answered at this address and port. ClinicSync listens only while it is running and receiving "
            "is turned on; another program may be using the port."
        )
    try:
        message = str(response.json().get("message") or "")
    except ValueError:
        message = ""
    if response.status_code == 200 and message.startswith("Test received"):
        return True, "ClinicSync received the signed test notice."
    if response.status_code in (401, 403) and response.headers.get("server", "").startswith("ClinicSync"):
        return False, (
            "ClinicSync answered, but with another secret: a new secret is taken up within half a minute. "
            "Test again then."
        )
    return False, f"Something else answered at this port ({response.status_code}). Choose another port."


# --- keeping the listener in step with the settings ---------------------------------------------------------
SECRET_RECHECK_S = 30.0  # while listening, the secret is read again this often (a new one made meanwhile)
RETRY_S = 5.0  # while on but not listening (no secret yet, the port taken), tried again this often


class WebhookSwitch:
    """Keeps the listener matching Connections: on or off, on the chosen address and port, with the stored secret.

    `update` is called on the scheduler host's thread (where keys may be read); `problem` says, in words, why
    receiving is on but nothing listens (no secret yet, the port taken), for Connections and the log.
    """

    def __init__(
        self,
        settings: Any,
        on_booking: Callable[[str, str], None],
        monotonic: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._on_booking = on_booking
        self._monotonic = monotonic
        self.listener: WebhookListener | None = None
        self.problem = ""
        self._checked_at: float | None = None
        self._where: tuple[str, int] | None = None

    def update(self, credentials: Callable[[], Any], *, force: bool = False) -> None:
        from clinicsync.secrets import CALCOM_WEBHOOK_SECRET

        if not self._settings.get("calcom.webhook.enabled"):
            self.stop()
            self.problem = ""
            return
        where = (str(self._settings.get("calcom.webhook.address")), int(self._settings.get("calcom.webhook.port")))
        now = self._monotonic()
        every = SECRET_RECHECK_S if self.listener is not None else RETRY_S  # not listening: try again sooner
        recent = self._checked_at is not None and now - self._checked_at < every
        if where == self._where and recent and not force:
            return
        self._checked_at, self._where = now, where
        try:
            secret = credentials().get(CALCOM_WEBHOOK_SECRET)
        except Exception as exc:  # a locked keyring: keep what runs, say why a new one cannot start
            self._note_problem(f"The webhook secret could not be read ({type(exc).__name__}).")
            return
        if not secret:
            self.stop()
            self._note_problem("No webhook secret is stored yet.")
            return
        if self.listener is not None and (self.listener.address, self.listener.port) == where:
            self.listener.secret = secret
            self.problem = ""
            return
        self.stop()
        listener = WebhookListener(where[0], where[1], secret, self._on_booking)
        try:
            listener.start()
        except OSError as exc:
            self._note_problem(_bind_problem(where, exc))
            return
        self.listener, self.problem = listener, ""

    def _note_problem(self, problem: str) -> None:
        if problem != self.problem:
            log.warning("not receiving Cal.com webhooks: %s", problem)
        self.problem = problem

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()
            self.listener = None


def _bind_problem(where: tuple[str, int], exc: OSError) -> str:
    import errno

    address, port = where
    if exc.errno == errno.EADDRINUSE:
        return f"Another program already uses port {port}; choose another port."
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{address} is not an address of this computer (any more); choose one from the list."
    return f"Could not listen on {address} port {port} ({exc.strerror or exc})."
