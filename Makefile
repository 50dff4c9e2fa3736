# Every target creates the virtual environment first, so `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run system-libs test lint specs sandbox bench screenshots package clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# On Debian/Ubuntu, first (before the two-minute install) make sure Qt's xcb libraries are there: stops with
# the apt-get command that installs them or, as root, installs them. See packaging/check-system-libs.sh.
run: system-libs $(STAMP)
	$(BIN)/clinicsync

system-libs:
	sh packaging/check-system-libs.sh

# Two workers at most (CI has two cores), each running whole test files; PYTEST_ARGS="-n 0" runs in one process.
test: $(STAMP)
	QT_QPA_PLATFORM=$${QT_QPA_PLATFORM:-offscreen} $(BIN)/python -m pytest -q -n auto --maxprocesses 2 --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check clinicsync tests benchmarks
	$(BIN)/ruff format --check clinicsync tests benchmarks

# Re-derives the trimmed API facts the tests read (tests/specs/) from the official documents, kept outside the
# repository: `make specs SPECS_SOURCE=<folder holding them>`. Nothing else reads that folder; see
# tests/specs/README.md.
specs: $(STAMP)
	@test -n "$(SPECS_SOURCE)" || { echo "make specs SPECS_SOURCE=<folder with the official API documents>"; exit 2; }
	$(BIN)/python tests/specs/derive.py $(SPECS_SOURCE)

sandbox: $(STAMP)
	$(BIN)/clinicsync sandbox

# The whole set, one after another (hours: each measured run is repeated, `--runs`, default 3; each script prints
# every run's figures and their median — wall, wall / floor, peak RSS, written per record, requests — and is
# judged on the median, benchmarks/medians.py; a baseline runs once). The set goes on past a script that misses
# its target, naming them all at the end. One alone: `.venv/bin/python benchmarks/<name>.py --help`.
# BENCH=initial_sync,table_scroll picks some; options may follow a name after colons
# (initial_sync:--stripe-mode=test:--runs=1): initial_sync:--stripe-mode=test is the first sync at Stripe's
# test-mode limit (25/s), one run with no plan to approve; issue 14's scale is 20,000 patients (the first sync, and
# the GUI thread during it), whose baseline of one write at a time would take most of an hour.
BENCH ?= initial_sync,initial_sync:--patients=20000:--no-baseline,initial_sync:--stripe-mode=test,products_sync,invoice_sync,calcom_sync,reconcile,quiet_sync,freshness,gui_stall:--patients=20000,table_scroll,startup
bench: $(STAMP)
	@missed=""; for entry in $$(echo "$(BENCH)" | tr ',' ' '); do \
	  name=$${entry%%:*}; options=$$(echo "$$entry" | sed -n 's/^[^:]*://p' | tr ':' ' '); \
	  echo "== benchmarks/$$name.py $$options"; \
	  QT_QPA_PLATFORM=$${QT_QPA_PLATFORM:-offscreen} $(BIN)/python benchmarks/$$name.py $$options \
	    || missed="$$missed $$entry"; \
	done; \
	if [ -n "$$missed" ]; then echo "== missed its target or failed:$$missed"; exit 1; fi

# Renders every tab and the first-run and approval dialogs on sandbox data to docs/screenshots/ (light + dark).
# Without a desktop session there is no keyring, and Connections would show that error instead of the usual
# screen; so, like CI, such a run gets a private D-Bus session with a throwaway unlocked keyring (nothing is
# stored in it: the screenshot profiles take their sandbox keys from the environment).
SCREENSHOTS := QT_QPA_PLATFORM=offscreen $(BIN)/python -m clinicsync.ui.screenshots --out docs/screenshots
screenshots: $(STAMP)
	@if [ -z "$$DBUS_SESSION_BUS_ADDRESS" ] && command -v dbus-run-session >/dev/null \
	    && command -v gnome-keyring-daemon >/dev/null; then \
	  dbus-run-session -- sh -c 'export XDG_DATA_HOME=$$(mktemp -d); \
	    printf screenshots | gnome-keyring-daemon --unlock --components=secrets >/dev/null; $(SCREENSHOTS)'; \
	else \
	  $(SCREENSHOTS); \
	fi

# A onedir desktop build in dist/clinicsync/ (see packaging/README.md); PyInstaller's scratch goes to build/.
package: $(STAMP)
	$(BIN)/pip install --quiet -e '.[package]'
	$(BIN)/pyinstaller packaging/clinicsync.spec --noconfirm --distpath dist --workpath build/pyinstaller

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
