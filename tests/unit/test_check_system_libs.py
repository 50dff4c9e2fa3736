"""packaging/check-system-libs.sh (run by `make run`), with dpkg, apt-get, apt-cache and id replaced by fakes:
it names exactly the missing packages, installs them only as root, and stays out of the way elsewhere."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "packaging" / "check-system-libs.sh"
SH = shutil.which("sh")
pytestmark = pytest.mark.skipif(SH is None, reason="needs a POSIX sh")

FAKES = {
    # Knows the packages in $FAKE_INSTALLED (installed) and $FAKE_REMOVED (removed, config files left).
    "dpkg": """echo "dpkg $*" >>"$FAKE_LOG"
case " $FAKE_INSTALLED " in *" $2 "*) printf 'Package: %s\\nStatus: install ok installed\\n' "$2"; exit 0 ;; esac
case " $FAKE_REMOVED " in *" $2 "*) printf 'Package: %s\\nStatus: deinstall ok config-files\\n' "$2"; exit 0 ;; esac
echo "dpkg-query: package '$2' is not installed" >&2; exit 1""",
    "apt-cache": """case " $FAKE_UNKNOWN " in *" $2 "*) exit 100 ;; esac; echo "Package: $2\"""",
    "apt-get": """echo "apt-get $*" >>"$FAKE_LOG\"""",
    "id": """echo "$FAKE_UID\"""",
}


def needed() -> list[str]:
    block = re.search(r'^NEEDED="([^"]*)"', SCRIPT.read_text(encoding="utf-8"), re.MULTILINE)
    assert block, "NEEDED not found in the script"
    return block.group(1).split()


def run(
    tmp_path: Path,
    *,
    missing: tuple[str, ...] = (),
    removed: tuple[str, ...] = (),
    uid: int = 1000,
    unknown: str = "",
    fakes: tuple[str, ...] = tuple(FAKES),
    **env: str,
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in fakes:
        fake = bin_dir / name
        fake.write_text(f"#!/bin/sh\n{FAKES[name]}\n", encoding="utf-8")
        fake.chmod(0o755)
    installed = [p for want in needed() for p in want.split("|") if p not in missing and p not in removed]
    log = tmp_path / "calls.log"
    log.touch()
    result = subprocess.run(
        [SH, str(SCRIPT)],  # type: ignore[list-item]
        capture_output=True,
        text=True,
        check=False,
        env={
            "PATH": f"{bin_dir}{os.pathsep}{env.pop('PATH', os.environ['PATH'])}",
            "FAKE_INSTALLED": " ".join(installed),
            "FAKE_REMOVED": " ".join(removed),
            "FAKE_UNKNOWN": unknown,
            "FAKE_UID": str(uid),
            "FAKE_LOG": str(log),
            **env,
        },
    )
    return result, log.read_text(encoding="utf-8").splitlines()


def test_nothing_missing_starts_quietly(tmp_path: Path) -> None:
    result, calls = run(tmp_path)
    assert result.returncode == 0 and result.stdout == result.stderr == ""
    assert calls and not [c for c in calls if c.startswith("apt-get")]


def test_a_user_is_given_the_exact_install_command(tmp_path: Path) -> None:
    result, calls = run(tmp_path, missing=("libxcb-cursor0",), removed=("libxcb-icccm4",))
    assert result.returncode == 1
    assert "\n    sudo apt-get install libxcb-cursor0 libxcb-icccm4\n" in result.stderr
    assert not [c for c in calls if c.startswith("apt-get")]


def test_root_installs_what_is_missing(tmp_path: Path) -> None:
    result, calls = run(tmp_path, missing=("libxkbcommon-x11-0", "libxcb-keysyms1"), uid=0)
    assert result.returncode == 0, result.stderr
    assert [c for c in calls if c.startswith("apt-get")] == [
        "apt-get update -qq",
        "apt-get install -y -qq libxcb-keysyms1 libxkbcommon-x11-0",
    ]


@pytest.mark.parametrize(
    ("missing", "unknown", "named"),
    [
        (("libglib2.0-0t64",), "", None),  # the older name is installed: nothing to do
        (("libglib2.0-0",), "", None),  # the t64 name is installed (Ubuntu 24.04, Debian 13)
        (("libglib2.0-0t64", "libglib2.0-0"), "libglib2.0-0t64", "libglib2.0-0"),  # Debian 12's lists
        (("libglib2.0-0t64", "libglib2.0-0"), "", "libglib2.0-0t64"),
    ],
)
def test_either_name_of_a_renamed_package_will_do(
    tmp_path: Path, missing: tuple[str, ...], unknown: str, named: str | None
) -> None:
    result, _ = run(tmp_path, missing=missing, unknown=unknown)
    if named is None:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 1 and f"sudo apt-get install {named}\n" in result.stderr


@pytest.mark.parametrize("platform", ["offscreen", "wayland", "minimal"])
def test_other_qt_platforms_are_not_checked(tmp_path: Path, platform: str) -> None:
    result, calls = run(tmp_path, missing=("libxcb-cursor0",), QT_QPA_PLATFORM=platform)
    assert result.returncode == 0 and calls == []


def test_a_platform_list_with_xcb_is_checked(tmp_path: Path) -> None:
    result, _ = run(tmp_path, missing=("libxcb-cursor0",), QT_QPA_PLATFORM="wayland;xcb")
    assert result.returncode == 1 and "libxcb-cursor0" in result.stderr


def test_systems_without_dpkg_are_not_checked(tmp_path: Path) -> None:
    # Only the tools the script needs besides dpkg/apt, so the machine's own dpkg is not found either.
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("grep", "tr", "cat"):
        found = shutil.which(tool)
        assert found
        (tools / tool).symlink_to(found)
    result, calls = run(tmp_path, missing=("libxcb-cursor0",), fakes=("id",), PATH=str(tools))
    assert result.returncode == 0 and result.stderr == "" and calls == []
