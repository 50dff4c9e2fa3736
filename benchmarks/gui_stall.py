"""How long does the GUI thread stall while a big sync runs? Prints the longest gap and the 99th percentile.

A 2,000-patient sandbox (in another process, as a real Cliniko/Stripe would be) is synced from the real app
window by clicking its Sync now button. A precise QTimer ticks every 5 ms on the GUI thread; the gap between
consecutive ticks is how long the GUI thread could not answer (a gap of 5 ms is no stall at all). Measured from
the click until shortly after the sync finished, so the screens' refresh at the end counts too.

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/gui_stall.py [--patients 2000] [--tab history]

Target: longest stall <= 50 ms. By default the client-side rate limits are lifted, so the worker runs flat out and
competes hardest with the GUI thread for the interpreter; `--realistic` keeps the app's default limits.
The app's start-up objects are frozen out of the garbage collector after the window is built, as `run_gui` does.

`--why` says what the long stalls were: a watch thread samples every thread's stack whenever the heartbeat is over
40 ms late and counts where each was, times garbage collections over 5 ms (and on which thread), and for the
longest gaps prints the app's CPU time during each and the GUI thread's time waiting for a CPU (Linux), so a
stall the machine's load made (little app CPU, a long wait) is told from one the app made (CPU time ≈ the gap).
"""

from __future__ import annotations

import argparse
import collections
import gc
import itertools
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# (The platform is chosen above, before Qt is imported.)
import medians  # benchmarks/medians.py: the one way to repeat a run
from PySide6.QtCore import QEventLoop, Qt, QTimer
from PySide6.QtWidgets import QApplication, QPushButton

from clinicsync.sandbox.launcher import spawn

TICK_MS = 5
TARGET_MS = 50.0
AFTER_FINISH_MS = 1_000
UNTHROTTLED = {
    "CLINICSYNC_CLINIKO_REQUESTS_PER_MINUTE": "0",
    "CLINICSYNC_STRIPE_REQUESTS_PER_SECOND": "100000",
}


IDLE = {"wait", "_worker", "get", "select", "sleep", "_wait_for_tstate_lock", "poll", "accept", "recv_into"}
WHY_AFTER_MS = 40.0  # a gap this long gets its threads' stacks sampled (--why)


class StallWatch:
    """`--why`: a thread that, whenever the heartbeat has not ticked for WHY_AFTER_MS, samples every thread's
    stack (sys._current_frames) and counts where each one was, plus garbage collections over 5 ms and on which
    thread. When the worker holds the interpreter lock in one long C call, this thread itself wakes late: that
    lateness is counted too, as it says the lock, not the GUI thread's own work, was the obstacle."""

    def __init__(self, gui_ident: int) -> None:
        self.gui_ident = gui_ident
        self.last_tick = time.perf_counter()
        # Per tick: (time, the process's CPU seconds, the GUI thread's seconds waiting for a CPU), so a long gap
        # can say whether the machine (load) or the app (a busy thread holding the interpreter) made it.
        self.marks: list[tuple[float, float, float]] = []
        self._schedstat = _open_schedstat(threading.get_native_id())
        self.stop = threading.Event()
        self.gui_where: collections.Counter[str] = collections.Counter()
        self.other_where: collections.Counter[str] = collections.Counter()
        self.late_wakeups: list[float] = []
        self.collections: list[tuple[float, int, str, int]] = []  # (ms, generation, thread, collected)
        self._gc_started: dict[int, float] = {}
        self._thread = threading.Thread(target=self._run, name="stall-watch", daemon=True)

    def tick(self) -> None:
        self.last_tick = time.perf_counter()
        self.marks.append((self.last_tick, time.process_time(), self._waited_for_cpu()))

    def _waited_for_cpu(self) -> float:
        if self._schedstat is None:
            return 0.0
        try:  # Linux: the thread's time on a run queue, in ns (the second field)
            return int(os.pread(self._schedstat, 100, 0).split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return 0.0

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._thread.start()

    def finish(self) -> None:
        self.stop.set()
        self._thread.join(5)
        gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        ident = threading.get_ident()
        if phase == "start":
            self._gc_started[ident] = time.perf_counter()
        elif ident in self._gc_started:
            ms = (time.perf_counter() - self._gc_started.pop(ident)) * 1000
            if ms > 5:
                name = "GUI" if ident == self.gui_ident else threading.current_thread().name
                self.collections.append((ms, info["generation"], name, info["collected"]))

    def _run(self) -> None:
        while not self.stop.is_set():
            asked = time.perf_counter()
            time.sleep(0.005)
            now = time.perf_counter()
            if (now - asked) * 1000 > 25:
                self.late_wakeups.append((now - asked) * 1000)
            if (now - self.last_tick) * 1000 > WHY_AFTER_MS:
                self._sample()

    def _sample(self) -> None:
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            if ident == threading.get_ident():
                continue
            frames = _innermost(frame, 5)
            if ident != self.gui_ident and frames[0].f_code.co_name in IDLE:  # type: ignore[attr-defined]
                continue  # waiting on a lock, a queue or a socket: not holding the interpreter
            where = " < ".join(_frame_name(f) for f in frames)
            if ident == self.gui_ident:
                self.gui_where[where] += 1
            else:
                self.other_where[f"[{names.get(ident, ident)}] {where}"] += 1

    def report(self) -> None:
        print(f"\nwhere the GUI thread was during stalls over {WHY_AFTER_MS:.0f} ms (samples every 5 ms):")
        for where, count in self.gui_where.most_common(12):
            print(f"  {count:5d}  {where}")
        print("where the other threads were at the same moments:")
        for where, count in self.other_where.most_common(12):
            print(f"  {count:5d}  {where}")
        gaps = sorted(itertools.pairwise(self.marks), key=lambda pair: pair[0][0] - pair[1][0])
        print("longest gaps: the app's CPU time during each, and the GUI thread's wait for a CPU (machine load)")
        # The app can only have caused as much of a gap as it had a CPU for: with a quiet machine the two agree.
        own = max((min(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(self.marks)), default=0.0)
        print(f"longest gap's part the app had a CPU for: {own * 1000:.1f} ms (the rest: waiting for the machine)")
        for (t0, cpu0, wait0), (t1, cpu1, wait1) in gaps[:8]:
            gap, cpu, waited = ((b - a) * 1000 for a, b in ((t0, t1), (cpu0, cpu1), (wait0, wait1)))
            print(f"  {gap:7.1f} ms: app CPU {cpu:6.1f} ms, GUI thread waited for a CPU {waited:6.1f} ms")
        late = sorted(self.late_wakeups, reverse=True)
        print(
            f"watch thread woke > 25 ms late {len(late)} times (longest {', '.join(f'{x:.0f}' for x in late[:8])} ms)"
        )
        slow = sorted(self.collections, reverse=True)
        print(f"garbage collections over 5 ms: {len(slow)}")
        for ms, generation, thread, collected in slow[:8]:
            print(f"  {ms:6.1f} ms  generation {generation} on {thread}, {collected:,} collected")


def _open_schedstat(thread_id: int) -> int | None:
    try:
        return os.open(f"/proc/self/task/{thread_id}/schedstat", os.O_RDONLY)
    except OSError:  # not Linux: the gaps are still timed, without the machine's share
        return None


def _innermost(frame: object, depth: int) -> list[object]:
    frames = []
    while frame is not None and len(frames) < depth:
        frames.append(frame)
        frame = frame.f_back  # type: ignore[attr-defined]
    return frames


def _frame_name(frame: object) -> str:
    code = frame.f_code  # type: ignore[attr-defined]
    return f"{Path(code.co_filename).stem}.{code.co_name}:{frame.f_lineno}"  # type: ignore[attr-defined]


def start_sandbox_process(patients: int, work: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    args = ["--profile", "clean", "--patients", str(patients)]
    process, info = spawn(args, work / "sandbox.json", stdout=subprocess.DEVNULL)
    return process, info["env"]


def profile_env(home: Path, sandbox_env: dict[str, str], realistic: bool) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLINICSYNC_")}
    env.update(sandbox_env)
    if not realistic:
        env.update(UNTHROTTLED)
    env["CLINICSYNC_HOME"] = str(home)
    return env


def sync_now_button(window: object) -> QPushButton | None:
    """The Overview's Sync now button, the way a person starts a sync."""
    overview = window.tab("overview")  # type: ignore[attr-defined]
    return next((b for b in overview.findChildren(QPushButton) if b.text().replace("&", "") == "Sync now"), None)


def measure(env: dict[str, str], tab: str, watch: StallWatch | None = None) -> tuple[list[float], float, str]:
    """(tick times, sync seconds, result) for one sync started from the window."""
    from clinicsync.ui.main import build_app, freeze_startup_objects

    gui = build_app(env, tray_available=False, confirm_quit=lambda *_: True)
    freeze_startup_objects()  # as the app's own start does (run_gui)
    try:
        gui.window.resize(1280, 800)
        gui.window.show()
        gui.window.show_tab(tab)
        ticks: list[float] = []
        heartbeat = QTimer(timerType=Qt.TimerType.PreciseTimer, interval=TICK_MS)
        heartbeat.timeout.connect(lambda: ticks.append(time.perf_counter()))
        if watch is not None:
            heartbeat.timeout.connect(watch.tick)
        finished: list[object] = []
        loop = QEventLoop()
        gui.ui.bridge.job_finished.connect(lambda outcome: (finished.append(outcome), loop.quit()))
        settle(200)
        heartbeat.start()
        if watch is not None:
            watch.tick()
            watch.start()
        started = time.perf_counter()
        button = sync_now_button(gui.window)
        if button is not None:
            button.click()
        else:  # an Overview without the button: the same request the tray's Sync now makes
            gui.sync_now()
        QTimer.singleShot(600_000, loop.quit)
        loop.exec()
        elapsed = time.perf_counter() - started
        settle(AFTER_FINISH_MS)
        heartbeat.stop()
        if watch is not None:
            watch.finish()
        return ticks, elapsed, describe(finished[0] if finished else None)
    finally:
        gui.shutdown(30)


def settle(ms: int) -> None:
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def describe(outcome: object) -> str:
    if outcome is None:
        return "did not finish within 10 minutes"
    if getattr(outcome, "failure_kind", None):
        return f"failed ({outcome.failure_kind}): {outcome.message}"  # type: ignore[attr-defined]
    return "; ".join(
        f"{r.outcome}, " + ", ".join(f"{k} {v}" for k, v in r.counts.items() if v)
        for r in outcome.results  # type: ignore[attr-defined]
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--tab", default="overview", help="the tab on screen during the sync (overview, history…)")
    parser.add_argument("--realistic", action="store_true", help="keep the app's default request rate limits")
    parser.add_argument("--why", action="store_true", help="sample the threads' stacks during each long stall")
    medians.add_runs_option(parser)
    args = parser.parse_args()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    middle = medians.repeat(args.runs, lambda _: measure_once(args), ratio_name="longest stall (ms)")
    return 0 if middle.finished and middle.ratio <= TARGET_MS else 1


def measure_once(args: argparse.Namespace) -> medians.RunFigures:
    """One sync from a fresh sandbox and profile, its stalls printed; the longest stall is the figure judged."""
    watch = StallWatch(threading.get_ident()) if args.why else None  # a run's own samples, reported after it
    with tempfile.TemporaryDirectory(prefix="clinicsync-gui-stall-") as tmp:
        work = Path(tmp)
        sandbox, sandbox_env = start_sandbox_process(args.patients, work)
        try:
            ticks, elapsed, result = measure(profile_env(work / "home", sandbox_env, args.realistic), args.tab, watch)
        finally:
            sandbox.terminate()
            sandbox.wait(10)
    gaps_ms = [(b - a) * 1000 for a, b in itertools.pairwise(ticks)]
    if not gaps_ms:
        print("no heartbeat ticks were recorded")
        return medians.RunFigures(elapsed, math.inf, finished=False)
    longest, p99 = max(gaps_ms), percentile(gaps_ms, 0.99)
    verdict = "met" if longest <= TARGET_MS else "MISSED"
    limits = "the app's default" if args.realistic else "no client-side"
    print(f"sync of {args.patients:,} sandbox patients started with Sync now ({limits} rate limits,")
    print(f"  '{args.tab}' tab on screen): {elapsed:.1f} s; {result}")
    print(f"heartbeat every {TICK_MS} ms: {len(gaps_ms):,} gaps measured")
    print(f"longest GUI-thread stall: {longest:.1f} ms (target <= {TARGET_MS:.0f} ms: {verdict})")
    print(f"99th percentile gap:      {p99:.1f} ms")
    print(f"median gap:               {statistics.median(gaps_ms):.1f} ms")
    # A busy machine starves the GUI thread of a CPU, which no app can prevent: say how busy it was.
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    if watch is not None:
        watch.report()
    return medians.RunFigures(elapsed, longest)


if __name__ == "__main__":
    raise SystemExit(main())
