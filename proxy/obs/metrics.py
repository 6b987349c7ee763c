"""Prometheus metrics: every name and label set, and the ``Meter`` the proxy updates.

Names follow ``sidecache_<noun>_<unit>``; labels are bounded (route and backend names,
cache results, status classes), never paths or keys. Per-request figures are tallied
in plain integers (well under a microsecond) and moved into prometheus by ``flush``:
on every scrape and once a second. No awaits here. With ``--workers N`` the supervisor calls
``enable_multiprocess`` (prometheus_adapter.py) before forking: values then live in
per-process mmap files and a scrape of any worker sums them.
"""

from __future__ import annotations

import builtins
import time
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

from proxy.obs.prometheus_adapter import add_observations, is_multiprocess, merged_registry

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
STORE_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
GAP_BUCKETS: Final = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)
BREAKER_STATES: Final = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


# How a gauge's per-worker values add up in multiprocess mode (prometheus-client's names).
Mode = Literal["all", "livesum", "max", "livemax", "livemin"]


@dataclass(frozen=True, slots=True)
class Series:
    """One metric family: the ``Meter`` attribute that holds it, and how it is made."""

    attr: str
    kind: type[Counter] | type[Gauge] | type[Histogram]
    name: str
    doc: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()  # histograms
    mode: Mode = "all"  # gauges

    def make(self, registry: CollectorRegistry) -> Counter | Gauge | Histogram:
        if self.kind is Histogram:
            return Histogram(
                self.name, self.doc, self.labels, buckets=self.buckets, registry=registry
            )
        if self.kind is Gauge:
            return Gauge(
                self.name, self.doc, self.labels, multiprocess_mode=self.mode, registry=registry
            )
        return Counter(self.name, self.doc, self.labels, registry=registry)


ROUTE: Final = ("route",)
BACKEND: Final = ("backend",)
SERIES: Final = (
    Series(
        "requests",
        Counter,
        "sidecache_requests",
        "requests by route and cache result (the X-Cache label)",
        ("route", "cache"),
    ),
    Series(
        "request_seconds",
        Histogram,
        "sidecache_request_duration_seconds",
        "time until the response starts (bodies stream after)",
        ("route", "cache"),
        buckets=LATENCY_BUCKETS,
    ),
    Series(
        "origin_seconds",
        Histogram,
        "sidecache_origin_duration_seconds",
        "origin fetches for the cache, until response headers",
        ROUTE,
        buckets=LATENCY_BUCKETS,
    ),
    Series(
        "origin_responses",
        Counter,
        "sidecache_origin_responses",
        "origin answers by status class (timeout, unreachable: no answer)",
        ("route", "status"),
    ),
    Series("stored", Counter, "sidecache_stored_objects", "responses written to a store", ROUTE),
    Series(
        "stored_bytes",
        Counter,
        "sidecache_stored_bytes",
        "bytes of responses written to a store",
        ROUTE,
    ),
    Series(
        "largest",
        Gauge,
        "sidecache_object_max_bytes",
        "largest response stored",
        ROUTE,
        mode="max",
    ),
    Series(
        "uncached",
        Counter,
        "sidecache_uncached_responses",
        "cacheable requests whose response was not stored, by reason",
        ("route", "reason"),
    ),
    Series(
        "coalesced",
        Counter,
        "sidecache_coalesced_requests",
        "followers answered by another request's origin fetch",
        ROUTE,
    ),
    Series(
        "stale",
        Counter,
        "sidecache_stale_served",
        "stale answers: revalidate (SWR), error (SIE), client (max-stale)",
        ("route", "reason"),
    ),
    Series(
        "rerequests",
        Counter,
        "sidecache_rerequests",
        "repeat requests for a key this worker stored: within its TTL or after it",
        ("route", "window"),
    ),
    Series(
        "stored_lifetime",
        Histogram,
        "sidecache_stored_lifetime_seconds",
        "freshness lifetime stored responses got (the origin's or the route's TTL)",
        ROUTE,
        buckets=GAP_BUCKETS,
    ),
    Series(
        "rerequest_gap",
        Histogram,
        "sidecache_rerequest_gap_seconds",
        "time from store to a repeat request that found the entry expired",
        ROUTE,
        buckets=GAP_BUCKETS,
    ),
    Series(
        "store_ops",
        Counter,
        "sidecache_store_operations",
        "operations on shared stores",
        ("backend", "op"),
    ),
    Series(
        "store_errors",
        Counter,
        "sidecache_store_errors",
        "failed store operations by reason: errors, timeouts, rejected (breaker open), "
        "oom (the backend refused a write for lack of memory)",
        ("backend", "op", "reason"),
    ),
    Series(
        "store_seconds",
        Histogram,
        "sidecache_store_duration_seconds",
        "store lookups and writes on the request path (shared stores)",
        ("backend", "op"),
        buckets=STORE_BUCKETS,
    ),
    Series(
        "breaker",
        Gauge,
        "sidecache_breaker_state",
        "circuit breaker: 0 closed, 1 half-open, 2 open (worst worker)",
        BACKEND,
        mode="livemax",
    ),
    Series("breaker_opens", Counter, "sidecache_breaker_opens", "times a breaker opened", BACKEND),
    Series(
        "entries",
        Gauge,
        "sidecache_store_entries",
        "entries in process-local memory stores (all workers)",
        BACKEND,
        mode="livesum",
    ),
    Series(
        "bytes",
        Gauge,
        "sidecache_store_bytes",
        "bytes held by process-local memory stores (all workers)",
        BACKEND,
        mode="livesum",
    ),
    Series("evictions", Counter, "sidecache_store_evictions", "entries evicted for room", BACKEND),
    Series("purges", Counter, "sidecache_purges", "purge requests handled, by source", ("source",)),
    Series(
        "purged",
        Counter,
        "sidecache_purged_entries",
        "entries removed by purges (stores that cannot count add nothing)",
        ("source",),
    ),
    Series(
        "messages",
        Counter,
        "sidecache_invalidation_messages",
        "purge messages between workers and replicas",
        ("transport", "direction"),
    ),
    Series(
        "message_errors",
        Counter,
        "sidecache_invalidation_errors",
        "purge messages that could not be sent or read",
        ("transport",),
    ),
    Series(
        "subscribed",
        Gauge,
        "sidecache_invalidation_subscribers",
        "workers subscribed to the invalidation channel",
        mode="livesum",
    ),
    Series(
        "reloads",
        Counter,
        "sidecache_policy_reloads",
        "policy reloads by result (one per worker)",
        ("result",),
    ),
    Series(
        "started",
        Gauge,
        "sidecache_start_time_seconds",
        "when the oldest live worker started",
        mode="livemin",
    ),
)


class Meter:
    """The proxy's metrics in one registry (one ``Meter`` per worker process); each
    attribute below is made from its row of ``SERIES``."""

    requests: Counter
    request_seconds: Histogram
    origin_seconds: Histogram
    origin_responses: Counter
    stored: Counter
    stored_bytes: Counter
    largest: Gauge
    uncached: Counter
    coalesced: Counter
    stale: Counter
    rerequests: Counter
    stored_lifetime: Histogram
    rerequest_gap: Histogram
    store_ops: Counter
    store_errors: Counter
    store_seconds: Histogram
    breaker: Gauge
    breaker_opens: Counter
    entries: Gauge
    bytes: Gauge
    evictions: Counter
    purges: Counter
    purged: Counter
    messages: Counter
    message_errors: Counter
    subscribed: Gauge
    reloads: Counter
    started: Gauge

    def __init__(self) -> None:
        # no *_created series: noise, and absent in multiprocess mode anyway
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        for series in SERIES:
            setattr(self, series.attr, series.make(self.registry))
        self.started.set(time.time())
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self._origin_series: dict[tuple[str, str], tuple[Histogram, Counter]] = {}
        self._largest: dict[str, int] = {}

    # ------------------------------------------------------------ the request path

    def request(self, route: str, cache: str, seconds: float) -> None:
        """Every request: plain integers here, copied to prometheus by ``flush``."""
        tally = self._tallies.get((route, cache))
        if tally is None:
            tally = self._tallies[(route, cache)] = _Tally()
        tally.count += 1
        tally.seconds += seconds
        tally.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def flush(self) -> None:
        """Move the request tallies into the prometheus series (each scrape, and once a
        second from the worker's poller so other workers' scrapes see them)."""
        for (route, cache), tally in self._tallies.items():
            if not tally.count:
                continue
            self.requests.labels(route, cache).inc(tally.count)
            add_observations(
                self.request_seconds.labels(route, cache), tally.seconds, tally.buckets
            )
            tally.reset()

    def origin(self, route: str, status: int, seconds: float) -> None:
        # the labelled children are looked up once: labels() costs more than the update
        kind = status_class(status)
        series = self._origin_series.get((route, kind))
        if series is None:
            series = self._origin_series[(route, kind)] = (
                self.origin_seconds.labels(route),
                self.origin_responses.labels(route, kind),
            )
        series[0].observe(seconds)
        series[1].inc()

    def origin_failed(self, route: str, kind: str) -> None:
        self.origin_responses.labels(route, kind).inc()

    def store_written(self, route: str, size: int, lifetime: float | None = None) -> None:
        self.stored.labels(route).inc()
        self.stored_bytes.labels(route).inc(size)
        if lifetime is not None:
            self.stored_lifetime.labels(route).observe(lifetime)
        if size > self._largest.get(route, -1):
            self._largest[route] = size
            self.largest.labels(route).set(size)

    def not_stored(self, route: str, reason: str) -> None:
        self.uncached.labels(route, reason).inc()

    def follower(self, route: str) -> None:
        self.coalesced.labels(route).inc()

    def stale_served(self, route: str, reason: str) -> None:
        self.stale.labels(route, reason).inc()

    def rerequest(self, route: str, *, expired: bool, gap: float) -> None:
        self.rerequests.labels(route, "after_ttl" if expired else "within_ttl").inc()
        if expired:
            self.rerequest_gap.labels(route).observe(gap)

    def store_time(self, backend: str, op: str, seconds: float) -> None:
        self.store_seconds.labels(backend, op).observe(seconds)

    # ------------------------------------------------------------ polled and admin figures

    def purge(self, source: str, removed: int) -> None:
        self.purges.labels(source).inc()
        if removed > 0:
            self.purged.labels(source).inc(removed)

    def message(self, transport: str, direction: str) -> None:
        self.messages.labels(transport, direction).inc()

    def message_failed(self, transport: str) -> None:
        self.message_errors.labels(transport).inc()

    def reload(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "failed").inc()

    def breaker_state(self, backend: str, state: str) -> None:
        self.breaker.labels(backend).set(BREAKER_STATES.get(state, 0.0))

    # ------------------------------------------------------------ reading

    def scrape_registry(self) -> CollectorRegistry:
        """This worker's registry, or every worker's files summed in multiprocess mode."""
        return merged_registry() if is_multiprocess() else self.registry

    def exposition(self) -> builtins.bytes:  # the attribute ``bytes`` shadows the type
        self.flush()
        return generate_latest(self.scrape_registry())

    def families(self) -> Iterable[Metric]:
        self.flush()
        return self.scrape_registry().collect()


class _Tally:
    """Requests of one (route, cache result) since the last flush."""

    __slots__ = ("buckets", "count", "seconds")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)

    def reset(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
