"""The layers point one way (design.md, streams.md): only ui/ imports Qt; mapping/ is pure (no database, no
network, no engine, no CLI); store/ imports nothing above it; the clients and the gateway share what they share
(retry policy, cancel token) from below the engine, not from it. Read from the source, imports inside functions
included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "clinicsync"

# module prefix → modules it must never import (by prefix)
FORBIDDEN = {
    "clinicsync.mapping": (
        "clinicsync.store",
        "clinicsync.sync",
        "clinicsync.sources",
        "clinicsync.stripe_gateway",
        "clinicsync.cli",
        "clinicsync.app",
        "clinicsync.ui",
        "clinicsync.streams",
        "httpx",
        "stripe",
        "peewee",
    ),
    # Pure like mapping/: the driver that reads and stores is sync/reconcile_run.py.
    "clinicsync.reconcile": (
        "clinicsync.store",
        "clinicsync.sync",
        "clinicsync.sources",
        "clinicsync.stripe_gateway",
        "clinicsync.cli",
        "clinicsync.app",
        "clinicsync.ui",
        "httpx",
        "stripe",
        "peewee",
        "sqlite3",
    ),
    "clinicsync.streams": ("clinicsync.store", "clinicsync.sync", "clinicsync.ui", "clinicsync.cli", "peewee"),
    "clinicsync.store": ("clinicsync.sync", "clinicsync.ui", "clinicsync.cli", "clinicsync.app"),
    "clinicsync.sources": ("clinicsync.sync", "clinicsync.store", "clinicsync.ui"),
    "clinicsync.stripe_gateway": ("clinicsync.sync", "clinicsync.store", "clinicsync.ui"),
    "clinicsync.retry": ("clinicsync.sync", "clinicsync.store"),
    "clinicsync.money": ("clinicsync.sync", "clinicsync.store"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_one_way(path: Path) -> None:
    module = _module_name(path)
    imported = _imports(path)
    if not _under(module, "clinicsync.ui"):
        assert not any(_under(name, "PySide6") for name in imported), f"{module} imports Qt: only ui/ may"
    for owner, forbidden in FORBIDDEN.items():
        if not _under(module, owner):
            continue
        wrong = sorted(name for name in imported for bad in forbidden if _under(name, bad))
        assert not wrong, f"{module} imports {wrong}"
