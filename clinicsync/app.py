"""Composition root: paths → logging → database → settings and secrets. The CLI and the desktop app start here."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from peewee import SqliteDatabase

from clinicsync.logging_setup import register_secret, setup_logging
from clinicsync.paths import AppPaths
from clinicsync.secrets import LayeredSecrets, open_secrets
from clinicsync.store.db import open_database
from clinicsync.store.settings import Settings


@dataclass(frozen=True)
class AppContext:
    paths: AppPaths
    db: SqliteDatabase
    settings: Settings
    secrets: LayeredSecrets
    env: Mapping[str, str]


def bootstrap(env: Mapping[str, str] | None = None, *, console_log: bool = False) -> AppContext:
    env = dict(os.environ if env is None else env)
    paths = AppPaths.resolve(env).ensure()
    setup_logging(paths, level=logging.INFO, console=console_log)
    db = open_database(paths.db_path)
    secrets = open_secrets(paths, env, on_secret=register_secret)
    return AppContext(paths=paths, db=db, settings=Settings(env), secrets=secrets, env=env)
