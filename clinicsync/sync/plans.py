"""Which approved plan a first live sync carries out, and when one is refused and made again.

A plan keeps its decisions (store/plan_file.py) when it is the one a person must approve before a stream's first
sync to a live Stripe account. The approved sync carries that plan out; it is refused — and a new plan made for
approval — when it is older than PLAN_MAX_AGE, or was made for another Stripe account or another version of the
field mapping: what the person approved would no longer be what is sent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from clinicsync.store import plan_file
from clinicsync.store.db import database_proxy
from clinicsync.store.models import AccountPair, SyncPlan, utcnow
from clinicsync.streams.base import Stream

log = logging.getLogger(__name__)

PLAN_MAX_AGE = timedelta(hours=24)
KEPT = "kept"  # the summary's key for what was kept: {"file": name, "entries": n, "carried_out_at": iso or None}


@dataclass
class ApprovedPlan:
    """An approved plan to carry out, and its file."""

    row: SyncPlan
    file: plan_file.PlanFile
    meta: dict[str, Any]

    @property
    def cursor(self) -> str | None:
        """Where the plan's source read began (less the usual overlap): the approved sync reads from here."""
        value = self.meta.get("cursor")
        return str(value) if value else None

    def close(self) -> None:
        self.file.close()


def carried_out_by_plan(stream: Stream) -> bool:
    """Whether a stream's approved sync can carry out its plan record by record. A stream with its own matcher, one
    that never creates, one that lists every record every run anyway, or one that says so (`carries_out_plan`) is
    judged afresh, as before."""
    return (
        stream.carries_out_plan and stream.matcher is None and stream.unmatched is None and not stream.complete_listing
    )


def folder() -> Path:
    return Path(database_proxy.database).parent


def file_path(name: str) -> Path:
    return folder() / Path(name).name


def to_carry_out(pair: AccountPair, stream: str) -> SyncPlan | None:
    """The newest approved plan of this stream and pair that kept its decisions and is not carried out yet."""
    rows = (
        SyncPlan.select()
        .where((SyncPlan.pair == pair) & (SyncPlan.stream == stream) & SyncPlan.approved_at.is_null(False))
        .order_by(SyncPlan.id.desc())
    )
    for row in rows:
        kept = (row.summary or {}).get(KEPT)
        if not kept:
            return None  # approved before plans were kept (and carried out by the sync that followed)
        return row if not kept.get("carried_out_at") else None
    return None


def refusal(plan: SyncPlan, pair: AccountPair, mapping_version: int, now: datetime | None = None) -> str | None:
    """Why this approved plan must not be carried out, in a person's words; None when it may."""
    now = now or utcnow()
    summary = plan.summary or {}
    age = _aware(now) - _aware(plan.created_at)
    if age > PLAN_MAX_AGE:
        hours = int(PLAN_MAX_AGE.total_seconds() // 3600)
        return f"the plan you approved was made more than {hours} hours ago, and the clinic's records may have changed"
    if summary.get("stripe_account", pair.stripe_account) != pair.stripe_account:
        return "the plan you approved was made for another Stripe account"
    if summary.get("mapping_version") != mapping_version:
        return "the field mapping was changed after the plan you approved was made"
    kept = summary.get(KEPT) or {}
    if not file_path(str(kept.get("file", ""))).is_file():
        return "the plan you approved could not be found on this computer any more"
    return None


def refuse(plan: SyncPlan, why: str) -> None:
    """Withdraw the approval of a plan that may not be carried out (a new one is made for approval) and drop its
    file."""
    summary = dict(plan.summary or {})
    summary["refused"] = why
    _drop_file(summary)
    SyncPlan.update(approved_at=None, summary=summary).where(SyncPlan.id == plan.id).execute()


def open_plan(plan: SyncPlan) -> ApprovedPlan:
    kept = (plan.summary or {})[KEPT]
    file = plan_file.PlanFile(file_path(kept["file"]))
    return ApprovedPlan(plan, file, file.meta())


def mark_carried_out(plan: SyncPlan) -> None:
    """Record that the plan was carried out (every decision queued or recorded) and drop its file."""
    summary = dict(SyncPlan.get_by_id(plan.id).summary or {})
    summary[KEPT] = {**summary.get(KEPT, {}), "carried_out_at": utcnow().isoformat()}
    SyncPlan.update(summary=summary).where(SyncPlan.id == plan.id).execute()
    _drop_file(summary)


def drop_superseded(pair: AccountPair, stream: str, keep: str | None = None) -> None:
    """Remove the files of this stream's earlier plans nobody approved (a newer plan replaces them), and any plan
    file no plan refers to (left by a plan run that stopped)."""
    referred: set[str] = set()
    for row in SyncPlan.select():
        kept = (row.summary or {}).get(KEPT) or {}
        name = kept.get("file")
        if not name or kept.get("carried_out_at"):
            continue
        superseded = row.pair_id == pair.id and row.stream == stream and row.approved_at is None and name != keep
        if superseded:
            _drop_file(row.summary)
        else:
            referred.add(Path(name).name)
    if keep:
        referred.add(Path(keep).name)
    for path in plan_file.plan_files(folder()):
        if path.name not in referred:
            plan_file.remove(path)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _drop_file(summary: dict[str, Any]) -> None:
    name = (summary.get(KEPT) or {}).get("file")
    if name:
        try:
            plan_file.remove(file_path(name))
        except OSError as exc:  # the plan is done with either way; a stray file is removed with the next plan
            log.warning("could not remove a plan file: %s", exc)
