"""Connection tests (clinicsync.connections): the right verdict and a specific message for each problem.

Cliniko and Stripe run against the in-process sandbox (plus a forwarding transport for the shard hosts, which the
sandbox can't be); Cal.com, which has no emulator, against httpx.MockTransport.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import httpx
import pytest

from clinicsync.connections import (
    CALCOM_REGIONS,
    PERMISSION_PROBE_CUSTOMER,
    calcom_region,
    has_any_key,
    key_shard,
    mask_key,
    test_calcom,
    test_cliniko,
    test_stripe,
)
from clinicsync.sandbox.cliniko_emu import DEFAULT_API_KEY
from clinicsync.secrets import MemorySecretStore, SecretStoreError
from tests.support import admin, stats

CONTACT = "manager@example.com"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stripe_writes(url: str) -> int:
    return stats(url)["mutations_total"]


# --- Cliniko --------------------------------------------------------------------------------------------------


def test_cliniko_good_key_names_the_clinic_and_shard(make_sandbox):
    sandbox = make_sandbox(profile="clean", patients=3)
    report = test_cliniko(sandbox.cliniko_key, contact_email=CONTACT, base_url=sandbox.cliniko_url)
    assert report.ok and report.problem is None
    assert report.account_name and report.account_name in report.message
    assert report.shard == "au1" and "au1" in report.message


def test_cliniko_wrong_key_is_a_401_with_what_to_do(make_sandbox):
    sandbox = make_sandbox(profile="clean", patients=3)
    report = test_cliniko("not_the_right_key-au1", contact_email=CONTACT, base_url=sandbox.cliniko_url)
    assert not report.ok and report.problem == "wrong_key"
    assert "401" in report.message and "Manage API keys" in report.message


def test_cliniko_revoked_key_says_it_may_have_been_revoked(make_sandbox):
    sandbox = make_sandbox(profile="clean", patients=3)
    admin(sandbox.cliniko_url, "revoke_key", key="admin")
    report = test_cliniko(sandbox.cliniko_key, contact_email=CONTACT, base_url=sandbox.cliniko_url)
    assert not report.ok and "revoked" in report.message


def test_cliniko_needs_a_contact_email_before_any_request(make_sandbox):
    sandbox = make_sandbox(profile="clean", patients=3)
    report = test_cliniko(sandbox.cliniko_key, contact_email="", base_url=sandbox.cliniko_url)
    assert not report.ok and report.problem == "config" and "contact email" in report.message
    assert stats(sandbox.cliniko_url)["requests"] == 0


def shard_hosts(sandbox, *, right_shard: str, wrong_status: int = 401) -> httpx.MockTransport:
    """Real Cliniko routes by host: the key's own shard host is served by the sandbox, every other shard's host
    answers as Cliniko does for a key it doesn't know."""
    target = httpx.URL(sandbox.cliniko_url)

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host != f"api.{right_shard}.cliniko.com":
            return httpx.Response(wrong_status, text="HTTP Basic: Access denied.")
        url = request.url.copy_with(scheme="http", host=target.host, port=target.port)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        answer = httpx.request(request.method, url, headers=headers, content=request.content)
        return httpx.Response(answer.status_code, headers={"Date": answer.headers["Date"]}, content=answer.content)

    return httpx.MockTransport(handle)


def test_cliniko_key_without_suffix_on_the_wrong_shard_says_check_the_shard(make_sandbox):
    sandbox = make_sandbox(profile="clean", patients=3)
    bare_key = DEFAULT_API_KEY.rsplit("-", 1)[0]  # the emulator accepts the key without its suffix, as Cliniko does
    transport = shard_hosts(sandbox, right_shard="au1")

    wrong = test_cliniko(bare_key, shard="au2", contact_email=CONTACT, transport=transport)
    assert not wrong.ok and wrong.problem == "wrong_shard" and wrong.shard == "au2"
    assert "check the shard" in wrong.message and "api.au2.cliniko.com" in wrong.message

    right = test_cliniko(bare_key, shard="au1", contact_email=CONTACT, transport=transport)
    assert right.ok and right.shard == "au1"


def test_cliniko_404_on_the_shard_host_is_a_wrong_shard(make_sandbox):
    sandbox = make_sandbox(profile="clean", patients=3)
    transport = shard_hosts(sandbox, right_shard="au1", wrong_status=404)
    report = test_cliniko("cliniko_sandbox_key", shard="uk1", contact_email=CONTACT, transport=transport)
    assert report.problem == "wrong_shard" and "check the shard" in report.message.lower()
    with_suffix = test_cliniko("cliniko_sandbox_key-uk1", contact_email=CONTACT, transport=transport)
    assert with_suffix.problem == "wrong_shard" and "(-uk1)" in with_suffix.message


def refuse_connection(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno -2] Name or service not known", request=request)


def test_cliniko_unknown_shard_host_is_a_wrong_shard_not_no_network():
    report = test_cliniko(
        "abcdefghijklmnop",
        shard="zz9",
        contact_email=CONTACT,
        transport=httpx.MockTransport(refuse_connection),
        resolve=lambda host: False,
    )
    assert report.problem == "wrong_shard" and "zz9" in report.message and "Check the shard" in report.message


def test_cliniko_known_host_that_cannot_be_found_means_no_network():
    report = test_cliniko(
        "abcdefghijklmnop-au2",
        contact_email=CONTACT,
        transport=httpx.MockTransport(refuse_connection),
        resolve=lambda host: False,
    )
    assert report.problem == "unreachable" and "offline" in report.message and "api.au2.cliniko.com" in report.message


def test_cliniko_unreachable_host():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    report = test_cliniko(DEFAULT_API_KEY, contact_email=CONTACT, base_url=url)
    assert not report.ok and report.problem == "unreachable" and "could not be reached" in report.message


# --- Stripe ---------------------------------------------------------------------------------------------------


def test_stripe_good_key_names_the_account_and_mode(make_sandbox):
    sandbox = make_sandbox(profile="clean", patients=1)
    report = test_stripe(sandbox.stripe_key, base_url=sandbox.stripe_url)
    assert report.ok and report.mode_label == "TEST" and report.livemode is False
    assert report.account_name and report.account_id == "acct_sandbox_clinic_a"
    assert stripe_writes(sandbox.stripe_url) == 0, "the permission probe writes nothing"


def test_stripe_live_key_is_labelled_live(make_sandbox):
    sandbox = make_sandbox(profile="clean", patients=1, stripe_mode="live")
    report = test_stripe(sandbox.stripe_key, base_url=sandbox.stripe_url)
    assert report.ok and report.mode_label == "LIVE" and "LIVE" in report.message


def test_stripe_read_only_restricted_key_is_not_ok_and_names_the_permission(make_sandbox):
    sandbox = make_sandbox(profile="clean", patients=1)
    report = test_stripe("rk_test_sandbox_readonly_a", base_url=sandbox.stripe_url)
    assert not report.ok and report.problem == "permission"
    assert report.missing_permission == "rak_customer_write" and "rak_customer_write" in report.message
    assert report.account_name, "the key may read the account, so its name is still shown"
    by_endpoint = stats(sandbox.stripe_url)["by_endpoint"]
    assert by_endpoint.get("POST /v1/customers/{id}") == 1 and stripe_writes(sandbox.stripe_url) == 0


def test_stripe_restricted_key_without_account_read_is_ok_without_a_name(make_sandbox):
    sandbox = make_sandbox(profile="clean", patients=1)
    report = test_stripe("rk_test_sandbox_noaccount_a", base_url=sandbox.stripe_url)
    assert report.ok and report.account_name is None and report.mode_label == "TEST"
    assert any("account name is not shown" in note for note in report.notes)


def test_stripe_wrong_and_revoked_keys_are_told_apart(make_sandbox):
    sandbox = make_sandbox(profile="clean", patients=1)
    wrong = test_stripe("sk_test_sandbox_no_such_key", base_url=sandbox.stripe_url)
    assert wrong.problem == "wrong_key" and "401" in wrong.message
    admin(sandbox.stripe_url, "revoke", key="sk_test_sandbox_clinic_b")
    revoked = test_stripe("sk_test_sandbox_clinic_b", base_url=sandbox.stripe_url)
    assert revoked.problem == "revoked_key" and "revoked" in revoked.message


def test_stripe_key_format_problems_are_caught_before_any_request():
    assert test_stripe("pk_test_sandbox_publishable").problem == "config"
    assert "publishable" in test_stripe("pk_live_sandbox_publishable").message
    assert test_stripe("hello").problem == "config"
    assert test_stripe("").problem == "config"


def test_stripe_unreachable_host():
    report = test_stripe("sk_test_sandbox_clinic_a", base_url=f"http://127.0.0.1:{closed_port()}")
    assert not report.ok and report.problem == "unreachable" and "could not be reached" in report.message
    assert report.mode_label == "TEST"


def test_stripe_plain_http_to_another_host_is_refused():
    report = test_stripe("sk_test_sandbox_clinic_a", base_url="http://stripe.example.com")
    assert report.problem == "config" and "https://" in report.message


def test_permission_probe_id_cannot_be_a_real_customer():
    # Stripe ids are cus_ + 14 alphanumerics; underscores after the prefix never occur.
    assert PERMISSION_PROBE_CUSTOMER.startswith("cus_") and "_" in PERMISSION_PROBE_CUSTOMER[4:]


# --- Cal.com ---------------------------------------------------------------------------------------------------


def calcom(status: int, body: object, seen: list[httpx.Request] | None = None) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handle)


ME = {
    "status": "success",
    "data": {
        "id": 42,
        "username": "harbourside",
        "email": "bookings@example.com",
        "name": "Harbourside Physio",
        "timeZone": "Australia/Sydney",
        "organizationId": None,
    },
}


def test_calcom_good_key_calls_v2_me_with_bearer_and_no_version_header():
    seen: list[httpx.Request] = []
    report = test_calcom("cal_live_sandbox_example", transport=calcom(200, ME, seen))
    assert report.ok and report.account_name == "Harbourside Physio" and "bookings@example.com" in report.message
    (request,) = seen
    assert str(request.url) == "https://api.cal.com/v2/me"
    assert request.headers["Authorization"] == "Bearer cal_live_sandbox_example"
    assert "cal-api-version" not in request.headers, "/v2/me declares no cal-api-version"


def test_calcom_eu_and_self_hosted_base_urls_are_used():
    seen: list[httpx.Request] = []
    test_calcom("cal_sandbox_example", base_url=CALCOM_REGIONS["eu"], transport=calcom(200, ME, seen))
    test_calcom("cal_sandbox_example", base_url="https://cal.example.com/api/v2/", transport=calcom(200, ME, seen))
    assert [str(r.url) for r in seen] == ["https://api.cal.eu/v2/me", "https://cal.example.com/api/v2/me"]


def test_calcom_wrong_key():
    error = {"status": "error", "error": {"code": "UnauthorizedException", "message": "Invalid API key"}}
    report = test_calcom("cal_wrong", transport=calcom(401, error))
    assert report.problem == "wrong_key" and "401" in report.message
    assert "start with cal_" in test_calcom("sk_test_oops", transport=calcom(401, error)).message


def test_calcom_self_hosted_address_without_the_api_is_a_config_problem():
    report = test_calcom("cal_x", base_url="https://cal.example.com", transport=calcom(404, {"message": "no"}))
    assert report.problem == "config" and "/v2" in report.message


def test_calcom_no_network():
    report = test_calcom("cal_x", transport=httpx.MockTransport(refuse_connection), resolve=lambda host: False)
    assert report.problem == "unreachable" and "api.cal.com" in report.message and "offline" in report.message


def test_calcom_server_error_is_reported_as_their_problem():
    report = test_calcom("cal_x", transport=calcom(503, {"status": "error"}))
    assert report.problem == "unreachable" and "503" in report.message


def test_calcom_plain_http_is_refused():
    report = test_calcom("cal_x", base_url="http://cal.example.com/v2")
    assert report.problem == "config" and "https://" in report.message


def test_calcom_region_of_a_base_url():
    assert calcom_region("") == "cloud"
    assert calcom_region("https://api.cal.com/v2/") == "cloud"
    assert calcom_region("https://api.cal.eu/v2") == "eu"
    assert calcom_region("https://cal.example.com/v2") == "self_hosted"


# --- helpers --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "masked"),
    [
        ("sk_test_sandbox_clinic_a1b2", "sk_test_…a1b2"),
        ("rk_live_sandbox_readonly_WXYZ", "rk_live_…WXYZ"),
        ("cliniko_sandbox_key_0a2b-au2", "…0a2b-au2"),
        ("cal_live_sandbox_example_9876", "cal_live_…9876"),
        ("sk_test_short", "sk_test_…"),
        ("", ""),
    ],
)
def test_mask_key_shows_only_the_prefix_and_last_four(key, masked):
    assert mask_key(key) == masked


def test_mask_key_never_shows_most_of_the_key():
    key = "sk_live_sandbox_clinic_a_long_example"
    assert key[8:-4] not in mask_key(key)


def test_key_shard():
    assert key_shard("abc-AU2") == "au2"
    assert key_shard("abc") is None


def test_has_any_key():
    assert not has_any_key(MemorySecretStore())
    assert has_any_key(MemorySecretStore({"stripe_api_key": "sk_test_sandbox_clinic_a"}))

    class Broken(MemorySecretStore):
        def get(self, name: str) -> str | None:
            raise SecretStoreError("no keyring")

    assert not has_any_key(Broken())


def test_the_module_is_qt_free():
    code = "import sys, clinicsync.connections; print(any(m.startswith('PySide6') for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
