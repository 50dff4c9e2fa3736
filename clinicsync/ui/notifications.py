"""Desktop notifications, only when a person must act: a key or setting broke, new records wait for review,
a live sync waits for approval, or a stream keeps failing. Routine success is never announced.

`decide(previous, new)` is the whole policy, pure and unit-tested. `Notifier` feeds it each finished sync (on the
GUI thread, from the bridge) and passes what it returns to a sink (the tray's balloon), never repeating the same
notice twice in a row (a key that stays broken is announced once, not on every run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QObject

from clinicsync.labels import for_gui, plural
from clinicsync.sync.runner import JobOutcome
from clinicsync.ui.bridge import RunnerBridge
from clinicsync.ui.status import BROKEN_STOPS, stream_label

# Failures that are not a person's to fix on their own but are worth a word if they repeat.
TRANSIENT_KINDS = ("unreachable", "error")


@dataclass(frozen=True)
class Notice:
    key: str  # identifies the situation, so the same one is not announced twice in a row
    title: str
    message: str
    tab: str  # where clicking the notice leads (MainWindow.show_tab)
    critical: bool = False


def _per_stream(outcome: JobOutcome | None, field: str) -> dict[str, int]:
    if outcome is None:
        return {}
    return {r.stream: r.counts.get(field, 0) for r in outcome.results}


def _failed_streams(outcome: JobOutcome | None) -> set[str]:
    if outcome is None:
        return set()
    return {r.stream for r in outcome.results if r.outcome == "failed" and r.stop_kind not in BROKEN_STOPS}


def decide(previous: JobOutcome | None, new: JobOutcome) -> Notice | None:
    """The one notification (if any) a finished sync deserves, given the sync before it."""
    if new.failure_kind in ("auth", "config"):
        return Notice(
            f"broken:{new.failure_kind}",
            "ClinicSync can't sync",
            for_gui(new.message) or "A connection needs attention.",
            "connections",
            critical=True,
        )
    storage = next((r.message for r in new.results if r.stop_kind == "storage"), None)
    if new.failure_kind == "storage" or storage:
        message = for_gui(new.message or storage or "")
        return Notice("storage", "ClinicSync can't save its records", message, "overview", True)
    if new.failure_kind == "internal":
        return Notice("internal", "ClinicSync hit a problem", for_gui(new.message), "overview", critical=True)
    for result in new.results:
        if result.stop_kind in BROKEN_STOPS:
            return Notice(
                "broken:auth",
                "ClinicSync can't sync",
                for_gui(result.message) or "A key was refused.",
                "connections",
                True,
            )
    approval = [r.stream for r in new.results if r.outcome == "needs_approval"]
    if approval:
        names = ", ".join(stream_label(s) for s in approval)
        return Notice(
            "approval:" + ",".join(approval),
            "Approve the first live sync",
            f"Nothing was written to your live Stripe account yet: check and approve the plan for {names}.",
            "overview",
        )
    before_review, now_review = _per_stream(previous, "review"), _per_stream(new, "review")
    new_reviews = sum(max(0, n - before_review.get(s, 0)) for s, n in now_review.items())
    if new_reviews:
        return Notice(
            f"review:{sum(now_review.values())}",
            "Records need your decision",
            f"{plural(new_reviews, 'record')} could not be matched safely and "
            f"{'waits' if new_reviews == 1 else 'wait'} for your decision in Review.",
            "review",
        )
    before_failed, now_failed = _per_stream(previous, "failed"), _per_stream(new, "failed")
    new_failed = sum(max(0, n - before_failed.get(s, 0)) for s, n in now_failed.items())
    if new_failed:
        return Notice(
            f"failed:{sum(now_failed.values())}",
            "Some records could not be sent",
            f"{plural(new_failed, 'record')} failed; Sync history lists them with the reason.",
            "history",
        )
    # Repeated failure: one failed sync can be a blip (Wi-Fi, an outage); two in a row deserve a word.
    if new.failure_kind in TRANSIENT_KINDS and previous is not None and previous.failure_kind in TRANSIENT_KINDS:
        return Notice("failing:sync", "Syncing keeps failing", for_gui(new.message), "overview", critical=True)
    repeated = _failed_streams(new) & _failed_streams(previous)
    if repeated:
        names = ", ".join(stream_label(s) for s in sorted(repeated))
        message = next((r.message for r in new.results if r.stream in repeated and r.message), "")
        return Notice(
            "failing:" + ",".join(sorted(repeated)),
            f"Syncing {names} keeps failing",
            for_gui(message) or "It failed twice in a row.",
            "history",
            critical=True,
        )
    return None


class Notifier(QObject):
    """Applies `decide` to every finished sync and shows the result, once per situation."""

    def __init__(
        self, bridge: RunnerBridge, sink: Callable[[Notice], None] | None, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.sink = sink
        self._previous: JobOutcome | None = None
        self._last_key: str | None = None
        self.shown: list[Notice] = []  # what was announced this session (tests and the log read it)
        # A bound method of a QObject: Qt queues the call onto this object's (the GUI) thread.
        bridge.job_finished.connect(self.on_finished)

    def on_finished(self, outcome: JobOutcome) -> None:
        if outcome.failure_kind == "locked":
            return  # another sync had the profile; nothing happened that changes the picture
        if outcome.job.kind != "sync":
            # A reconciliation or its fixes (the Reconciliation tab says how they went): no sync results, so as
            # "the sync before" it would make every review item and failed record of the next sync news again.
            return
        notice = decide(self._previous, outcome)
        self._previous = outcome
        if notice is None:
            self._last_key = None  # back to normal: the next problem is news again
            return
        if notice.key == self._last_key:
            return
        self._last_key = notice.key
        self.shown.append(notice)
        if self.sink is not None:
            self.sink(notice)
