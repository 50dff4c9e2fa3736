"""Start at login: each platform's entry, written where that platform looks (redirected into tmp_path here), with
the command that starts ClinicSync minimized on this profile; removing it removes exactly that entry."""

from __future__ import annotations

import plistlib
from pathlib import Path

import pytest

from clinicsync import autostart, cli
from clinicsync.paths import AppPaths

EXE = "/opt/Clinic Sync/bin/python3"


@pytest.fixture
def default_profile(tmp_path: Path) -> AppPaths:
    # The platform locations, but built by hand so nothing under the real home is touched.
    return AppPaths(None, tmp_path / "d", tmp_path / "c", tmp_path / "l", tmp_path / "k", tmp_path / "s")


def test_the_command_starts_the_window_minimized_on_this_profile(default_profile: AppPaths, tmp_path: Path) -> None:
    assert autostart.launch_command(default_profile, executable=EXE, frozen=False) == [
        EXE,
        "-m",
        "clinicsync",
        "gui",
        "--minimized",
    ]
    other = AppPaths.under(tmp_path / "second clinic")
    assert autostart.launch_command(other, executable="C:\\ClinicSync\\clinicsync.exe", frozen=True) == [
        "C:\\ClinicSync\\clinicsync.exe",
        "gui",
        "--minimized",
        "--home",
        str(other.home),
    ]
    assert autostart.entry_name(default_profile) == "ClinicSync"
    assert autostart.entry_name(other) == f"ClinicSync-{other.profile_id}"


def test_linux_writes_and_removes_an_xdg_autostart_entry(default_profile: AppPaths, tmp_path: Path) -> None:
    writer = autostart.XdgAutostart(config_home=tmp_path / "config")
    assert not autostart.is_enabled(default_profile, writer)
    where = autostart.enable(default_profile, writer)
    entry = tmp_path / "config" / "autostart" / "clinicsync.desktop"
    assert where == str(entry)
    text = entry.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == "[Desktop Entry]"
    assert {"Type=Application", "Name=ClinicSync", "Terminal=false", "X-GNOME-Autostart-enabled=true"} <= set(lines)
    exec_line = next(line for line in lines if line.startswith("Exec="))
    assert exec_line.endswith(" -m clinicsync gui --minimized")
    assert autostart.is_enabled(default_profile, writer)

    assert autostart.disable(default_profile, writer) is True
    assert not entry.exists() and not autostart.is_enabled(default_profile, writer)
    assert autostart.disable(default_profile, writer) is False


def test_desktop_exec_arguments_are_quoted_as_the_spec_says() -> None:
    writer_args = ["/opt/Clinic Sync/clinicsync", "gui", "--home", '/srv/50% "clinic"$']
    quoted = " ".join(autostart._desktop_quote(arg) for arg in writer_args)
    assert quoted == '"/opt/Clinic Sync/clinicsync" gui --home "/srv/50%% \\"clinic\\"\\$"'


def test_the_xdg_folder_follows_xdg_config_home(tmp_path: Path) -> None:
    writer = autostart.XdgAutostart(env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert writer.path("ClinicSync") == tmp_path / "xdg" / "autostart" / "clinicsync.desktop"


class FakeRegistry:
    """Stands in for HKCU\\...\\Run."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {"OneDrive": '"C:\\Program Files\\OneDrive.exe" /background'}

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def set(self, name: str, value: str) -> None:
        self.values[name] = value

    def delete(self, name: str) -> bool:
        return self.values.pop(name, None) is not None


def test_windows_writes_and_removes_its_run_key_value_only(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(autostart.sys, "executable", "C:\\Program Files\\ClinicSync\\clinicsync.exe")
    monkeypatch.setattr(autostart.sys, "frozen", True, raising=False)
    registry = FakeRegistry()
    writer = autostart.WindowsAutostart(registry)
    profile = AppPaths.under(tmp_path / "clinic")
    name = f"ClinicSync-{profile.profile_id}"

    where = autostart.enable(profile, writer)
    assert where == f"HKEY_CURRENT_USER\\{autostart.RUN_KEY}\\{name}"
    command = registry.values[name]
    assert command.startswith('"C:\\Program Files\\ClinicSync\\clinicsync.exe" gui --minimized --home ')
    assert command.removesuffix('"').endswith(str(profile.home))
    assert autostart.is_enabled(profile, writer)

    assert autostart.disable(profile, writer) is True
    assert registry.values == {"OneDrive": '"C:\\Program Files\\OneDrive.exe" /background'}, "others untouched"


def test_macos_writes_and_removes_a_launch_agent(default_profile: AppPaths, tmp_path: Path) -> None:
    writer = autostart.LaunchAgentAutostart(home=tmp_path)
    where = Path(autostart.enable(default_profile, writer))
    assert where == tmp_path / "Library" / "LaunchAgents" / "com.clinicsync.ClinicSync.plist"
    agent = plistlib.loads(where.read_bytes())
    assert agent["Label"] == "com.clinicsync.ClinicSync"
    assert agent["ProgramArguments"][-2:] == ["gui", "--minimized"]
    assert agent["RunAtLoad"] is True and agent["LimitLoadToSessionType"] == "Aqua"
    assert autostart.is_enabled(default_profile, writer)
    assert autostart.disable(default_profile, writer) and not where.exists()


def test_gui_accepts_minimized_and_home(monkeypatch, tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    def fake_run_gui(*, minimized: bool = False) -> int:
        seen["minimized"] = minimized
        seen["home"] = os.environ.get("CLINICSYNC_HOME")
        return 0

    import os

    import clinicsync.ui.main as ui_main

    monkeypatch.setattr(ui_main, "run_gui", fake_run_gui)
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k != "CLINICSYNC_HOME"})
    assert cli.main(["gui", "--minimized", "--home", str(tmp_path / "p")]) == 0
    assert seen == {"minimized": True, "home": str(tmp_path / "p")}
