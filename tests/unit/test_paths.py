import dataclasses
import os
import stat
from pathlib import Path

import platformdirs
import pytest

from clinicsync.paths import APP_AUTHOR, APP_NAME, DEFAULT_PROFILE_ID, AppPaths


def test_default_profile_uses_platformdirs() -> None:
    paths = AppPaths.resolve({})
    assert paths.home is None
    assert paths.data_dir == platformdirs.user_data_path(APP_NAME, APP_AUTHOR)
    assert paths.config_dir == platformdirs.user_config_path(APP_NAME, APP_AUTHOR)
    assert paths.log_dir == platformdirs.user_log_path(APP_NAME, APP_AUTHOR)
    assert paths.cache_dir == platformdirs.user_cache_path(APP_NAME, APP_AUTHOR)
    assert paths.state_dir == platformdirs.user_state_path(APP_NAME, APP_AUTHOR)
    assert paths.profile_id == DEFAULT_PROFILE_ID


def test_empty_home_variable_means_default_profile() -> None:
    assert AppPaths.resolve({"CLINICSYNC_HOME": "  "}).home is None


def test_home_puts_everything_under_it(tmp_path: Path) -> None:
    paths = AppPaths.resolve({"CLINICSYNC_HOME": str(tmp_path)})
    home = tmp_path.resolve()
    assert paths.home == home
    assert paths.data_dir == home / "data"
    assert paths.config_dir == home / "config"
    assert paths.log_dir == home / "logs"
    assert paths.cache_dir == home / "cache"
    assert paths.state_dir == home / "state"
    assert paths.db_path == home / "data" / "clinicsync.sqlite3"
    assert paths.log_file.parent == paths.log_dir
    assert paths.lock_file.parent == paths.data_dir
    for path in (paths.db_path, paths.log_file, paths.lock_file):
        assert path.is_relative_to(home)


def test_relative_home_is_resolved_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    paths = AppPaths.resolve({"CLINICSYNC_HOME": "profile"})
    assert paths.home == (tmp_path / "profile").resolve()
    assert paths.home.is_absolute()


def test_profile_id_is_short_stable_and_distinct(tmp_path: Path) -> None:
    a1 = AppPaths.resolve({"CLINICSYNC_HOME": str(tmp_path / "a")})
    a2 = AppPaths.resolve({"CLINICSYNC_HOME": str(tmp_path / "x" / ".." / "a")})
    b = AppPaths.resolve({"CLINICSYNC_HOME": str(tmp_path / "b")})
    assert a1.profile_id == a2.profile_id
    assert a1.profile_id != b.profile_id
    assert a1.profile_id != DEFAULT_PROFILE_ID
    assert len(a1.profile_id) <= 16
    assert a1.profile_id.isalnum()


def test_instance_socket_name_differs_per_profile(tmp_path: Path) -> None:
    a = AppPaths.resolve({"CLINICSYNC_HOME": str(tmp_path / "a")})
    b = AppPaths.resolve({"CLINICSYNC_HOME": str(tmp_path / "b")})
    assert a.instance_socket_name != b.instance_socket_name
    assert a.instance_socket_name == AppPaths.resolve({"CLINICSYNC_HOME": str(tmp_path / "a")}).instance_socket_name
    # Short and filesystem/pipe-safe: QLocalServer turns it into a socket path or a pipe name.
    assert len(a.instance_socket_name) < 40
    assert all(c.isalnum() or c == "-" for c in a.instance_socket_name)


def test_paths_are_frozen(tmp_path: Path) -> None:
    paths = AppPaths.resolve({"CLINICSYNC_HOME": str(tmp_path)})
    with pytest.raises(dataclasses.FrozenInstanceError):
        paths.data_dir = tmp_path  # type: ignore[misc]


def test_ensure_creates_private_dirs(tmp_path: Path) -> None:
    paths = AppPaths.resolve({"CLINICSYNC_HOME": str(tmp_path / "home")})
    assert paths.ensure() is paths
    for directory in paths.directories():
        assert directory.is_dir()
        if os.name == "posix":
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    if os.name == "posix":
        assert stat.S_IMODE(paths.home.stat().st_mode) == 0o700


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_ensure_tightens_existing_dirs_but_not_an_existing_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    home.chmod(0o755)
    (home / "data").chmod(0o755)
    paths = AppPaths.resolve({"CLINICSYNC_HOME": str(home)}).ensure()
    assert stat.S_IMODE(paths.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(home.stat().st_mode) == 0o755  # the user's own folder: left alone


def test_ensure_is_idempotent(tmp_path: Path) -> None:
    paths = AppPaths.resolve({"CLINICSYNC_HOME": str(tmp_path)})
    paths.ensure()
    paths.ensure()
    assert paths.data_dir.is_dir()
