from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clinicsync.sandbox.launcher import Sandbox, start_sandbox
from tests.support import ARCHIVED_LISTINGS, profile_env


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., Sandbox]]:
    """Start in-process sandboxes (Cliniko + Stripe on 127.0.0.1); all are stopped after the test."""
    started: list[Sandbox] = []

    def make(**kwargs: object) -> Sandbox:
        kwargs.setdefault("products", 0)  # a product catalogue only where a test is about products
        sandbox = start_sandbox(**kwargs)  # type: ignore[arg-type]
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in started:
        sandbox.stop()


@pytest.fixture(params=ARCHIVED_LISTINGS)
def archived_listing(request: pytest.FixtureRequest) -> str:
    """What a Cliniko listing with `q[]=archived_at:*` holds, which Cliniko does not document: the test runs once
    with live and archived records in it ("lists_live") and once with archived records only ("archived_only"). Pass
    the value to `set_archived_listing` once the sandbox is made."""
    return str(request.param)


@pytest.fixture
def env_for(tmp_path: Path) -> Callable[..., dict[str, str]]:
    """A fresh profile (CLINICSYNC_HOME under tmp_path) pointed at a sandbox, with fast retry settings."""

    def make(sandbox: Sandbox, name: str = "profile", **overrides: str) -> dict[str, str]:
        return profile_env(tmp_path / name, sandbox.env(), **overrides)

    return make
