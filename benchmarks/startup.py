"""How long from launching ClinicSync to its main window on screen? Prints the median of N cold starts.

Each run spawns a fresh interpreter on a fresh profile (a temporary CLINICSYNC_HOME) whose keys come from the
environment (a sandbox in another process, so no first-run welcome and no keyring), offscreen. The clock starts
just before the process is spawned and stops when the main window receives its first Show event, and again at its
first paint; the child writes both wall-clock times to a file and quits through the app's own exit path.

The app has no "report when shown" hook, so the child is `python -c` running the same `run_gui()` that
`python -m clinicsync` runs, with an application-wide event filter installed first (the QApplication is created
by the hook, and run_gui reuses an existing one). Only the CLI's argument parsing is skipped (~1 ms).

    .venv/bin/python benchmarks/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clinicsync.sandbox.launcher import spawn

CHILD = r"""
import json, sys, time
from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtWidgets import QApplication, QMainWindow

report = sys.argv[1]
marks = {}

class FirstShow(QObject):
    def eventFilter(self, obj, event):
        kind = event.type()
        if isinstance(obj, QMainWindow) and kind in (QEvent.Type.Show, QEvent.Type.Paint):
            name = "shown" if kind == QEvent.Type.Show else "painted"
            if name not in marks:
                marks[name] = time.time()
                if len(marks) == 2:
                    with open(report, "w") as handle:
                        json.dump(marks, handle)
                    QTimer.singleShot(0, lambda: QApplication.instance().exit(0))
        return False

app = QApplication(sys.argv[:1])
hook = FirstShow()
app.installEventFilter(hook)
from clinicsync.ui.main import run_gui
sys.exit(run_gui(["clinicsync"]))
"""


def start_sandbox(work: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    process, info = spawn(["--patients", "20"], work / "sandbox.json", stdout=subprocess.DEVNULL)
    return process, info["env"]


def one_start(work: Path, run: int, sandbox_env: dict[str, str]) -> dict[str, float]:
    """Seconds from spawn to the window's first Show event and to its first paint."""
    report = work / f"shown-{run}.json"
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLINICSYNC_")}
    env.update(sandbox_env)
    env.update({"CLINICSYNC_HOME": str(work / f"home-{run}"), "QT_QPA_PLATFORM": "offscreen"})
    started = time.time()
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(report)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=120,
        check=False,
    )
    if not report.exists():
        raise RuntimeError(f"run {run}: the window was never shown (exit {child.returncode}): {child.stderr[-800:]!r}")
    marks = json.loads(report.read_text())
    return {name: moment - started for name, moment in marks.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clinicsync-startup-") as tmp:
        work = Path(tmp)
        sandbox, sandbox_env = start_sandbox(work)
        try:
            one_start(work, 0, sandbox_env)  # warm the OS file cache once; not counted
            runs = [one_start(work, run, sandbox_env) for run in range(1, args.runs + 1)]
        finally:
            sandbox.terminate()
            sandbox.wait(10)
    shown = [r["shown"] * 1000 for r in runs]
    painted = [r["painted"] * 1000 for r in runs]
    print(f"{args.runs} cold starts of ClinicSync (fresh profile, keys from the environment, offscreen)")
    print(f"  process start → main window shown:   median {statistics.median(shown):.0f} ms")
    print(f"    runs: {', '.join(f'{ms:.0f}' for ms in shown)} ms")
    print(f"  process start → first paint:         median {statistics.median(painted):.0f} ms")
    print(f"  machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
