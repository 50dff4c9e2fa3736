"""A stream asked for alone still needs what it stands on: when a stream it depends on has never completed for
these accounts, the sync says which and writes nothing (exit 2 from the CLI, as a configuration problem)."""

from __future__ import annotations

import dataclasses

import pytest

from clinicsync import streams as stream_registry
from clinicsync.mapping.defaults import DEFAULT_MAPPINGS
from clinicsync.sync import service
from clinicsync.sync.service import ConfigProblem, run_sync
from tests.support import context, executed_writes, sync_once


@pytest.fixture
def invoices_like(monkeypatch: pytest.MonkeyPatch) -> str:
    """A stream that depends on the patients stream (as invoices will), registered for this test only."""
    base = stream_registry.STREAMS["cliniko.patients"]
    fake = dataclasses.replace(base, name="cliniko.dependent", depends_on=("cliniko.patients",))
    registry = {**stream_registry.STREAMS, fake.name: fake}
    monkeypatch.setattr(service, "STREAMS", registry)
    _give_mapping(monkeypatch, fake.name)
    return fake.name


def _give_mapping(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setitem(DEFAULT_MAPPINGS, name, dataclasses.replace(DEFAULT_MAPPINGS["cliniko.patients"], stream=name))


def test_a_stream_alone_is_refused_until_its_dependency_has_synced(make_sandbox, env_for, invoices_like):
    sandbox = make_sandbox(profile="clean", patients=5)
    env = env_for(sandbox)
    ctx = context(env)
    with pytest.raises(ConfigProblem, match=r"cliniko\.dependent needs cliniko\.patients"):
        run_sync(ctx.paths, ctx.settings, ctx.secrets, streams=[invoices_like])
    assert executed_writes(sandbox.stripe_url) == 0, "nothing was written"

    sync_once(env)  # the patients stream completes once
    assert service.failure_of(ConfigProblem("x")) == ("config", "x"), "the CLI exits 2 for this kind"
    ctx = context(env)
    (result,) = run_sync(ctx.paths, ctx.settings, ctx.secrets, streams=[invoices_like])
    assert result.stream == invoices_like and result.outcome == "ok"


def test_a_dependency_on_a_source_the_clinic_has_not_connected_counts_as_met(
    make_sandbox, env_for, monkeypatch: pytest.MonkeyPatch
):
    base = stream_registry.STREAMS["cliniko.patients"]
    other_source = dataclasses.replace(base, name="calcom.somewhere", source_system="calcom")
    dependent = dataclasses.replace(base, name="cliniko.dependent", depends_on=("calcom.somewhere",))
    registry = {**stream_registry.STREAMS, other_source.name: other_source, dependent.name: dependent}
    monkeypatch.setattr(service, "STREAMS", registry)
    _give_mapping(monkeypatch, dependent.name)
    sandbox = make_sandbox(profile="clean", patients=3)
    ctx = context(env_for(sandbox))
    (result,) = run_sync(ctx.paths, ctx.settings, ctx.secrets, streams=["cliniko.dependent"])
    assert result.outcome == "ok"
