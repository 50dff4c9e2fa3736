"""The app's own SVG icons (resources/), loaded as QIcons.

The folder is found next to the repository checkout (editable install, `make run`), inside the installed package
(the wheel force-includes it as `clinicsync/_resources`) or in a PyInstaller bundle.
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

from PySide6.QtGui import QIcon

APP = "app"
TRAY_IDLE = "tray-idle"
TRAY_SYNCING = "tray-syncing"
TRAY_ATTENTION = "tray-attention"
TRAY_PAUSED = "tray-paused"
ICON_NAMES = (APP, TRAY_IDLE, TRAY_SYNCING, TRAY_ATTENTION, TRAY_PAUSED)


def resources_dir() -> Path:
    package = Path(__file__).resolve().parents[1]
    candidates = [package.parent / "resources", package / "_resources"]
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        candidates.insert(0, Path(bundle) / "resources")
    for candidate in candidates:
        if (candidate / f"{APP}.svg").is_file():
            return candidate
    raise FileNotFoundError("ClinicSync's resources folder is missing; looked in " + ", ".join(map(str, candidates)))


def icon_path(name: str) -> Path:
    if name not in ICON_NAMES:
        raise KeyError(f"unknown icon {name!r}; known: {', '.join(ICON_NAMES)}")
    return resources_dir() / f"{name}.svg"


@cache
def icon(name: str) -> QIcon:
    """A QIcon drawn from the SVG (cached: the tray swaps icons on every state change)."""
    loaded = QIcon(str(icon_path(name)))
    if loaded.isNull():  # the SVG icon engine plugin is missing: fail loudly rather than show a blank tray
        raise RuntimeError(f"could not load icon {name!r}; is Qt's SVG plugin installed?")
    return loaded
