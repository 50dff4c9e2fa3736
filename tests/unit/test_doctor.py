"""The doctor's own judgements: free space, an unwritable folder, and which exit code a list of checks means."""

from __future__ import annotations

from pathlib import Path

import pytest

from clinicsync.doctor import LOW_SPACE_BYTES, TOO_LITTLE_SPACE_BYTES, Check, check_folder, worst_exit_code
from clinicsync.paths import AppPaths


@pytest.fixture
def paths(tmp_path: Path) -> AppPaths:
    return AppPaths.resolve({"CLINICSYNC_HOME": str(tmp_path / "profile")}).ensure()


def with_free(count: int):
    return lambda _folder: (10 * count, 9 * count, count)


def test_plenty_of_space_is_fine_low_space_is_a_warning_and_too_little_a_problem(paths: AppPaths) -> None:
    assert check_folder(paths, disk_usage=with_free(5 * LOW_SPACE_BYTES)).status == "ok"
    low = check_folder(paths, disk_usage=with_free(LOW_SPACE_BYTES - 1))
    assert low.status == "warning" and "running low" in low.detail
    full = check_folder(paths, disk_usage=with_free(TOO_LITTLE_SPACE_BYTES - 1))
    assert (full.status, full.exit_code) == ("problem", 2) and "free some space" in full.detail


def test_a_folder_that_cannot_be_written_is_a_problem(paths: AppPaths) -> None:
    paths.data_dir.rmdir()
    paths.data_dir.write_text("a file where the folder should be")  # unwritable even for root
    check = check_folder(paths)
    assert (check.status, check.exit_code) == ("problem", 2) and "is a file, not a folder" in check.detail


def test_the_first_problem_decides_the_exit_code_and_warnings_do_not_count() -> None:
    assert worst_exit_code([Check("a", "ok", ""), Check("b", "warning", "")]) == 0
    checks = [Check("a", "warning", ""), Check("b", "problem", "", 3), Check("c", "problem", "", 5)]
    assert worst_exit_code(checks) == 3
    assert worst_exit_code([Check("d", "problem", "")]) == 1, "a problem without a specific code is still one"
