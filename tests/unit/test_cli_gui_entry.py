"""`clinicsync` with no subcommand opens the window; when the window's code cannot be imported (a broken
install or bundle) it says so and fails, instead of exiting 0 as if it had run."""

from __future__ import annotations

import sys

import pytest

from clinicsync import cli


def test_a_window_that_cannot_be_imported_is_an_error_not_a_quiet_exit(monkeypatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setitem(sys.modules, "clinicsync.ui.main", None)  # makes `import clinicsync.ui.main` fail
    assert cli.main([]) == cli.EXIT_CONFIG
    printed = capsys.readouterr()
    assert "The desktop window cannot start" in printed.err and "clinicsync doctor" in printed.err
    assert printed.out == ""
