"""The benchmarks' one way to repeat a measured run: every run's figures printed, then the median, judged."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

# The benchmarks import each other as scripts do (`import floors`), from their own folder.
sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))
import medians


def figures(wall: float, ratio: float, **more: object) -> medians.RunFigures:
    return medians.RunFigures(wall_s=wall, ratio=ratio, **more)  # type: ignore[arg-type]


def test_the_median_is_taken_figure_by_figure_and_a_run_that_did_not_finish_counts():
    runs = [
        figures(30.0, 1.30, peak_rss_mib=90.0, kb_per_record=12.0, requests={"cliniko": 21, "stripe": 2002}),
        figures(20.0, 1.05, peak_rss_mib=70.0, kb_per_record=None, requests={"cliniko": 23, "stripe": 2010}),
        figures(25.0, 1.10, finished=False, peak_rss_mib=80.0, kb_per_record=14.0, requests={"cliniko": 22}),
    ]
    middle = medians.median(runs)
    assert (middle.wall_s, middle.ratio, middle.peak_rss_mib) == (25.0, 1.10, 80.0)
    assert middle.kb_per_record == 13.0, "a figure a run could not read is left out, not counted as 0"
    assert middle.requests == {"cliniko": 22, "stripe": 2002}, "a service a run did not use counts 0 requests"
    assert not middle.finished
    assert medians.exit_status(middle) == 1
    assert medians.exit_status(medians.median(runs[1:2])) == 0


def test_the_exit_status_is_judged_on_the_median_not_on_the_worst_run():
    runs = [figures(10.0, 1.40), figures(10.0, 1.10), figures(10.0, 1.12)]
    assert medians.exit_status(medians.median(runs)) == 0
    assert medians.exit_status(medians.median([figures(10.0, 1.40), figures(10.0, 1.20), figures(9.0, 1.0)])) == 1


def test_repeat_runs_the_measurement_n_times_and_prints_each_run_and_the_median(capsys):
    seen: list[int] = []

    def once(number: int) -> medians.RunFigures:
        seen.append(number)
        return figures(float(number), 1.0 + number / 10, requests={"stripe": number})

    middle = medians.repeat(3, once)
    assert seen == [1, 2, 3]
    assert (middle.wall_s, middle.ratio) == (2.0, 1.2)
    out = capsys.readouterr().out
    for label in ("run 1:", "run 2:", "run 3:", "median:"):
        assert label in out
    assert "median: wall 2.00 s, wall / floor 1.20, peak RSS n/a" in out


def test_the_runs_option_defaults_to_three_and_fewer_than_one_run_is_refused():
    parser = argparse.ArgumentParser()
    medians.add_runs_option(parser)
    assert parser.parse_args([]).runs == 3
    assert parser.parse_args(["--runs", "5"]).runs == 5
    with pytest.raises(SystemExit):
        medians.repeat(0, lambda _: figures(1.0, 1.0))


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux only: elsewhere the peak spans runs")
def test_each_run_reports_its_own_peak_rss_after_a_reset():
    import app_figures

    held = bytearray(64 * 1024 * 1024)  # raises the peak by 64 MiB while held
    held[::4096] = b"x" * len(held[::4096])  # touch every page so it is resident
    peak_while_held = app_figures.peak_rss_mib()
    del held
    app_figures.reset_peak_rss()
    assert app_figures.peak_rss_mib() < peak_while_held - 32
