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
