"""Where the customer index's top-up listing starts."""

from __future__ import annotations

from datetime import datetime

from clinicsync.store.models import StreamState
from clinicsync.sync.matching import CLOCK_MARGIN_S, REFRESH_OVERLAP_S, refresh_since


def test_the_top_up_starts_a_little_before_the_newest_created_time_the_index_has_seen() -> None:
    state = StreamState(stripe_index_built_at=datetime(2026, 11, 1, 9, 0), stripe_index_high_water=1_790_000_000)
    assert refresh_since(state) == 1_790_000_000 - REFRESH_OVERLAP_S


def test_an_index_built_before_the_high_water_mark_existed_starts_at_its_build_time_less_a_clock_margin() -> None:
    built = datetime(2026, 11, 1, 9, 0)  # stored naive, in UTC
    state = StreamState(stripe_index_built_at=built, stripe_index_high_water=None)
    assert refresh_since(state) == 1_793_523_600 - CLOCK_MARGIN_S
