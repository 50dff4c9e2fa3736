"""The simulated clock `clinicsync serve` runs on in tests (clinicsync.sync.clock.FileClock), and the guard that
keeps it away from anything but the sandbox (clinicsync.cli_serve.sandbox_clock)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from clinicsync.cli_serve import SANDBOX_CLOCK_VAR, sandbox_clock
from clinicsync.sync.clock import FileClock

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _write(path: Path, awake: float, asleep: float = 0.0, seq: int = 1) -> None:
    path.write_text(json.dumps({"start": START.isoformat(), "awake": awake, "asleep": asleep, "seq": seq}))


def _reached(path: Path) -> dict[str, float] | None:
    done = path.with_name(path.name + ".reached")
    return json.loads(done.read_text()) if done.exists() else None


def test_time_moves_only_while_waiting_by_at_most_each_wait_and_only_when_nothing_runs(tmp_path: Path) -> None:
    path = tmp_path / "clock.json"
    _write(path, awake=2.5)
    clock = FileClock(path)
    busy = [True]
    clock.watch(lambda: busy[0])
    event = threading.Event()
    assert clock.now() == START and clock.monotonic() == 1000.0

    clock.wait(event, 1.0)
    clock.wait(event, 1.0)
    assert clock.now() == START, "held while a run is in flight"
    busy[0] = False
    clock.wait(event, 1.0)
    assert clock.now() == START, "and for one more tick, to take the run's report in"
    for expected in (1.0, 2.0, 2.5, 2.5):
        clock.wait(event, 1.0)
        assert clock.monotonic() == 1000.0 + expected
    assert clock.now() == START + timedelta(seconds=2.5)
    assert _reached(path) == {"seq": 1, "awake": 2.5, "asleep": 0.0}

    _write(path, awake=2.5, asleep=3 * 3600, seq=2)  # a suspend: the wall clock jumps, the monotonic one does not
    clock.wait(event, 1.0)
    assert clock.now() == START + timedelta(seconds=2.5 + 3 * 3600) and clock.monotonic() == 1002.5
    assert _reached(path) == {"seq": 2, "awake": 2.5, "asleep": 3 * 3600}


def test_the_file_clock_is_honoured_only_against_a_sandbox_stripe(tmp_path: Path) -> None:
    path = tmp_path / "clock.json"
    _write(path, awake=0)
    said: list[str] = []

    class Settings:
        def __init__(self, stripe_url: str) -> None:
            self.stripe_url = stripe_url

        def get(self, key: str) -> str:
            assert key == "stripe.base_url"
            return self.stripe_url

    assert sandbox_clock({}, Settings("http://127.0.0.1:9"), said.append) is None, "the real clock by default"
    assert said == []
    env = {SANDBOX_CLOCK_VAR: str(path)}
    assert sandbox_clock(env, Settings(""), said.append) is None  # the real Stripe
    assert sandbox_clock(env, Settings("https://stripe.example.com"), said.append) is None
    assert (
        said
        == [f"{SANDBOX_CLOCK_VAR} is ignored: it is for tests against the sandbox only. Syncing on the real clock."] * 2
    )
    assert isinstance(sandbox_clock(env, Settings("http://127.0.0.1:9"), said.append), FileClock)
