"""How the gateway classifies Stripe's errors, and the limits it checks before sending."""

from __future__ import annotations

import pytest
import stripe

from clinicsync.stripe_gateway import StripeFailure, classify, livemode_of_key, validate_params


def error(cls, status, headers=None, body=None):
    body = body or {"error": {"type": "api_error", "message": "boom"}}
    if cls is stripe.InvalidRequestError:
        param = body["error"].get("param")
        return cls("boom", param, http_status=status, json_body=body, headers=headers or {})
    return cls("boom", http_body=None, http_status=status, json_body=body, headers=headers or {})


def test_authentication_and_permission_errors_stop_the_run():
    assert classify(error(stripe.AuthenticationError, 401)).kind == "auth"
    failure = classify(
        error(
            stripe.PermissionError,
            403,
            body={"error": {"type": "permission_error", "message": "Having the 'rak_customer_write' permission"}},
        )
    )
    assert failure.kind == "permission"


def test_rate_limits_and_5xx_are_transient_and_carry_the_hint():
    failure = classify(error(stripe.RateLimitError, 429, {"Retry-After": "2", "Stripe-Should-Retry": "true"}))
    assert (failure.kind, failure.retry_after_s) == ("transient", 2.0)
    assert classify(error(stripe.APIError, 503)).kind == "transient"
    assert classify(stripe.APIConnectionError("reset")).kind == "transient"
    assert classify(error(stripe.APIError, 409)).kind == "transient"


def test_a_replayed_saved_500_is_an_unknown_outcome_not_a_retry():
    failure = classify(error(stripe.APIError, 500, {"Idempotent-Replayed": "true"}))
    assert failure.kind == "unknown_outcome"


def test_should_retry_false_and_validation_errors_are_permanent():
    assert classify(error(stripe.APIError, 500, {"Stripe-Should-Retry": "false"})).kind == "invalid"
    body = {"error": {"type": "invalid_request_error", "message": "Invalid email", "param": "email"}}
    failure = classify(error(stripe.InvalidRequestError, 400, body=body))
    assert (failure.kind, failure.param) == ("invalid", "email")
    assert classify(error(stripe.InvalidRequestError, 404, body=body)).kind == "not_found"


def test_limits_are_checked_before_sending():
    with pytest.raises(StripeFailure, match="metadata keys"):
        validate_params({"metadata": {f"k{n}": "v" for n in range(51)}})
    with pytest.raises(StripeFailure, match="not allowed"):
        validate_params({"metadata": {"bad[key]": "v"}})
    with pytest.raises(StripeFailure, match="too long"):
        validate_params({"metadata": {"k": "v" * 501}})
    with pytest.raises(StripeFailure, match=r"address\.line1"):
        validate_params({"address": {"line1": "x" * 201}})
    validate_params({"name": "Ada", "metadata": {"cliniko_patient_id": "1"}, "address": ""})


def test_key_prefix_tells_live_from_test():
    assert livemode_of_key("sk_live_sandbox_clinic_a") and livemode_of_key("rk_live_sandbox_x")
    assert not livemode_of_key("sk_test_sandbox_clinic_a")


SDK_WORDS = ("support@stripe.com", "ConnectError", "Network error", "Unexpected error communicating", "Request req_")


def test_messages_are_clinicsyncs_own_words_never_the_sdks():
    sdk_text = (
        "Unexpected error communicating with Stripe. If this problem persists,\nlet us know at support@stripe.com."
        "\n\n(Network error: A ConnectError was raised)"
    )
    unreachable = classify(stripe.APIConnectionError(sdk_text))
    assert (
        unreachable.message.startswith("Stripe could not be reached") and "internet connection" in unreachable.message
    )
    key_text = {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_****wxyz"}}
    refused = classify(error(stripe.AuthenticationError, 401, body=key_text))
    assert "Stripe rejected the API key (HTTP 401)" in refused.message and "Developers → API keys" in refused.message
    expired_body = {"error": {"type": "invalid_request_error", "code": "api_key_expired", "message": "Expired API Key"}}
    expired = classify(error(stripe.AuthenticationError, 401, body=expired_body))
    assert "revoked" in expired.message and "Expired API Key" not in expired.message
    saved = classify(error(stripe.APIError, 500, {"Idempotent-Replayed": "true"}))
    assert "not known" in saved.message and "boom" not in saved.message
    busy = classify(error(stripe.APIError, 503))
    assert "HTTP 503" in busy.message and "boom" not in busy.message
    for failure in (unreachable, refused, expired, saved, busy):
        assert not any(word in failure.message for word in SDK_WORDS), failure.message
        assert "sk_test" not in failure.message


def test_a_missing_permission_is_named_in_our_words_without_the_key():
    from clinicsync.connections import _PERMISSION_NAME

    said = (
        "The provided key 'rk_test_****abcd' does not have the required permissions for this endpoint on account "
        "'acct_1'. Having the 'rak_customer_write' permission would allow this request to continue."
    )
    failure = classify(
        error(stripe.PermissionError, 403, body={"error": {"type": "invalid_request_error", "message": said}})
    )
    assert failure.kind == "permission" and "lacks a permission ClinicSync needs" in failure.message
    match = _PERMISSION_NAME.search(failure.message)
    assert match is not None and match.group(1) == "rak_customer_write"
    assert "rk_test" not in failure.message and "acct_1" not in failure.message


def test_a_refused_request_quotes_what_stripe_said_about_it_not_the_sdk_wrapping():
    body = {"error": {"type": "invalid_request_error", "message": "Invalid email address: x@@y", "param": "email"}}
    failure = classify(error(stripe.InvalidRequestError, 400, body=body))
    assert failure.message == "Invalid email address: x@@y"
