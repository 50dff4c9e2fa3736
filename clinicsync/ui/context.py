"""What every part of the window is given: the app context, the runner and the bridge. Tabs take a UiContext in
their constructor instead of reaching for globals or `window()`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from clinicsync.app import AppContext
from clinicsync.secrets import CLINIKO_API_KEY, STRIPE_API_KEY
from clinicsync.sync.runner import Job, SyncRunner, read_credentials
from clinicsync.ui.bridge import RunnerBridge

if TYPE_CHECKING:
    from clinicsync.ui.status import StatusTracker

SYNC_SECRETS = (CLINIKO_API_KEY, STRIPE_API_KEY)


@dataclass
class UiContext:
    app: AppContext
    runner: SyncRunner
    bridge: RunnerBridge
    tray_available: bool
    sandbox: object | None = None  # the running sandbox (clinicsync.sandbox.launcher.Sandbox) in demo mode
    # Live sync state shared by the tray, the Overview and the notifications (set by ui.main.build_app).
    status: StatusTracker | None = None

    def sync_now(self, trigger: str = "manual", *, dry_run: bool = False) -> Job | None:
        """Read the keys here, on the GUI thread, then queue the sync."""
        credentials = read_credentials(self.app.secrets, SYNC_SECRETS)
        return self.runner.submit(trigger=trigger, credentials=credentials, dry_run=dry_run)
