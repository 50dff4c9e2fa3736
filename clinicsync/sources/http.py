"""What every source client shares: one keep-alive httpx client that never follows redirects, and its lifecycle."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

import httpx


def api_client(
    *,
    headers: Mapping[str, str],
    timeout_s: float,
    transport: httpx.BaseTransport | None,
    auth: httpx.Auth | None = None,
) -> httpx.Client:
    return httpx.Client(
        auth=auth,
        headers=dict(headers),
        timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
        transport=transport,
        follow_redirects=False,  # a redirect could carry the key to another host
    )


class ClosingClient:
    """Close it (or use `with`) to release the connection; `_http` is the client's httpx.Client."""

    _http: httpx.Client

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
