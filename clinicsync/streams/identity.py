"""Field ownership on a customer several sources share (streams.md §3): the primary source (setting
`identity.primary_source`, Cliniko by default) owns the person's name, email, phone and address; another source
adds only its own metadata keys. Stripe merges metadata keys, so sending only ours never clears another's."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

PRIMARY_SOURCE_SETTING = "identity.primary_source"
DEFAULT_PRIMARY_SOURCE = "cliniko"


def owned_params(
    params: Mapping[str, Any], source_system: str, primary_source: str, linked_by: Collection[str]
) -> dict[str, Any]:
    """`params` as the writing source may send them to a customer the sources in `linked_by` are linked to: all
    of them when it is the primary source or the primary source has no record linked to it; else its metadata
    keys only (the identity fields stay the primary source's)."""
    if source_system == primary_source or primary_source not in linked_by:
        return dict(params)
    return {key: value for key, value in params.items() if key == "metadata"}
