"""Prometheus metrics: every name and label set, and the ``Meter`` the proxy updates.

Names follow ``sidecache_<noun>_<unit>``; labels are bounded (route and backend names,
cache results, status classes), never paths or keys. Per-request figures are tallied
in plain integers (well under a microsecond) and moved into prometheus by ``flush``:
on every scrape and once a second. No awaits here. With ``--workers N`` the supervisor calls
``enable_multiprocess`` before forking: values then live in per-process mmap files
and a scrape of any worker sums them (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import glob
import os
import time
from bisect import bisect_left
from collections.abc import Iterable
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
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


def enable_multiprocess(path: str) -> None:
    """Keep metric values in mmap files under ``path`` (call before any ``Meter`` exists).

    prometheus-client picks its value class when it is imported, which the CLI has
    done long before it knows about ``--workers``; switching the class here is what its
    environment variable would have done at import time.
    """
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.remove(stale)  # files of an earlier run would be summed in
    os.environ[MULTIPROC_ENV] = path
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def is_multiprocess() -> bool:
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def forget_process(pid: int) -> None:
    """A worker died: drop its live gauges (its counters still count)."""
    if is_multiprocess():
        mark_process_dead(pid)  # type: ignore[no-untyped-call]


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else "other"


class Meter:
    """The proxy's metrics in one registry (one ``Meter`` per worker process)."""

    def __init__(self) -> None:
        # no *_created series: noise, and absent in multiprocess mode anyway
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "sidecache_requests",
            "requests by route and cache result (the X-Cache label)",
            ["route", "cache"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "sidecache_request_duration_seconds",
            "time until the response starts (bodies stream after)",
            ["route", "cache"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.origin_seconds = Histogram(
            "sidecache_origin_duration_seconds",
            "origin fetches for the cache, until response headers",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.origin_responses = Counter(
            "sidecache_origin_responses",
            "origin answers by status class (timeout, unreachable: no answer)",
            ["route", "status"],
            registry=r,
        )
        self.stored = Counter(
            "sidecache_stored_objects", "responses written to a store", ["route"], registry=r
        )
        self.stored_bytes = Counter(
            "sidecache_stored_bytes", "bytes of responses written to a store", ["route"], registry=r
        )
        self.largest = Gauge(
            "sidecache_object_max_bytes",
            "largest response stored",
            ["route"],
            multiprocess_mode="max",
            registry=r,
        )
        self.uncached = Counter(
            "sidecache_uncached_responses",
            "cacheable requests whose response was not stored, by reason",
            ["route", "reason"],
            registry=r,
        )
        self.coalesced = Counter(
            "sidecache_coalesced_requests",
            "followers answered by another request's origin fetch",
            ["route"],
            registry=r,
        )
        self.stale = Counter(
            "sidecache_stale_served",
            "stale answers: revalidate (SWR), error (SIE), client (max-stale)",
            ["route", "reason"],
            registry=r,
        )
        self.rerequests = Counter(
            "sidecache_rerequests",
            "repeat requests for a key this worker stored: within its TTL or after it",
            ["route", "window"],
            registry=r,
        )
        self.stored_lifetime = Histogram(
            "sidecache_stored_lifetime_seconds",
            "freshness lifetime stored responses got (the origin's or the route's TTL)",
            ["route"],
            buckets=GAP_BUCKETS,
            registry=r,
        )
        self.rerequest_gap = Histogram(
            "sidecache_rerequest_gap_seconds",
            "time from store to a repeat request that found the entry expired",
            ["route"],
            buckets=GAP_BUCKETS,
            registry=r,
        )
        self.store_ops = Counter(
            "sidecache_store_operations",
            "operations on shared stores",
            ["backend", "op"],
            registry=r,
        )
        self.store_errors = Counter(
            "sidecache_store_errors",
            "failed store operations by reason: errors, timeouts, rejected (breaker open), "
            "oom (the backend refused a write for lack of memory)",
            ["backend", "op", "reason"],
            registry=r,
        )
        self.store_seconds = Histogram(
            "sidecache_store_duration_seconds",
            "store lookups and writes on the request path (shared stores)",
            ["backend", "op"],
            buckets=STORE_BUCKETS,
            registry=r,
        )
        self.breaker = Gauge(
            "sidecache_breaker_state",
            "circuit breaker: 0 closed, 1 half-open, 2 open (worst worker)",
            ["backend"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.breaker_opens = Counter(
            "sidecache_breaker_opens", "times a breaker opened", ["backend"], registry=r
        )
        self.entries = Gauge(
            "sidecache_store_entries",
            "entries in process-local memory stores (all workers)",
            ["backend"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.bytes = Gauge(
            "sidecache_store_bytes",
            "bytes held by process-local memory stores (all workers)",
            ["backend"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.evictions = Counter(
            "sidecache_store_evictions", "entries evicted for room", ["backend"], registry=r
        )
        self.purges = Counter(
            "sidecache_purges", "purge requests handled, by source", ["source"], registry=r
        )
        self.purged = Counter(
            "sidecache_purged_entries",
            "entries removed by purges (stores that cannot count add nothing)",
            ["source"],
            registry=r,
        )
        self.messages = Counter(
            "sidecache_invalidation_messages",
            "purge messages between workers and replicas",
            ["transport", "direction"],
            registry=r,
        )
        self.message_errors = Counter(
            "sidecache_invalidation_errors",
            "purge messages that could not be sent or read",
            ["transport"],
            registry=r,
        )
        self.subscribed = Gauge(
            "sidecache_invalidation_subscribers",
            "workers subscribed to the invalidation channel",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.reloads = Counter(
            "sidecache_policy_reloads",
            "policy reloads by result (one per worker)",
            ["result"],
            registry=r,
        )
        self.started = Gauge(
            "sidecache_start_time_seconds",
            "when the oldest live worker started",
            multiprocess_mode="livemin",
            registry=r,
        )
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
            histogram = self.request_seconds.labels(route, cache)
            # prometheus-client has no public "add n observations": its per-bucket values
            # (not cumulative, +Inf last) and sum are what ``observe`` increments.
            histogram._sum.inc(tally.seconds)
            for index, count in enumerate(tally.buckets):
                if count:
                    histogram._buckets[index].inc(count)
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
        if not is_multiprocess():
            return self.registry
        merged = CollectorRegistry()
        MultiProcessCollector(merged, os.environ[MULTIPROC_ENV])  # type: ignore[no-untyped-call]
        return merged

    def exposition(self) -> bytes:
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
