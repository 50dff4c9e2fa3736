"""The service definitions in packaging/ say what packaging/README.md says: `serve` at logon, as the user, stopped
with SIGTERM and time for the write in flight, not restarted for what a restart cannot fix."""

from __future__ import annotations

import configparser
import xml.etree.ElementTree as ET
from pathlib import Path

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
TASK = "{http://schemas.microsoft.com/windows/2004/02/mit/task}"


def test_the_systemd_user_unit_runs_serve_at_login() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(PACKAGING / "systemd" / "clinicsync.service", encoding="utf-8")
    service = unit["Service"]
    assert service["ExecStart"].split()[-1] == "serve"
    assert service["KillSignal"] == "SIGTERM" and int(service["TimeoutStopSec"]) >= 60
    assert set(service["RestartPreventExitStatus"].split()) == {"2", "4"}
    assert unit["Install"]["WantedBy"] == "default.target", "a user unit: started at login, not at boot"
    assert "EnvironmentFile" not in service, "keys come from the keyring unless the person opts in"


def test_the_windows_task_runs_serve_at_logon_as_the_user_without_a_time_limit() -> None:
    root = ET.parse(PACKAGING / "windows" / "clinicsync-serve.xml").getroot()
    assert root.find(f"{TASK}Triggers/{TASK}LogonTrigger") is not None
    assert root.findtext(f"{TASK}Principals/{TASK}Principal/{TASK}LogonType") == "InteractiveToken"
    assert root.findtext(f"{TASK}Settings/{TASK}ExecutionTimeLimit") == "PT0S"
    assert root.findtext(f"{TASK}Settings/{TASK}MultipleInstancesPolicy") == "IgnoreNew"
    assert root.findtext(f"{TASK}Actions/{TASK}Exec/{TASK}Arguments") == "serve"
