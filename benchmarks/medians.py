"""The one way a benchmark repeats its measured run: `--runs N` (default 3) runs, each one's figures printed, then a
table of every run and the median, and the exit status judged on the median (`floors.exit_status`).

A run is measured and reported by the benchmark itself; it hands back a `RunFigures`. Only the measured run is
repeated: a baseline (the naive comparison run) runs once, after the repeated runs. Peak RSS is each run's own
(`app_figures.reset_peak_rss` before it), since the runs share the benchmark's process.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import floors

DEFAULT_RUNS = 3


@dataclass(frozen=True)
class RunFigures:
    """What `make bench` compares across runs. `ratio` is the one the target is judged on (wall / the floor at the
    app's budgets, or the stall in ms for the GUI benchmarks); `finished` says the run ended as it should."""

    wall_s: float
    ratio: float
    finished: bool = True
    peak_rss_mib: float | None = None
    kb_per_record: float | None = None
    requests: dict[str, int] = field(default_factory=dict)  # service → requests it received


def add_runs_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runs",
        type=int,
        default=DEFAULT_RUNS,
        help=f"measured runs; the median is printed and judged (default {DEFAULT_RUNS})",
    )


def _median(values: Sequence[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def median(runs: Sequence[RunFigures]) -> RunFigures:
    """Each figure's median over the runs (figures a run could not read left out); finished only if all did."""
    services = sorted({service for run in runs for service in run.requests})
    requests = {service: _median([run.requests.get(service, 0) for run in runs]) for service in services}
    return RunFigures(
        wall_s=statistics.median(run.wall_s for run in runs),
        ratio=statistics.median(run.ratio for run in runs),
        finished=all(run.finished for run in runs),
        peak_rss_mib=_median([run.peak_rss_mib for run in runs]),
        kb_per_record=_median([run.kb_per_record for run in runs]),
        requests={service: round(count) for service, count in requests.items() if count is not None},
    )


def _row(label: str, run: RunFigures, services: Sequence[str], ratio_name: str) -> str:
    rss = "n/a" if run.peak_rss_mib is None else f"{run.peak_rss_mib:.0f} MiB"
    disk = "n/a" if run.kb_per_record is None else f"{run.kb_per_record:.1f} KB"
    requests = ", ".join(f"{service} {run.requests.get(service, 0)}" for service in services) or "-"
    ending = "" if run.finished else ", did not finish"
    return (
        f"  {label}: wall {run.wall_s:.2f} s, {ratio_name} {run.ratio:.2f}, peak RSS {rss}, "
        f"written per record {disk}, requests {requests}{ending}"
    )


def print_table(runs: Sequence[RunFigures], ratio_name: str = "wall / floor") -> RunFigures:
    """Print each run's figures and their median; return the median."""
    middle = median(runs)
    services = sorted({service for run in runs for service in run.requests})
    print(f"Runs ({len(runs)}) and their median:")
    for number, run in enumerate(runs, 1):
        print(_row(f"run {number}", run, services, ratio_name))
    print(_row("median", middle, services, ratio_name))
    return middle


def repeat(runs: int, measure_once: Callable[[int], RunFigures], ratio_name: str = "wall / floor") -> RunFigures:
    """Call `measure_once(number)` `runs` times (it measures and prints one run), then print the table; return the
    median."""
    if runs < 1:
        raise SystemExit("--runs must be at least 1")
    measured = []
    for number in range(1, runs + 1):
        if runs > 1:
            print(f"-- run {number} of {runs}")
        measured.append(measure_once(number))
        print()
    return print_table(measured, ratio_name)


def exit_status(middle: RunFigures) -> int:
    """The benchmark's exit status, judged on the median (see floors.exit_status)."""
    return floors.exit_status(middle.finished, middle.ratio)
