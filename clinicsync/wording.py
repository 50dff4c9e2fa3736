"""Where a person changes something, said for where they are: the window names its tab, the command line names
the command. One place holds both, so the two can never drift apart.

The command line switches this on for its headless commands (`use_cli_wording`); everything else, the desktop app
included, gets the window's words.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_cli = False

CONTACT_EMAIL_REQUIRED = "Cliniko requires every app to give a contact email address, and blocks requests without one."


@contextmanager
def use_cli_wording() -> Iterator[None]:
    """Within the block, messages name `clinicsync` commands instead of the window's tabs."""
    global _cli
    before, _cli = _cli, True
    try:
        yield
    finally:
        _cli = before


def in_cli() -> bool:
    return _cli


def set_contact_email() -> str:
    """How to give Cliniko the clinic's contact email, where the person is."""
    if _cli:
        return "Set this clinic's with `clinicsync config set contact_email manager@yourclinic.example`."
    return "Enter a valid email address for this clinic in Connections."


def contact_email_missing() -> str:
    return f"{CONTACT_EMAIL_REQUIRED} {set_contact_email()}"
