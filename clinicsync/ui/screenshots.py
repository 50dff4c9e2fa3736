"""Render the app's screens to PNG, offscreen, on real sandbox data: `make screenshots`.

    QT_QPA_PLATFORM=offscreen python -m clinicsync.ui.screenshots --out docs/screenshots

Three throwaway profiles, each on its own in-process sandbox, in this order (one database is bound per process,
so each app is shut down before the next is built):

1. first run: no keys yet, so the welcome dialog over an empty window;
2. test mode, hard profile: two real syncs (the second after staff edits in the sandbox Cliniko), a
   reconciliation from its tab (after staff edits in the sandbox Stripe), then every tab, and the printable
   reconciliation report as Qt lays it out for the PDF (`reconciliation-report-print.png`, white paper);
3. live mode: the first sync stops at its plan, and the approval dialog it opens.

Each screen is saved in the normal palette (`<name>-light.png`) and in a forced dark Fusion palette
(`<name>-dark.png`), at 1280×800, and again at the window's default size (`<name>-light-1100x720.png`, …).
Dialogs are drawn centred over their dimmed window, as a person sees them. The text is DejaVu Sans, the font the
layout tests use (resources/fonts), so the pictures look the same whichever machine renders them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QEventLoop,
    QMessageLogContext,
    QPoint,
    QRect,
    QSize,
    Qt,
    QTimer,
    QtMsgType,
    qInstallMessageHandler,
)
from PySide6.QtGui import QColor, QFont, QFontDatabase, QImage, QPainter, QPalette
from PySide6.QtWidgets import QApplication, QStyleFactory, QWidget

from clinicsync.sandbox.launcher import Sandbox, start_sandbox
from clinicsync.ui import icons
from clinicsync.ui.main_window import DEFAULT_SIZE

SIZE = QSize(1280, 800)
DEFAULT = QSize(*DEFAULT_SIZE)  # also rendered, with the size in the file name
SIZES = (SIZE, DEFAULT)
PALETTES = ("light", "dark")
SYNC_TIMEOUT_S = 120.0
SETTLE_MS = 250  # long enough for queued signals, layouts and background reads to land before a grab
PATIENTS = 120

# A screenshot run must not wait on backoff or rate limits; the sandbox has neither unless asked.
FAST_SETTINGS = {
    "CLINICSYNC_CLINIKO_REQUESTS_PER_MINUTE": "0",
    "CLINICSYNC_STRIPE_REQUESTS_PER_SECOND": "100000",
    "CLINICSYNC_RETRY_BASE_DELAY_SECONDS": "0.01",
    "CLINICSYNC_RETRY_MAX_DELAY_SECONDS": "0.1",
}


@dataclass
class Shots:
    out_dir: Path
    sizes: tuple[QSize, ...] = SIZES
    palettes: tuple[str, ...] = PALETTES
    log: Callable[[str], None] = print
    saved: list[Path] = field(default_factory=list)


# --- palettes -------------------------------------------------------------------------------------------------


def dark_palette() -> QPalette:
    """A dark Fusion palette (the usual one Qt apps force), so every widget reads light text on dark."""
    palette = QPalette()
    window, base, text, disabled = QColor(45, 45, 48), QColor(30, 30, 32), QColor(230, 230, 230), QColor(128, 128, 128)
    roles = {
        QPalette.ColorRole.Window: window,
        QPalette.ColorRole.WindowText: text,
        QPalette.ColorRole.Base: base,
        QPalette.ColorRole.AlternateBase: QColor(40, 40, 43),
        QPalette.ColorRole.ToolTipBase: QColor(60, 60, 64),
        QPalette.ColorRole.ToolTipText: text,
        QPalette.ColorRole.PlaceholderText: QColor(150, 150, 150),
        QPalette.ColorRole.Text: text,
        QPalette.ColorRole.Button: window,
        QPalette.ColorRole.ButtonText: text,
        QPalette.ColorRole.BrightText: QColor(255, 80, 80),
        QPalette.ColorRole.Light: QColor(70, 70, 74),
        QPalette.ColorRole.Midlight: QColor(58, 58, 62),
        QPalette.ColorRole.Mid: QColor(40, 40, 43),
        QPalette.ColorRole.Dark: QColor(25, 25, 27),
        QPalette.ColorRole.Shadow: QColor(0, 0, 0),
        QPalette.ColorRole.Link: QColor(100, 170, 255),
        QPalette.ColorRole.LinkVisited: QColor(180, 140, 255),
        QPalette.ColorRole.Highlight: QColor(42, 130, 218),
        QPalette.ColorRole.HighlightedText: QColor(255, 255, 255),
    }
    for role, colour in roles.items():
        palette.setColor(role, colour)
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, disabled)
    return palette


@contextmanager
def palette_of(app: QApplication, name: str) -> Iterator[None]:
    """Apply the named palette (Fusion style for both, so only the colours differ); restore the app's after."""
    old_style, old_palette = app.style().name(), app.palette()
    app.setStyle(QStyleFactory.create("Fusion"))
    app.setPalette(dark_palette() if name == "dark" else app.style().standardPalette())
    try:
        yield
    finally:
        app.setStyle(QStyleFactory.create(old_style) or QStyleFactory.create("Fusion"))
        app.setPalette(old_palette)


# --- waiting and grabbing ---------------------------------------------------------------------------------------


def settle(ms: int = SETTLE_MS) -> None:
    """Run the event loop for a moment (signals from worker threads arrive as queued events)."""
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def wait_for(signal: Any, timeout_s: float = SYNC_TIMEOUT_S) -> list[Any]:
    """Run the event loop until `signal` fires; its arguments."""
    received: list[Any] = []
    loop = QEventLoop()

    def done(*args: Any) -> None:
        received.extend(args)
        loop.quit()

    signal.connect(done)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    try:
        loop.exec()
    finally:
        signal.disconnect(done)
    if not received:
        raise TimeoutError(f"nothing arrived within {timeout_s:.0f} s")
    return received


def grab(widget: QWidget) -> QImage:
    settle()
    return widget.grab().toImage()


def over_window(window: QImage, dialog: QImage) -> QImage:
    """The dialog centred over its window, the window dimmed behind it, as a modal dialog looks."""
    canvas = window.convertToFormat(QImage.Format.Format_ARGB32)
    painter = QPainter(canvas)
    painter.fillRect(canvas.rect(), QColor(0, 0, 0, 110))
    target = QRect(QPoint(0, 0), dialog.size().boundedTo(canvas.size()))
    target.moveCenter(canvas.rect().center())
    painter.fillRect(target.adjusted(-1, -1, 1, 1), QColor(0, 0, 0, 160))  # a hairline frame
    painter.drawImage(target, dialog)
    painter.end()
    return canvas


def file_name(name: str, palette: str, size: QSize) -> str:
    """`overview-light.png` at 1280×800 (the README's pictures), `overview-light-1100x720.png` at other sizes."""
    suffix = "" if size == SIZE else f"-{size.width()}x{size.height()}"
    return f"{name}-{palette}{suffix}.png"


def save(shots: Shots, image: QImage, name: str, palette: str, size: QSize) -> None:
    if image.size() != size:
        image = image.scaled(size, Qt.AspectRatioMode.IgnoreAspectRatio, Qt.TransformationMode.SmoothTransformation)
    path = shots.out_dir / file_name(name, palette, size)
    if not image.save(str(path), "PNG"):
        raise OSError(f"could not write {path}")
    shots.saved.append(path)
    shots.log(f"  wrote {path}")


# --- profiles -----------------------------------------------------------------------------------------------------


def profile_env(home: Path, sandbox: Sandbox | None) -> dict[str, str]:
    """This process's environment minus any ClinicSync setting, pointed at a fresh profile (and a sandbox)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CLINICSYNC_")}
    env.update(FAST_SETTINGS)
    if sandbox is not None:
        env.update(sandbox.env())
    env["CLINICSYNC_HOME"] = str(home)
    return env


def build(env: Mapping[str, str], sandbox: Sandbox | None, size: QSize) -> Any:
    from clinicsync.ui.main import build_app

    gui = build_app(env, tray_available=False, sandbox=sandbox, confirm_quit=lambda *_: True)
    gui.window.resize(size)
    gui.window.show()
    settle()
    return gui


def sync(gui: Any) -> Any:
    """A real sync, started the way a person does (Sync now) and awaited on the GUI thread."""
    gui.sync_now()
    (outcome,) = wait_for(gui.ui.bridge.job_finished)
    settle()
    return outcome


def staff_edits(sandbox: Sandbox) -> None:
    """Some changes in Cliniko between syncs (names, phones, addresses, emails), so the second run has updates."""
    sandbox.cliniko.emulator.admin("edit", {"count": 6})


def stage(tab: QWidget) -> None:
    """Point a tab at its most telling content: the history at the newest run that needs attention, so the
    pinned problem rows are in the picture."""
    from clinicsync.ui.history_tab import HistoryTab

    if isinstance(tab, HistoryTab):
        runs = tab.runs_model
        telling = next((r for r in range(runs.rowCount()) if runs.row_at(r).failed or runs.row_at(r).review), 0)
        tab.runs_view.selectRow(telling)


def stripe_edits(sandbox: Sandbox, count: int = 3) -> None:
    """Staff rename a few customers in Stripe, so the reconciliation has field drift to show."""
    import stripe

    assert sandbox.stripe_url and sandbox.stripe_key
    client = stripe.StripeClient(sandbox.stripe_key, base_addresses={"api": sandbox.stripe_url})
    customers = [c for c in client.v1.customers.list(params={"limit": 100}).data if c.metadata]
    for n, customer in enumerate(customers[:count]):
        client.v1.customers.update(customer.id, params={"name": f"{customer.name} (edited in Stripe {n + 1})"})


def reconcile(gui: Any, sandbox: Sandbox) -> int | None:
    """A reconciliation from the Reconciliation tab, after some edits in Stripe; the report's id."""
    tab = gui.window.tabs.get("reconciliation")
    if not hasattr(tab, "run_now"):
        return None
    stripe_edits(sandbox)
    tab.run_now()
    (outcome,) = wait_for(gui.ui.bridge.job_finished)
    settle()
    return outcome.reconcile.report_id if outcome.reconcile is not None else None


def printed_report(report_id: int, size: QSize) -> QImage:
    """The printable report's first screenful as Qt lays it out for the PDF, on white paper."""
    from PySide6.QtGui import QTextDocument

    from clinicsync.store.reconciliation import report_html

    document = QTextDocument()
    document.setHtml(report_html(report_id))
    document.setTextWidth(size.width() - 40)
    image = QImage(size, QImage.Format.Format_RGB32)
    image.fill(QColor("white"))
    painter = QPainter(image)
    painter.translate(20, 20)
    document.drawContents(painter)
    painter.end()
    return image


# --- the three phases ---------------------------------------------------------------------------------------------


def first_run_phase(shots: Shots, app: QApplication, work: Path) -> None:
    try:
        from clinicsync.ui.first_run import FirstRunDialog
    except ModuleNotFoundError:
        shots.log("  skipped first-run: clinicsync.ui.first_run is not in this build")
        return
    gui = build(profile_env(work / "first-run", None), None, shots.sizes[0])
    try:
        for size in shots.sizes:
            gui.window.resize(size)
            for palette in shots.palettes:
                with palette_of(app, palette):
                    dialog = FirstRunDialog(gui.ui, gui.window)
                    dialog.adjustSize()
                    dialog.show()
                    save(shots, over_window(grab(gui.window), grab(dialog)), "first-run", palette, size)
                    dialog.done(0)
                    dialog.deleteLater()
    finally:
        gui.shutdown(30)


def tabs_phase(shots: Shots, app: QApplication, work: Path, patients: int) -> None:
    from clinicsync.ui.main_window import TABS

    with start_sandbox(profile="hard", patients=patients) as sandbox:
        gui = build(profile_env(work / "test-mode", sandbox), sandbox, shots.sizes[0])
        try:
            first = sync(gui)
            shots.log(f"  first sync: {_counts(first)}")
            staff_edits(sandbox)
            second = sync(gui)
            shots.log(f"  second sync: {_counts(second)}")
            report_id = reconcile(gui, sandbox)
            shots.log(f"  reconciliation: report #{report_id}")
            for size in shots.sizes:
                gui.window.resize(size)
                for palette in shots.palettes:
                    with palette_of(app, palette):
                        for spec in TABS:
                            stage(gui.window.show_tab(spec.name))
                            save(shots, grab(gui.window), spec.name, palette, size)
                if report_id is not None:  # paper is white in either palette
                    save(shots, printed_report(report_id, size), "reconciliation-report", "print", size)
            gui.window.show_tab("overview")
        finally:
            gui.shutdown(30)


def approval_phase(shots: Shots, app: QApplication, work: Path, patients: int) -> None:
    with start_sandbox(profile="hard", patients=patients, stripe_mode="live") as sandbox:
        gui = build(profile_env(work / "live-mode", sandbox), sandbox, shots.sizes[0])
        try:
            outcome = sync(gui)  # the first live sync only plans; the window opens the approval dialog
            dialog = gui.window.approval_dialog
            if dialog is None:
                shots.log(f"  skipped approval: no approval dialog opened ({_counts(outcome)})")
                return
            for size in shots.sizes:
                gui.window.resize(size)
                for palette in shots.palettes:
                    with palette_of(app, palette):
                        dialog.resize(dialog.sizeHint().expandedTo(dialog.minimumSize()).boundedTo(size))
                        save(shots, over_window(grab(gui.window), grab(dialog)), "approval", palette, size)
            dialog.reject()
        finally:
            gui.shutdown(30)


def _counts(outcome: Any) -> str:
    if outcome.failure_kind:
        return f"{outcome.failure_kind}: {outcome.message}"
    return "; ".join(
        f"{r.stream} {r.outcome} " + ", ".join(f"{k} {v}" for k, v in r.counts.items() if v) for r in outcome.results
    )


def render_all(
    out_dir: Path,
    *,
    sizes: tuple[QSize, ...] = SIZES,
    palettes: tuple[str, ...] = PALETTES,
    patients: int = PATIENTS,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Render every screen into `out_dir`; returns the files written. A QApplication must exist."""
    app = QApplication.instance()
    if not isinstance(app, QApplication):
        raise RuntimeError("render_all needs a QApplication")
    out_dir.mkdir(parents=True, exist_ok=True)
    shots = Shots(out_dir=out_dir, sizes=tuple(QSize(size) for size in sizes), palettes=palettes, log=log)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="clinicsync-screenshots-") as tmp:
        work = Path(tmp)
        for title, phase in (
            ("first-run dialog", lambda: first_run_phase(shots, app, work)),
            ("tabs (test mode, hard sandbox)", lambda: tabs_phase(shots, app, work, patients)),
            ("approval dialog (live mode)", lambda: approval_phase(shots, app, work, patients)),
        ):
            log(f"{title}:")
            phase()
    log(f"{len(shots.saved)} screenshots in {out_dir} ({time.monotonic() - started:.1f} s)")
    return shots.saved


def use_shipped_font(app: QApplication) -> None:
    """DejaVu Sans from resources/fonts as the app font, so the pictures do not depend on this machine's fonts."""
    fonts = icons.resources_dir() / "fonts"
    for path in sorted(fonts.glob("*.ttf")):
        QFontDatabase.addApplicationFont(str(path))
    app.setFont(QFont("DejaVu Sans", 10))


def _quiet_offscreen(kind: QtMsgType, _context: QMessageLogContext, message: str) -> None:
    # The offscreen platform warns on every raise()/activateWindow(); that is expected here, not news.
    if "This plugin does not support" not in message:
        print(message, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render ClinicSync's screens to PNG on sandbox data.")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    parser.add_argument("--patients", type=int, default=PATIENTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    qInstallMessageHandler(_quiet_offscreen)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    use_shipped_font(app)
    for stale in args.out.glob("*.png") if args.out.is_dir() else ():
        stale.unlink()  # a screen that no longer exists must not leave an old picture behind
    render_all(args.out, patients=args.patients)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
