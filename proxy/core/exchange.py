"""What the engine and whatever serves the proxy port exchange: the request as the
engine sees it, the answer, and a request resolved for the synchronous hit path.

No server types here: a server turns bytes into an ``Exchange`` and a ``ProxyResponse``
back into bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from proxy.core.routing import Route, Router

Headers = tuple[tuple[str, str], ...]


class Relay(Protocol):
    """A server that can pass an origin's interim (1xx) answers on to its client."""

    def send_interim(
        self, ex: Exchange, status: int, fields: Sequence[tuple[bytes, bytes]]
    ) -> None: ...


class Exchange:
    """One client request, as the engine sees it (no server types).

    ``hmap`` maps lowercased names to their combined values: what decisions read.
    ``headers`` are the fields as sent, for forwarding; a server that parsed them from
    the wire passes the byte pairs (``raw``), decoded only when a path asks for them
    (a miss or a pass-through, never a hit). ``relay``, when the server set one, takes
    the origin's interim answers to this request (``interim``).
    """

    __slots__ = (
        "_headers",
        "_raw",
        "body",
        "client",
        "hmap",
        "host",
        "method",
        "path",
        "query",
        "relay",
    )
    scheme = "http"

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: Headers | None,
        hmap: Mapping[str, str],
        *,
        host: str = "",
        client: str = "",
        body: AsyncIterable[bytes] | None = None,
        raw: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self._headers = headers
        self._raw = raw
        self.hmap = hmap
        self.host = host
        self.client = client
        self.body = body
        self.relay: Relay | None = None

    @staticmethod
    def build(
        method: str,
        path: str,
        query: str,
        headers: Headers,
        *,
        host: str = "",
        client: str = "",
        body: AsyncIterable[bytes] | None = None,
    ) -> Exchange:
        hmap: dict[str, str] = {}
        for name, value in headers:
            lowered = name.lower()
            hmap[lowered] = f"{hmap[lowered]}, {value}" if lowered in hmap else value
        return Exchange(method, path, query, headers, hmap, host=host, client=client, body=body)

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in self._raw)
        return self._headers

    @property
    def wire_fields(self) -> Sequence[tuple[bytes, bytes]] | None:
        """The fields as a server read them off the wire, to relay as they are; ``None``
        when the exchange was built from text fields (``headers`` holds them)."""
        return self._raw if self._raw or self._headers is None else None

    def interim(self, status: int, fields: Sequence[tuple[bytes, bytes]]) -> None:
        """An interim (1xx) answer of the origin to this request: to the client, when
        its server relays them (RFC 9110 §15.2), else dropped."""
        if self.relay is not None:
            self.relay.send_interim(self, status, fields)

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    def with_client(self, client: str) -> Exchange:
        """The same request from another connection."""
        return Exchange(
            self.method,
            self.path,
            self.query,
            self._headers,
            self.hmap,
            host=self.host,
            client=client,
            body=self.body,
            raw=self._raw,
        )


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


class Reader(Protocol):
    """What a ticket asks of its store (every ``proxy.stores.base.Store`` is one)."""

    async def get(self, key: str) -> bytes | None: ...


@dataclass(slots=True)
class Ticket:
    """A request resolved for the synchronous hit path: see ``Engine.ticket``."""

    ex: Exchange
    route: Route
    key: str
    get_now: Callable[[str], bytes | None] | None  # None: a shared store, read with ``get``
    store: Reader  # the route's store, as much of it as a ticket reads
    router: Router  # the policy it was resolved under
