"""Where ClinicSync keeps its files.

By default the per-user platform locations (platformdirs). Setting ``CLINICSYNC_HOME`` moves *everything*
under one folder, which is how tests, the sandbox/demo mode and a second clinic profile stay apart from a real
clinic's data. Nothing here is computed at import time: callers resolve an :class:`AppPaths` and pass it on.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "ClinicSync"
APP_AUTHOR = "ClinicSync"
HOME_ENV_VAR = "CLINICSYNC_HOME"
DEFAULT_PROFILE_ID = "default"

# Private to the user: the folders hold the clinic's sync state, history and logs (patient names, emails).
_DIR_MODE = 0o700


class ProfileFolderError(Exception):
    """The profile's folders cannot be used (a file is in the way, a read-only disk, no permission, a name that is
    not UTF-8). The message says which folder, why, and what to do; nothing was created or changed."""


@dataclass(frozen=True)
class AppPaths:
    """The resolved folders of one profile. Build with :meth:`resolve`; create on disk with :meth:`ensure`."""

    home: Path | None
    data_dir: Path
    config_dir: Path
    log_dir: Path
    cache_dir: Path
    state_dir: Path

    @classmethod
    def resolve(cls, env: Mapping[str, str] = os.environ) -> AppPaths:
        """Platform locations, or everything under ``CLINICSYNC_HOME`` when it is set (and not empty)."""
        raw_home = env.get(HOME_ENV_VAR, "").strip()
        if raw_home:
            return _checked_names(cls.under(Path(raw_home)))
        return _checked_names(
            cls(
                home=None,
                data_dir=platformdirs.user_data_path(APP_NAME, APP_AUTHOR),
                config_dir=platformdirs.user_config_path(APP_NAME, APP_AUTHOR),
                log_dir=platformdirs.user_log_path(APP_NAME, APP_AUTHOR),
                cache_dir=platformdirs.user_cache_path(APP_NAME, APP_AUTHOR),
                state_dir=platformdirs.user_state_path(APP_NAME, APP_AUTHOR),
            )
        )

    @classmethod
    def under(cls, home: Path) -> AppPaths:
        """A self-contained profile rooted at ``home`` (expanded and made absolute)."""
        # Resolve once here so a relative CLINICSYNC_HOME means the same profile whatever the cwd is later.
        root = home.expanduser().resolve()
        return cls(
            home=root,
            data_dir=root / "data",
            config_dir=root / "config",
            log_dir=root / "logs",
            cache_dir=root / "cache",
            state_dir=root / "state",
        )

    @property
    def db_path(self) -> Path:
        return self.data_dir / "clinicsync.sqlite3"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "clinicsync.log"

    @property
    def lock_file(self) -> Path:
        # Next to the database it protects, so the lock and the sync state can never end up in different
        # places (e.g. if XDG_STATE_HOME changes between two runs).
        return self.data_dir / "sync.lock"

    @property
    def profile_id(self) -> str:
        """``"default"`` for the platform locations, else a short stable hash of the resolved home."""
        if self.home is None:
            return DEFAULT_PROFILE_ID
        return _short_hash(str(self.home))

    @property
    def instance_socket_name(self) -> str:
        """Name for the single-instance local socket/pipe (QLocalServer): one per user *and* per profile.

        Derived from the data folder rather than the profile id because the default profile's data folder
        lives in the user's home, so two users on one machine never collide (named pipes on Windows and
        sockets in /tmp are shared between users).
        """
        return f"clinicsync-{_short_hash(str(self.data_dir))}"

    def directories(self) -> tuple[Path, ...]:
        """The folders this profile owns (macOS may map data and config to the same one)."""
        return tuple(dict.fromkeys((self.data_dir, self.config_dir, self.log_dir, self.cache_dir, self.state_dir)))

    def ensure(self) -> AppPaths:
        """Create the folders (private to the user on POSIX) and return ``self`` for chaining.

        Raises ProfileFolderError, saying which folder and why, when one cannot be created or written."""
        if self.home is not None:
            _make_private_dir(self.home, chmod_existing=False, home=self.home)
        for directory in self.directories():
            _make_private_dir(directory, chmod_existing=True, home=self.home)
        return self

    def folder_problem(self, path: Path, exc: OSError) -> str:
        """The words for a folder of this profile that could not be created or written (`exc` says why)."""
        return folder_problem(path, exc, home=self.home)


def _short_hash(text: str) -> str:
    # normcase: on Windows "C:\\Clinic" and "c:\\clinic" are one folder and must give one profile/keyring service.
    return hashlib.sha256(os.path.normcase(text).encode("utf-8")).hexdigest()[:12]


def _checked_names(paths: AppPaths) -> AppPaths:
    """Refuse folder names that are not UTF-8 (a legacy shell's Latin-1 bytes): SQLite, the log and the keyring
    name all need them as text, and a half-created profile under a mangled name helps nobody."""
    for path in (paths.home, *paths.directories()):
        if path is None:
            continue
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            shown = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            where = f"{HOME_ENV_VAR} ({shown})" if paths.home is not None else f"The folder {shown}"
            raise ProfileFolderError(
                f"{where} is not UTF-8 text, so ClinicSync cannot keep its files there. "
                + (
                    f"Set {HOME_ENV_VAR} to a folder whose name is plain text (for example, only letters, "
                    "digits and dashes)."
                    if paths.home is not None
                    else "Set CLINICSYNC_HOME to a folder whose name is plain text."
                )
            ) from None
    return paths


def folder_problem(path: Path, exc: OSError, *, home: Path | None = None) -> str:
    """A message a person can act on for a profile folder that could not be created or written."""
    blocker = _file_in_the_way(path)
    if blocker is not None:
        reason = f"{blocker} is a file, not a folder"
    elif exc.errno == errno.EROFS:
        reason = f"{path} is on a read-only disk"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        reason = f"ClinicSync may not write to {path} (permission denied)"
    elif exc.errno == errno.ENOSPC:
        reason = f"the disk holding {path} is full"
    else:
        reason = f"{path}: {exc.strerror or exc}"
    fix = (
        f"Set {HOME_ENV_VAR} to a folder you can write to, or fix that one"
        if home is not None
        else "Check that folder's permissions and the disk, or set CLINICSYNC_HOME to a folder you can write to"
    )
    return f"ClinicSync cannot use its folder: {reason}. {fix}; nothing was changed."


def _file_in_the_way(path: Path) -> Path | None:
    """The path itself or the nearest parent that exists but is not a folder (a file, /dev/null), if any."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def _make_private_dir(path: Path, *, chmod_existing: bool, home: Path | None) -> None:
    try:
        existed = path.is_dir()
        # mode applies to the leaf only; parents (e.g. ~/.local/share) get the usual umask defaults.
        path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask and ignored for folders that already exist, so set it explicitly.
        # An existing CLINICSYNC_HOME is the user's own folder: leave its permissions alone. Only when it differs:
        # a chmod on a read-only disk fails even when there is nothing to change.
        if os.name == "posix" and (chmod_existing or not existed) and path.stat().st_mode & 0o777 != _DIR_MODE:
            path.chmod(_DIR_MODE)
        # Fail here, with the folder's name, rather than later in SQLite or the log with a vaguer message.
        if os.name == "posix" and not os.access(path, os.W_OK | os.X_OK):
            code = errno.EROFS if _read_only_disk(path) else errno.EACCES
            raise OSError(code, os.strerror(code), str(path))
    except OSError as exc:
        raise ProfileFolderError(folder_problem(path, exc, home=home)) from None


def _read_only_disk(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False
