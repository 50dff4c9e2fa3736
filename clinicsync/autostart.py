"""Start at login, minimized to the tray: an XDG autostart entry on Linux, the Run key on Windows, a LaunchAgent
on macOS. Qt-free; the Settings tab and `clinicsync autostart on|off|status` both use it.

Each entry starts `clinicsync gui --minimized` (plus `--home DIR` for a profile under CLINICSYNC_HOME), so a
second profile gets its own entry. Every writer takes the place it writes to as an argument, so tests redirect it.
"""

from __future__ import annotations

import os
import plistlib
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from clinicsync.paths import AppPaths

APP_NAME = "ClinicSync"
RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
AGENT_LABEL = "com.clinicsync.ClinicSync"


class AutostartError(Exception):
    """The entry could not be written or removed; the message says where and why."""


def launch_command(paths: AppPaths, *, executable: str | None = None, frozen: bool | None = None) -> list[str]:
    """The command a login starts: this installation's ClinicSync, minimized, on this profile."""
    executable = executable or sys.executable
    frozen = getattr(sys, "frozen", False) if frozen is None else frozen
    command = [executable] if frozen else [executable, "-m", "clinicsync"]
    command += ["gui", "--minimized"]
    if paths.home is not None:
        command += ["--home", str(paths.home)]
    return command


def entry_name(paths: AppPaths) -> str:
    """One entry per profile: "ClinicSync" for the default one, "ClinicSync-<profile id>" for others."""
    return APP_NAME if paths.home is None else f"{APP_NAME}-{paths.profile_id}"


class Autostart(Protocol):
    def enable(self, name: str, command: Sequence[str]) -> str: ...  # returns where it was written

    def disable(self, name: str) -> bool: ...  # True if an entry was removed

    def current(self, name: str) -> list[str] | str | None: ...  # the stored command, or None


# --- Linux and other XDG desktops --------------------------------------------------------------------------
def _desktop_quote(arg: str) -> str:
    """One Exec= argument, quoted as the Desktop Entry spec says (and % doubled: field codes)."""
    arg = arg.replace("%", "%%")
    if arg and not any(c in arg for c in " \t\n\"'\\><~|&;$*?#()`="):
        return arg
    escaped = "".join("\\" + c if c in '"`$\\' else c for c in arg)
    return f'"{escaped}"'


class XdgAutostart:
    def __init__(self, config_home: Path | None = None, env: Mapping[str, str] = os.environ) -> None:
        base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        self.folder = (config_home or Path(base)) / "autostart"

    def path(self, name: str) -> Path:
        return self.folder / f"{name.lower()}.desktop"

    def enable(self, name: str, command: Sequence[str]) -> str:
        text = "\n".join(
            [
                "[Desktop Entry]",
                "Type=Application",
                f"Name={name}",
                "Comment=Keeps Cliniko and Stripe in agreement (starts in the tray)",
                "Exec=" + " ".join(_desktop_quote(arg) for arg in command),
                "Icon=clinicsync",
                "Terminal=false",
                "X-GNOME-Autostart-enabled=true",
                "",
            ]
        )
        path = self.path(name)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise AutostartError(f"Could not write {path}: {exc.strerror or exc}") from None
        return str(path)

    def disable(self, name: str) -> bool:
        path = self.path(name)
        if not path.exists():
            return False
        try:
            path.unlink()
        except OSError as exc:
            raise AutostartError(f"Could not remove {path}: {exc.strerror or exc}") from None
        return True

    def current(self, name: str) -> str | None:
        path = self.path(name)
        if not path.exists():
            return None
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("Exec="):
                return line.removeprefix("Exec=")
        return None


# --- Windows ----------------------------------------------------------------------------------------------
class Registry(Protocol):
    """The three Run-key operations, so tests can stand in for the real registry."""

    def get(self, name: str) -> str | None: ...

    def set(self, name: str, value: str) -> None: ...

    def delete(self, name: str) -> bool: ...


class WinRegistry:
    """HKEY_CURRENT_USER\\...\\Run through winreg (imported here: it exists only on Windows)."""

    def __init__(self, key: str = RUN_KEY) -> None:
        self.key = key

    def get(self, name: str) -> str | None:
        import winreg  # type: ignore[import-not-found,unused-ignore]

        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, self.key) as handle:
                value, _kind = winreg.QueryValueEx(handle, name)
        except FileNotFoundError:
            return None
        return str(value)

    def set(self, name: str, value: str) -> None:
        import winreg  # type: ignore[import-not-found,unused-ignore]

        with winreg.CreateKey(winreg.HKEY_CURRENT_USER, self.key) as handle:
            winreg.SetValueEx(handle, name, 0, winreg.REG_SZ, value)

    def delete(self, name: str) -> bool:
        import winreg  # type: ignore[import-not-found,unused-ignore]

        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, self.key, 0, winreg.KEY_SET_VALUE) as handle:
                winreg.DeleteValue(handle, name)
        except FileNotFoundError:
            return False
        return True


class WindowsAutostart:
    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry or WinRegistry()

    def enable(self, name: str, command: Sequence[str]) -> str:
        try:
            self.registry.set(name, subprocess.list2cmdline(list(command)))
        except OSError as exc:
            raise AutostartError(f"Could not write the login entry {name} in the registry: {exc}") from None
        return f"HKEY_CURRENT_USER\\{RUN_KEY}\\{name}"

    def disable(self, name: str) -> bool:
        try:
            return self.registry.delete(name)
        except OSError as exc:
            raise AutostartError(f"Could not remove the login entry {name} from the registry: {exc}") from None

    def current(self, name: str) -> str | None:
        return self.registry.get(name)


# --- macOS ------------------------------------------------------------------------------------------------
class LaunchAgentAutostart:
    def __init__(self, home: Path | None = None) -> None:
        self.folder = (home or Path.home()) / "Library" / "LaunchAgents"

    @staticmethod
    def label(name: str) -> str:
        return AGENT_LABEL if name == APP_NAME else f"{AGENT_LABEL}.{name.removeprefix(APP_NAME + '-')}"

    def path(self, name: str) -> Path:
        return self.folder / f"{self.label(name)}.plist"

    def enable(self, name: str, command: Sequence[str]) -> str:
        agent = {
            "Label": self.label(name),
            "ProgramArguments": list(command),
            "RunAtLoad": True,
            "ProcessType": "Interactive",
            "LimitLoadToSessionType": "Aqua",  # the logged-in desktop session only: it opens a tray icon
        }
        path = self.path(name)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(plistlib.dumps(agent))
        except OSError as exc:
            raise AutostartError(f"Could not write {path}: {exc.strerror or exc}") from None
        return str(path)

    def disable(self, name: str) -> bool:
        path = self.path(name)
        if not path.exists():
            return False
        try:
            path.unlink()
        except OSError as exc:
            raise AutostartError(f"Could not remove {path}: {exc.strerror or exc}") from None
        return True

    def current(self, name: str) -> list[str] | None:
        path = self.path(name)
        if not path.exists():
            return None
        return list(plistlib.loads(path.read_bytes()).get("ProgramArguments", []))


def for_platform(platform: str | None = None) -> Autostart:
    platform = platform or sys.platform
    if platform.startswith("win"):
        return WindowsAutostart()
    if platform == "darwin":
        return LaunchAgentAutostart()
    return XdgAutostart()


def enable(paths: AppPaths, writer: Autostart | None = None) -> str:
    """Start this profile's ClinicSync, minimized, at login; returns where the entry was written."""
    return (writer or for_platform()).enable(entry_name(paths), launch_command(paths))


def disable(paths: AppPaths, writer: Autostart | None = None) -> bool:
    return (writer or for_platform()).disable(entry_name(paths))


def is_enabled(paths: AppPaths, writer: Autostart | None = None) -> bool:
    return (writer or for_platform()).current(entry_name(paths)) is not None
