"""What the app itself cost during a measured run: CPU seconds, bytes written to disk and peak memory.

The sandboxes run in their own process (clinicsync.sandbox.launcher.spawn), so these figures of the benchmark's
own process are the app's alone. Linux reads /proc; elsewhere the figures that cannot be read are None.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from clinicsync.sandbox.launcher import spawn
from clinicsync.store.settings import spec_for


def peak_rss_kib() -> int:
    """This process's peak resident set. Linux's ru_maxrss keeps the high-water mark of the process it was forked
    from across exec (a benchmark parent holding thousands of seeded records), so VmHWM is read instead."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS


def reset_peak_rss() -> None:
    """Start this process's peak resident set again from now (Linux: /proc/self/clear_refs "5"), so that repeated
    runs in one process each report their own peak; elsewhere, nothing (the peak then spans the runs)."""
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    return peak_rss_kib() / 1024


def written_bytes() -> int | None:
    """Bytes this process caused to be written to storage (/proc/self/io write_bytes), or None."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Figures:
    cpu_s: float
    written: int | None

    @classmethod
    def now(cls) -> Figures:
        return cls(cpu_seconds(), written_bytes())

    def since(self, earlier: Figures) -> Figures:
        written = None if self.written is None or earlier.written is None else self.written - earlier.written
        return Figures(self.cpu_s - earlier.cpu_s, written)

    def kb_per_record(self, records: int) -> float | None:
        return None if self.written is None else self.written / max(records, 1) / 1024

    def describe(self, records: int) -> str:
        disk = (
            "n/a"
            if self.written is None
            else f"{self.written / 1e6:.1f} MB ({self.written / max(records, 1) / 1024:.1f} KB per record)"
        )
        return f"app CPU {self.cpu_s:.1f} s, written to disk {disk}, peak RSS {peak_rss_kib() / 1024:.0f} MiB"


@contextmanager
def sandbox_process(args: list[str], workdir: Path, *, timeout_s: float = 300.0) -> Iterator[dict[str, Any]]:
    """The sandboxes in their own process for the duration: what the launcher wrote (URLs, keys, `env`)."""
    process, info = spawn(args, workdir / "sandbox.json", timeout_s=timeout_s, stdout=subprocess.DEVNULL)
    try:
        yield info
    finally:
        process.terminate()
        process.wait(timeout=30)


def sandbox_stats(url: str) -> dict[str, Any]:
    """A sandbox's request counters (its admin API, which costs no API request)."""
    origin = httpx.URL(url)
    response = httpx.get(f"{origin.scheme}://{origin.host}:{origin.port}/_sandbox/stats", timeout=30)
    response.raise_for_status()
    return dict(response.json())


def stats_since(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """The counters of the measured run alone (endpoints it did not call left out)."""
    return {
        "requests": after["requests"] - before["requests"],
        "mutations_total": after["mutations_total"] - before["mutations_total"],
        "rate_limited": after["rate_limited"] - before["rate_limited"],
        "by_endpoint": {
            name: count - before["by_endpoint"].get(name, 0)
            for name, count in after["by_endpoint"].items()
            if count - before["by_endpoint"].get(name, 0)
        },
    }


def first_sync_arguments(doc: str | None, count_flag: str, default: int, count_help: str) -> argparse.ArgumentParser:
    """The arguments every first-sync benchmark takes: how many records, the latency, the write workers, the seed."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument(count_flag, type=int, default=default, help=count_help)
    parser.add_argument("--latency-ms", type=float, default=80.0)
    parser.add_argument(
        "--workers",
        type=int,
        default=spec_for("stripe.workers").default,
        help="stripe.workers (default: the app's default)",
    )
    parser.add_argument("--seed", type=int, default=1)
    return parser
