"""The `clinicsync` command under hostile conditions: a paused profile, unusable folders and databases, damaged
stored rows, bad setting values, killed runs and inputs that never end. Every case ends in a specific message and
a documented exit code, never a traceback.

Runs the command as a user does (a subprocess), with the helpers and keyring backends of test_cli.py.
"""

from __future__ import annotations

from clinicsync.sync.runner import PAUSED_MESSAGE
from tests.integration.test_cli import cli, cli_env, expect  # noqa: F401 - cli_env is a fixture
from tests.support import executed_writes, stats


def _no_traceback(ran) -> None:
    assert "Traceback" not in ran.text, ran


# --- 1. pause --------------------------------------------------------------------------------------------------


def test_a_paused_profile_makes_cli_sync_exit_2_writing_nothing_unless_told_to_ignore_the_pause(make_sandbox, cli_env):
    sandbox = make_sandbox(profile="clean", patients=3)
    env = cli_env(sandbox)
    expect(cli(env, "config", "set", "sync.paused", "true"), 0)
    for args in (("sync", "--once"), ("sync", "--once", "--dry-run")):
        paused = expect(cli(env, *args), 2)
        assert PAUSED_MESSAGE in paused.err, paused
        assert "clinicsync config set sync.paused false" in paused.err and "--ignore-pause" in paused.err, paused
        _no_traceback(paused)
    assert stats(sandbox.cliniko_url)["requests"] == 0
    assert stats(sandbox.stripe_url)["requests"] == 0
    assert "No sync has run yet" in expect(cli(env, "status"), 0).out, "not even a run row is written"

    # Paused by the environment: the way out is the variable, not the stored setting.
    by_env = expect(cli(env | {"CLINICSYNC_SYNC_PAUSED": "yes"}, "sync", "--once"), 2)
    assert PAUSED_MESSAGE in by_env.err and "CLINICSYNC_SYNC_PAUSED" in by_env.err, by_env

    forced = expect(cli(env, "sync", "--once", "--ignore-pause"), 0)
    assert "3 created" in forced.out
    assert executed_writes(sandbox.stripe_url) == 3
