"""What every part of the window is given: the app context, the runner and the bridge. Tabs take a UiContext in
their constructor instead of reaching for globals or `window()`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from clinicsync.app import AppContext
from clinicsync.secrets import SYNC_SECRETS
from clinicsync.sync.runner import Job, SyncRunner, read_credentials
from clinicsync.ui.bridge import RunnerBridge

if TYPE_CHECKING:
    from clinicsync.ui.schedule import WindowSchedule
    from clinicsync.ui.status import StatusTracker


@dataclass
class UiContext:
    app: AppContext
    runner: SyncRunner
    bridge: RunnerBridge
    tray_available: bool
    sandbox: object | None = None  # the running sandbox (clinicsync.sandbox.launcher.Sandbox) in demo mode
    # Live sync state shared by the tray, the Overview and the notifications (set by ui.main.build_app).
    status: StatusTracker | None = None
    # Who runs the schedule: this window, or the background service it is attached to (set by build_app).
    schedule: WindowSchedule | None = None

    @property
    def attached(self) -> bool:
        """True while `clinicsync serve` runs this profile's schedule: syncing is asked of it, not done here."""
        return self.schedule is not None and self.schedule.attached

    def cancel(self) -> None:
        """Stop the running sync (the service's, when attached) at its next safe point."""
        if self.schedule is not None and self.schedule.attached:
            self.schedule.cancel()
        else:
            self.runner.cancel()

    def sync_now(self, trigger: str = "manual", *, dry_run: bool = False) -> Job | None:
        """Read the keys here, on the GUI thread, then queue the sync. Attached to the background service, the
        service is asked to sync instead (its keys, its history) and None comes back: no job runs here."""
        if self.attached and not dry_run:
            assert self.schedule is not None
            self.schedule.sync_now()
            return None
        credentials = read_credentials(self.app.secrets, SYNC_SECRETS)
        return self.runner.submit(trigger=trigger, credentials=credentials, dry_run=dry_run)
