"""One cacheable request as the engine's paths share it: what it is, where it is
looked up and stored, and what the lookup left for the fill (a stale copy, and why the
request went forward). A value: a path that learns more makes a new one."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.core.cachecontrol import CacheControl
from proxy.core.entry import CachedResponse
from proxy.core.exchange import Exchange
from proxy.core.routing import Route
from proxy.errors import StoreError
from proxy.stores.base import Store


@dataclass(frozen=True, slots=True)
class Context:
    """A request the cache takes part in (``decide.Look``), with its route's store."""

    ex: Exchange
    route: Route
    params: dict[str, str]  # the route pattern's parameters, for tag templates
    key: str  # the primary cache key (a variant's key derives from it)
    store: Store
    request_cc: CacheControl  # the request directives honoured (RFC 9111 §5.2.1)
    stale: CachedResponse | None = None  # a stored response that could not answer
    fwd: str = "uri-miss"  # why the request goes forward (RFC 9211 §2.2)


@dataclass(frozen=True, slots=True)
class FirstRead:
    """What the store answered under ``key`` when the engine read it before deciding
    anything (a request resolved by the hit path's ticket): the stored bytes (``None``:
    nothing there), or the failure, which the general path treats as its own read's."""

    key: str
    raw: bytes | None
    error: StoreError | None = None
