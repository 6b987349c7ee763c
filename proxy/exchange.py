"""What the engine and whatever serves the proxy port exchange: the request as the
engine sees it, the answer, and a request resolved for the synchronous hit path.

No server types here: a server turns bytes into an ``Exchange`` and a ``ProxyResponse``
back into bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from proxy.routing import Route, Router
from proxy.stores.base import Store

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Exchange:
    """One client request, as the engine sees it (no server types)."""

    method: str
    path: str
    query: str
    headers: Headers
    host: str = ""
    client: str = ""
    scheme: str = "http"
    body: AsyncIterable[bytes] | None = None
    hmap: Mapping[str, str] = field(default_factory=dict)

    @staticmethod
    def build(
        method: str,
        path: str,
        query: str,
        headers: Headers,
        *,
        host: str = "",
        client: str = "",
        scheme: str = "http",
        body: AsyncIterable[bytes] | None = None,
    ) -> Exchange:
        hmap: dict[str, str] = {}
        for name, value in headers:
            lowered = name.lower()
            hmap[lowered] = f"{hmap[lowered]}, {value}" if lowered in hmap else value
        return Exchange(method, path, query, headers, host, client, scheme, body, hmap)

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


@dataclass(slots=True)
class ProxyResponse:
    """What goes back to the client: a body in memory or a stream."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    # For HEAD answered from cache: the Content-Length a GET would have had.
    head_length: int | None = None
    cache: str = "MISS"  # the X-Cache label, for metrics and the access log
    route: str = ""
    # A stored response's own fields as header lines, sent before ``headers``: the same
    # bytes for every hit on one entry version; ``dated`` when Date is among them.
    block: bytes = b""
    dated: bool = False


@dataclass(slots=True)
class Ticket:
    """A request resolved for the synchronous hit path: see ``Engine.ticket``."""

    ex: Exchange
    route: Route
    key: str
    get_now: Callable[[str], bytes | None] | None  # None: a shared store, read with ``get``
    store: Store
    router: Router  # the policy it was resolved under
