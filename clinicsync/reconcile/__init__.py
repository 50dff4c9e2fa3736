"""Reconciliation: compare every source record with Stripe, report what differs, say how to fix it.

Pure and Qt-free (no database, no network): findings.py (what can be reported), compare.py (what a stream
declares), judge.py (the rules), export.py (CSV and HTML). The driver that reads both sides and stores reports
is clinicsync/sync/reconcile_run.py; fixes are carried out by clinicsync/sync/reconcile_fix.py.
"""
