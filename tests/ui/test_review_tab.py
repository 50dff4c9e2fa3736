"""The Review tab: open items in an item model, candidates fetched from Stripe off the GUI thread, and Link / Create
new / Ignore doing what `clinicsync review` does (the next sync carries the decision out)."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QTableView

from clinicsync.store.models import RecordLink, ReviewItem
from clinicsync.sync.runner import Job, JobOutcome
from clinicsync.ui.review_tab import ReviewModel, ReviewRow, ReviewTab
from clinicsync.ui.status import PAUSED_MESSAGE
from tests.support import admin
from tests.ui.connections_support import build_ui, close_ui

TIMEOUT_MS = 30_000


@pytest.fixture
def review_setup(make_sandbox, env_for):
    """The hard clinic with email matches sent to review: Olivia (one matching customer) and Ethan (two customers
    share his email) wait for a decision after the first sync."""
    sandbox = make_sandbox(profile="hard", patients=20)
    ui = build_ui(env_for(sandbox, CLINICSYNC_SYNC_EMAIL_MATCH="review"))
    yield sandbox, ui
    close_ui(ui)


def sync(qtbot, ui):
    with qtbot.waitSignal(ui.bridge.job_finished, timeout=TIMEOUT_MS) as finished:
        assert ui.sync_now() is not None
    outcome = finished.args[0]
    assert outcome.failure_kind is None, outcome.message
    return outcome.results[0]


def select(qtbot, tab: ReviewTab, name: str) -> None:
    row = next(i for i, r in enumerate(tab.model.rows) if r.display_name == name)
    tab.items_view.selectRow(row)
    wait_for_candidates(qtbot, tab)


def wait_for_candidates(qtbot, tab: ReviewTab) -> None:
    qtbot.waitUntil(lambda: all(c.loaded for c in tab.candidate_model.rows), timeout=TIMEOUT_MS)


def cell(view: QTableView, row: int, column: int) -> str:
    return view.model().index(row, column).data()


def link_of(source_id: str) -> str | None:
    return RecordLink.get(RecordLink.source_id == source_id).stripe_id


def test_link_create_and_ignore_resolve_review_items(qtbot, review_setup):
    sandbox, ui = review_setup
    sync(qtbot, ui)
    tab = ReviewTab(ui)
    qtbot.addWidget(tab)
    assert isinstance(tab.model, ReviewModel) and tab.items_view.model() is tab.model
    assert sorted(r.display_name for r in tab.model.rows) == ["Ethan Brooks", "Olivia Nguyen"]

    # Ethan: two Stripe customers share his email; their details come from Stripe, side by side.
    select(qtbot, tab, "Ethan Brooks")
    ethan = tab.current_item()
    assert ethan is not None and len(ethan.candidates) == 2
    emails = {cell(tab.candidates_view, row, 2).casefold() for row in (1, 2)}  # row 0: Ethan himself
    assert len(emails) == 1 and "@" in emails.pop(), "both candidates carry the shared email"
    assert all(cell(tab.candidates_view, row, 1) for row in (1, 2)), "each candidate's name is shown"
    chosen = ethan.candidates[1]
    tab.select_candidate(1)
    with qtbot.waitSignal(tab.resolved, timeout=1000) as resolved:
        tab.link_button.click()
    assert resolved.args == [ethan.id, "link"]
    item = ReviewItem.get_by_id(ethan.id)
    assert (item.status, item.resolution, item.resolution_stripe_id) == ("resolved", "link", chosen)
    assert [r.display_name for r in tab.model.rows] == ["Olivia Nguyen"]

    # Olivia: ignored, so she is never synced.
    select(qtbot, tab, "Olivia Nguyen")
    olivia = tab.current_item()
    assert olivia is not None
    tab.ignore_button.click()
    assert ReviewItem.get_by_id(olivia.id).status == "ignored"
    assert tab.model.rows == [] and tab.empty_label.isVisibleTo(tab)
    assert not tab.link_button.isEnabled() and not tab.create_button.isEnabled()

    # The next sync carries both decisions out.
    second = sync(qtbot, ui)
    assert link_of(ethan.source_id) == chosen
    assert link_of(olivia.source_id) is None and second.counts["linked"] == 1

    # A customer deleted in Stripe comes back as a review item; "Create new" makes a fresh one.
    victim = RecordLink.select().where(RecordLink.stripe_id.is_null(False)).first()
    admin(sandbox.stripe_url, "delete", ids=[victim.stripe_id])
    admin(sandbox.cliniko_url, "edit", ids=[victim.source_id], fields={"city": "Ballarat"})
    sync(qtbot, ui)  # the tab reloads itself when a sync finishes
    (gone,) = tab.model.rows
    assert gone.source_id == victim.source_id and gone.reason == "stripe_object_deleted"
    tab.items_view.selectRow(0)
    assert not tab.link_button.isEnabled(), "nothing to link to"
    tab.create_button.click()
    assert ReviewItem.get_by_id(gone.id).resolution == "create"
    third = sync(qtbot, ui)
    assert third.counts["created"] == 1
    new_id = link_of(victim.source_id)
    assert new_id and new_id != victim.stripe_id


def test_a_deleted_candidate_cannot_be_linked(qtbot, review_setup):
    sandbox, ui = review_setup
    sync(qtbot, ui)
    olivia = ReviewItem.get(ReviewItem.display_name == "Olivia Nguyen")
    admin(sandbox.stripe_url, "delete", ids=list(olivia.candidates))
    tab = ReviewTab(ui)
    qtbot.addWidget(tab)
    select(qtbot, tab, "Olivia Nguyen")
    assert cell(tab.candidates_view, 1, 1) == "(deleted in Stripe)"
    assert not tab.link_button.isEnabled() and tab.create_button.isEnabled()


def test_a_stripe_problem_is_shown_not_raised(qtbot, review_setup):
    sandbox, ui = review_setup
    sync(qtbot, ui)
    admin(sandbox.stripe_url, "revoke", key=sandbox.stripe_key)
    tab = ReviewTab(ui)
    qtbot.addWidget(tab)
    qtbot.waitUntil(lambda: "Could not load the candidates" in tab.status_label.text(), timeout=TIMEOUT_MS)
    assert "401" in tab.status_label.text()
    assert tab.create_button.isEnabled(), "a decision can still be made without the details"


def test_sync_now_follows_pause_and_a_running_sync_like_the_overviews(qtbot, build_gui, offline_env):
    gui = build_gui(offline_env)
    review, overview = gui.window.tab("review"), gui.window.tab("overview")
    assert review.sync_button.isEnabled()

    gui.tracker.set_paused(True)
    assert not review.sync_button.isEnabled() and not overview.sync_button.isEnabled()
    review.sync_button.clicked.emit()  # a click that got through anyway says why, in the Overview's words
    assert review.status_label.text() == PAUSED_MESSAGE and not gui.ui.runner.busy
    gui.tracker.set_paused(False)
    assert review.sync_button.isEnabled()

    job = Job(1, "manual")
    gui.ui.bridge.job_started.emit(job)  # as the runner's bridge would, without a sync
    assert not review.sync_button.isEnabled() and review.sync_button.text() == "Syncing…"
    gui.ui.bridge.job_finished.emit(JobOutcome(job))
    assert review.sync_button.isEnabled() and review.sync_button.text() == "Sync now"


def test_sync_now_from_the_review_tab_disables_it_until_the_sync_ends(qtbot, sandbox_gui):
    gui, _ = sandbox_gui(profile="clean", patients=3)
    review = gui.window.show_tab("review")
    with qtbot.waitSignal(gui.ui.bridge.job_finished, timeout=TIMEOUT_MS) as finished:
        review.sync_button.click()
        assert not review.sync_button.isEnabled(), "one click, one sync"
    assert finished.args[0].failure_kind is None
    qtbot.waitUntil(review.sync_button.isEnabled)


def test_the_record_and_status_labels_show_source_data_as_written(qtbot, build_gui, offline_env):
    review = build_gui(offline_env).window.tab("review")
    name = "Smith <Allied> & Sons <h1>Physio</h1>"
    review._show_item(ReviewRow(7, "cliniko.patients", "42", name, "email_match", "", ()))
    assert review.record_label.textFormat() == Qt.TextFormat.PlainText
    assert review.record_label.text().startswith(name + " — Cliniko patient 42")
    assert review.status_label.textFormat() == Qt.TextFormat.PlainText  # it repeats the name after a decision


def test_a_record_without_a_name_shows_its_id_cleaned_and_shortened(qtbot, build_gui, offline_env):
    source_id = "\u202e" + "9" * 5000  # a hostile id: a right-to-left override and 5,000 digits
    item = ReviewRow(3, "cliniko.patients", source_id, "", "email_match", "", ())
    model = ReviewModel()
    model.set_rows([item])
    shown = model.index(0, 0).data()
    assert "\u202e" not in shown and shown.startswith("999") and len(shown) <= 160
    review = build_gui(offline_env).window.tab("review")
    review._show_item(item)
    assert "\u202e" not in review.record_label.text() and len(review.record_label.text()) < 500


def test_after_the_sync_the_tab_says_it_carried_out_the_decisions(qtbot, review_setup):
    _sandbox, ui = review_setup
    sync(qtbot, ui)
    tab = ReviewTab(ui)
    qtbot.addWidget(tab)
    select(qtbot, tab, "Ethan Brooks")
    chosen = tab.current_item().candidates[0]
    tab.select_candidate(0)
    tab.link_button.click()
    assert tab.status_label.text() == f"Ethan Brooks will be linked to Stripe customer {chosen} by the next sync."
    select(qtbot, tab, "Olivia Nguyen")
    tab.create_button.click()
    assert tab.status_label.text() == "Olivia Nguyen will get a new Stripe customer at the next sync."

    sync(qtbot, ui)  # the tab hears the sync finish
    olivia = RecordLink.get(RecordLink.display_name == "Olivia Nguyen").stripe_id
    said = tab.status_label.text()
    assert said.startswith("The last sync carried out your decisions: ") and said.endswith(".")
    assert f"Ethan Brooks is now linked to Stripe customer {chosen}" in said
    assert f"Olivia Nguyen now has a new Stripe customer, {olivia}" in said


def test_words_for_decisions_a_sync_did_not_carry_out() -> None:
    from clinicsync.ui.review_tab import Decision, carried_out_text

    link = Decision(1, "Ethan Brooks", "link", "cus_A")
    create = Decision(2, "Olivia Nguyen", "create", None)
    assert carried_out_text([(link, "resolved", None)]) == "1 decision waits for the next sync: Ethan Brooks."
    assert carried_out_text([(link, "done", "cus_B"), (create, "resolved", None)]) == (
        "It could not carry out your decision about Ethan Brooks; Sync history says why. "
        "1 decision waits for the next sync: Olivia Nguyen."
    )


def test_the_records_own_details_sit_above_its_candidates_without_scrolling_sideways(qtbot, sandbox_gui):
    from tests.integration.test_patients_stream import patients
    from tests.support import expected_customer_fields

    gui, sandbox = sandbox_gui(env={"CLINICSYNC_SYNC_EMAIL_MATCH": "review"}, profile="hard", patients=20)
    with qtbot.waitSignal(gui.ui.bridge.job_finished, timeout=TIMEOUT_MS):
        gui.sync_now()
    gui.window.show()
    tab = gui.window.show_tab("review")
    assert (gui.window.width(), gui.window.height()) == (1100, 720), "the default size"
    row = next(i for i, r in enumerate(tab.model.rows) if r.display_name == "Ethan Brooks")
    tab.items_view.selectRow(row)
    wait_for_candidates(qtbot, tab)
    qtbot.waitUntil(lambda: tab.candidate_model.record.loaded, timeout=TIMEOUT_MS)  # read from Cliniko
    ethan = tab.current_item()
    patient = expected_customer_fields(patients(sandbox)[ethan.source_id])
    view = tab.candidates_view
    assert cell(view, 0, 0) == "This patient" and cell(view, 0, 1) == patient["name"]
    assert cell(view, 0, 2) == patient["email"] and cell(view, 0, 3) == (patient["phone"] or "")
    assert patient["line1"] and cell(view, 0, 4).startswith(patient["line1"])
    assert [cell(view, r, 0) for r in (1, 2)] == ["Customer 1", "Customer 2"]
    assert view.model().index(1, 2).data(Qt.ItemDataRole.ToolTipRole).endswith("The same as the record's")
    view.selectRow(0)  # the record's own row is not a customer to link to
    assert tab.current_candidate() is None and not tab.link_button.isEnabled()
    header = view.horizontalHeader()
    assert header.length() <= view.viewport().width(), "every column fits: no sideways scrolling"
    assert not view.horizontalScrollBar().isVisible()


def test_thousands_of_waiting_records_load_a_page_at_a_time_and_keep_the_selection(qtbot, build_gui, offline_env):
    from clinicsync.store.models import AccountPair

    gui = build_gui(offline_env)
    pair = AccountPair.create(
        uuid="pair-many", source_system="cliniko", source_account="1", stripe_account="acct_x", stripe_livemode=False
    )
    ReviewItem.insert_many(
        {"pair": pair.id, "stream": "cliniko.patients", "source_id": str(1000 + i), "reason": "email_match"}
        for i in range(2_500)
    ).execute()
    review = gui.window.tab("review")
    review.reload()
    assert 0 < review.model.rowCount() < 2_500, "only the first page is read when the tab opens"
    deep = review.model.load_until(ReviewItem.select().order_by(ReviewItem.id.desc()).first().id)
    assert deep == 2_499 and review.model.rowCount() == 2_500 and not review.model.canFetchMore()
    review.items_view.selectRow(2_000)
    chosen = review.current_item().source_id
    review.reload()
    assert review.current_item().source_id == chosen, "a reload keeps the item chosen far down the list"
