"""The history item models and queries: rows, columns, data, the pinned order, search, lazy paging, retry."""

from __future__ import annotations

import gc
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QTableView

from clinicsync.app import bootstrap
from clinicsync.store import queries
from clinicsync.store.models import AccountPair, RecordLink, RetryRecord, SyncEvent, SyncRun
from clinicsync.store.queries import EventQuery, EventRow
from clinicsync.sync.matching import match_hash as email_hash
from clinicsync.ui.models import (
    ACTION_ROLE,
    EventsModel,
    RunsModel,
    clean_text,
    format_duration,
)

STREAM = "cliniko.patients"


@pytest.fixture
def db(tmp_path: Path):
    """A fresh, empty profile database bound to the models."""
    ctx = bootstrap({"CLINICSYNC_HOME": str(tmp_path / "home")})
    yield ctx.db
    ctx.db.close()


@pytest.fixture
def pair(db) -> AccountPair:
    return AccountPair.create(
        uuid="pair-uuid", source_system="cliniko", source_account="1", stripe_account="acct_1", stripe_livemode=False
    )


def make_run(pair: AccountPair | None = None, **fields: object) -> SyncRun:
    values: dict[str, object] = {"stream": STREAM, "trigger": "manual", "outcome": "ok"}
    values.update(fields)
    return SyncRun.create(pair=pair, **values)


def add_events(run: SyncRun, actions: list[str], name: str = "Patient {i}") -> list[int]:
    rows = [
        {
            "run": run.id,
            "stream": STREAM,
            "source_id": f"{run.id}{i:06d}",
            "display_name": name.format(i=i),
            "stripe_id": None if action in ("failed", "review") else f"cus_{run.id}x{i:06d}",
            "action": action,
            "message": "bad email" if action == "failed" else "",
        }
        for i, action in enumerate(actions)
    ]
    with SyncEvent._meta.database.atomic():
        for start in range(0, len(rows), 500):
            SyncEvent.insert_many(rows[start : start + 500]).execute()
    return [e.id for e in SyncEvent.select(SyncEvent.id).where(SyncEvent.run == run.id).order_by(SyncEvent.id)]


def shown_column(model: EventsModel, column: int, role: int = Qt.ItemDataRole.DisplayRole) -> list[object]:
    return [model.index(row, column).data(role) for row in range(model.rowCount())]


# --- runs -----------------------------------------------------------------------------------------------


def test_runs_model_lists_runs_newest_first_with_their_counts_and_outcome(qtbot, db, pair):
    started = datetime(2026, 3, 1, 9, 0, 0)
    make_run(pair, started_at=started, finished_at=started + timedelta(seconds=12.5), created=3)
    make_run(
        pair,
        trigger="retry",
        started_at=started + timedelta(hours=1),
        finished_at=started + timedelta(hours=1, minutes=2, seconds=5),
        outcome="attention",
        updated=1200,
        failed=2,
        review=1,
    )
    model = RunsModel()
    model.load()

    assert model.rowCount() == 2
    assert model.columnCount() == len(RunsModel.columns) == 13
    headers = [model.headerData(c, Qt.Orientation.Horizontal) for c in range(model.columnCount())]
    assert headers[:4] == ["Started", "Stream", "Trigger", "Duration"]
    assert headers[-1] == "Outcome" and "Failed" in headers and "Review" in headers and "Unchanged" in headers
    newest = [model.index(0, c).data() for c in range(model.columnCount())]
    assert newest[1:4] == ["Cliniko patients", "Retry failed", "2 min 05 s"]
    assert newest[headers.index("Updated")] == "1,200"
    assert newest[headers.index("Failed")] == "2"
    assert newest[headers.index("Created")] == "–"
    assert newest[-1] == "Needs attention"
    outcome = RunsModel.OUTCOME_COLUMN
    assert model.index(0, outcome).data(Qt.ItemDataRole.ForegroundRole) is not None  # attention is coloured
    assert model.index(0, headers.index("Failed")).data(Qt.ItemDataRole.ForegroundRole) is not None
    assert model.index(1, 3).data() == "12.5 s"
    assert model.index(1, outcome).data() == "OK"


def test_runs_model_refresh_adds_new_runs_on_top_and_finishes_running_ones(qtbot, db, pair):
    running = make_run(pair, outcome="running")
    model = RunsModel()
    model.load()
    assert model.index(0, 3).data() == "running…"

    SyncRun.update(outcome="ok", finished_at=running.started_at + timedelta(seconds=2), created=7).where(
        SyncRun.id == running.id
    ).execute()
    newer = make_run(pair, trigger="retry")
    with qtbot.waitSignal(model.rowsInserted), qtbot.waitSignal(model.dataChanged):
        new_ids = model.refresh()

    assert new_ids == [newer.id]
    assert [model.row_at(r).id for r in range(model.rowCount())] == [newer.id, running.id]
    assert model.index(1, 4).data() == "7" and model.index(1, RunsModel.OUTCOME_COLUMN).data() == "OK"


def test_runs_model_pages_lazily(qtbot, db):
    for _ in range(25):
        make_run()
    model = RunsModel(page_size=10)
    model.load()
    assert model.rowCount() == 10 and model.canFetchMore()
    model.fetchMore()
    model.fetchMore()
    assert model.rowCount() == 25 and not model.canFetchMore()
    ids = [model.row_at(r).id for r in range(25)]
    assert ids == sorted(ids, reverse=True)


# --- records of a run ---------------------------------------------------------------------------------


def test_events_model_columns_and_cleaned_data(qtbot, db, pair):
    run = make_run(pair)
    SyncEvent.create(
        run=run,
        stream=STREAM,
        source_id="42",
        display_name="Ann\x07e \u202eevil\u202c " + "N" * 5000,
        stripe_id="cus_A",
        action="created",
        message="phone shortened\nname trimmed",
    )
    model = EventsModel()
    model.show(EventQuery(run.id))

    assert model.columns == ("Run", "Time", "Record id", "Name", "Stripe id", "Action", "Message")
    row = [model.index(0, c).data() for c in range(model.columnCount())]
    assert row[0] == f"#{run.id}"
    assert row[2] == "42" and row[4] == "cus_A" and row[5] == "Created"
    assert row[3].startswith("Anne evil NNN") and row[3].endswith("…") and len(row[3]) <= 160
    assert "\x07" not in row[3] and "\u202e" not in row[3]
    assert row[6] == "phone shortened · name trimmed"
    assert model.index(0, EventsModel.NAME).data(Qt.ItemDataRole.ToolTipRole).startswith("Anne evil")
    assert model.index(0, 0).data(ACTION_ROLE) == "created"


def test_events_model_pins_failed_then_review_then_newest_first(qtbot):
    when = datetime(2026, 1, 1)
    actions = ["created", "failed", "updated", "review", "linked", "failed", "review", "created"]
    rows = [EventRow(i + 1, 1, STREAM, str(i + 1), f"P{i + 1}", None, a, "", when) for i, a in enumerate(actions)]
    model = EventsModel()
    model.set_rows(rows)

    assert shown_column(model, EventsModel.SOURCE) == ["6", "2", "7", "4", "8", "5", "3", "1"]
    assert shown_column(model, EventsModel.ACTION)[:4] == ["Failed", "Failed", "Needs review", "Needs review"]
    assert model.index(0, 0).data(Qt.ItemDataRole.BackgroundRole) is not None  # failed rows are tinted


def test_lazy_fetch_loads_page_after_page_in_the_pinned_order(qtbot, db, pair):
    run = make_run(pair)
    actions = ["created"] * 450
    for position in (3, 120, 333, 449):
        actions[position] = "failed"
    actions[200] = "review"
    ids = add_events(run, actions)
    model = EventsModel(page_size=200)
    model.show(EventQuery(run.id))
    assert model.rowCount() == 200 and model.canFetchMore()

    view = QTableView()
    qtbot.addWidget(view)
    view.setModel(model)
    view.resize(400, 300)
    view.show()
    while model.canFetchMore():  # what a view does as it is scrolled to the bottom
        view.scrollToBottom()
        qtbot.waitUntil(lambda: True)
        model.fetchMore()
    assert model.rowCount() == 450
    expected = [ids[p] for p in (449, 333, 120, 3)] + [ids[200]]
    shown = shown_column(model, 0, Qt.ItemDataRole.UserRole + 1)
    assert shown[:5] == expected
    assert shown[5:] == sorted(shown[5:], reverse=True)


def test_a_view_scrolled_to_the_bottom_fetches_the_next_page(qtbot, db, pair):
    run = make_run(pair)
    add_events(run, ["created"] * 300)
    model = EventsModel(page_size=100)
    model.show(EventQuery(run.id))
    view = QTableView()
    qtbot.addWidget(view)
    view.setModel(model)
    view.resize(400, 300)
    view.show()
    qtbot.waitExposed(view)
    view.scrollToBottom()
    qtbot.waitUntil(lambda: model.rowCount() > 100)


def test_search_by_name_record_id_stripe_id_and_full_email(qtbot, db, pair):
    run = make_run(pair)
    add_events(run, ["created", "failed", "updated", "created"], name="Patient {i}")
    SyncEvent.create(run=run, stream=STREAM, source_id="777", display_name="Zoë O'Hara", action="linked")
    RecordLink.create(
        pair=pair,
        stream=STREAM,
        source_id="777",
        stripe_object="customer",
        email_hash=email_hash(pair, "zoe.ohara@example.com"),
    )

    def names(search: str, run_id: int | None = run.id) -> list[str]:
        rows, _ = queries.history_events(EventQuery(run_id, search))
        return sorted(row.display_name for row in rows)

    assert names("patient 1") == ["Patient 1"]  # case-insensitive, part of a name
    assert names("o'hara") == ["Zoë O'Hara"]
    assert names(f"{run.id}000002") == ["Patient 2"]  # a Cliniko id
    assert names(f"cus_{run.id}x000003") == ["Patient 3"]  # a Stripe id
    assert names("ZOE.OHARA@example.com ") == ["Zoë O'Hara"]  # full email, through its keyed hash
    assert names("ohara@example") == []  # part of an email cannot be matched: none is stored
    assert names("%") == [] and names("t_1") == []  # LIKE wildcards are literal ("t_1" is not "t 1")
    other = make_run(pair)
    add_events(other, ["created"], name="Patient {i} again")
    assert names("patient 0", run_id=None) == ["Patient 0", "Patient 0 again"]


def test_retry_of_failed_queues_each_failed_record_once(qtbot, db, pair):
    run = make_run(pair, failed=3)
    add_events(run, ["failed", "created", "failed"])
    SyncEvent.create(run=run, stream=STREAM, source_id=f"{run.id}000000", action="failed", message="again")
    SyncEvent.create(run=run, stream=STREAM, source_id="?", action="failed", message="no id")
    assert queries.queue_retry_of_failed(run.id) == 2
    assert queries.queue_retry_of_failed(run.id) == 2  # asking twice is harmless
    assert sorted(r.source_id for r in RetryRecord.select()) == [f"{run.id}000000", f"{run.id}000002"]
    assert queries.queue_retry_of_failed(make_run(None).id) == 0  # a run that never reached an account


def test_history_reads_a_page_at_a_time_with_100000_records(qtbot, db, pair, monkeypatch):
    """No full load: the rows built from the database stay within the pages asked for (timing belongs to
    benchmarks/table_scroll.py, not to a test)."""
    run = make_run(pair, failed=5)
    actions = ["updated"] * 100_000
    for position in (10, 25_000, 50_000, 75_000, 99_990):
        actions[position] = "failed"
    add_events(run, actions)
    built = []
    event_row = queries._event_row
    monkeypatch.setattr(queries, "_event_row", lambda values: built.append(1) or event_row(values))
    model = EventsModel(page_size=200)

    model.show(EventQuery(run.id))
    assert shown_column(model, EventsModel.ACTION)[:6] == ["Failed"] * 5 + ["Updated"]
    assert len(built) == 200

    for _ in range(20):
        model.fetchMore()
    assert model.rowCount() == 4_200 and len(built) == 4_200

    built.clear()
    rows, _ = queries.history_events(EventQuery(run.id, "Patient 99999"))
    assert [r.display_name for r in rows] == ["Patient 99999"] and len(built) == 1


def test_rows_past_a_deep_page_are_right_and_cost_the_garbage_collector_nothing(qtbot, db, pair):
    """The tables hold their rows as plain tuples, which the collector stops watching (a full collection over
    100,000 row objects froze the window while it scrolled); read back, each is the row its page loaded, in the
    pinned order, however deep."""
    run = make_run(pair, failed=2)
    actions = ["updated"] * 1_500
    actions[7] = actions[1_400] = "failed"
    ids = add_events(run, actions)
    model = EventsModel(page_size=100)
    model.show(EventQuery(run.id))
    while model.canFetchMore():
        model.fetchMore()

    rest = [event_id for position, event_id in enumerate(ids) if position not in (7, 1_400)]
    assert [row.id for row in model.rows] == [ids[1_400], ids[7], *reversed(rest)]
    deep = model.row_at(1_234)
    stored = SyncEvent.get_by_id(deep.id)
    assert isinstance(deep, EventRow) and (deep.display_name, deep.stripe_id) == (stored.display_name, stored.stripe_id)
    assert model.index(1_234, EventsModel.NAME).data() == deep.display_name
    assert model.index(1_234, 0).data(ACTION_ROLE) == "updated" and model.index(1, 0).data(ACTION_ROLE) == "failed"
    gc.collect()
    gc.collect()  # a tuple is let go once the tuples inside it have been
    assert not any(gc.is_tracked(model.rows.values(position)) for position in range(model.rowCount()))

    for _ in range(450):
        make_run(pair)
    runs = RunsModel(page_size=100)
    runs.load()
    while runs.canFetchMore():
        runs.fetchMore()
    assert [row.id for row in runs.rows] == sorted((r.id for r in SyncRun.select(SyncRun.id)), reverse=True)
    assert runs.row_at(333) == queries.history_run(runs.row_at(333).id)
    gc.collect()
    gc.collect()  # a tuple is let go once the tuples inside it have been
    assert not any(gc.is_tracked(runs.rows.values(position)) for position in range(runs.rowCount()))


def test_helpers_format_for_people():
    assert clean_text("a\tb\r\nc\x00") == "a b · c"
    assert clean_text(None) == ""
    started = datetime(2026, 1, 1)
    row = queries.RunRow(1, STREAM, "manual", False, started, started + timedelta(hours=2, minutes=3), "ok",
                         *([0] * 7), "", None)  # fmt: skip
    assert format_duration(row) == "2 h 03 min"


def test_clean_text_keeps_every_cell_on_one_line_and_drops_invisible_direction_marks():
    # Unicode line and paragraph separators and NEL break a line just as \n does; C1 controls draw as boxes.
    assert clean_text("line\u2028sep\u2029para\x85end") == "line · sep · para · end"
    assert clean_text("a\x9bb\x80c\x9fd") == "abcd"
    # Direction marks (LRM, RLM, ALM) and overrides/isolates reorder what follows without being seen.
    assert clean_text("\u200fcus\u200e_\u061cA\u202e\u2067B") == "cus_AB"
    assert clean_text("مرحبا עברית \U0001f600 e\u0301") == "مرحبا עברית \U0001f600 e\u0301"  # real text is kept


def test_every_events_column_is_cleaned_including_the_stripe_id(qtbot):
    hostile = "\u202e\x00cus_\u2028" + "9" * 100_000
    model = EventsModel()
    model.set_rows([EventRow(1, 1, STREAM, hostile, hostile, hostile, "failed", hostile, datetime(2026, 1, 1))])
    for column in range(model.columnCount()):
        for role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.ToolTipRole):
            value = model.index(0, column).data(role)
            if isinstance(value, str):
                assert not set(value) & {"\u202e", "\x00", "\u2028"}, (model.columns[column], role)
                assert len(value) <= 1_000, (model.columns[column], role)
    stripe_id = model.index(0, EventsModel.STRIPE).data()
    assert stripe_id.startswith("cus_ · 999") and len(stripe_id) <= 160


def test_packed_rows_refuse_an_index_before_the_first_row_as_a_list_does() -> None:
    from clinicsync.ui.models import PackedRows

    rows = PackedRows(lambda row: (row,), lambda packed: packed[0], ["a", "b"])
    assert rows[-1] == "b" and rows[-2] == "a"
    with pytest.raises(IndexError):
        rows[-3]
