"""The per-route report behind ``GET /stats`` and ``sidecache report``: figures and advice.

Everything is computed from the metrics (so ``--workers N`` reports all workers) and the
running policy, with no I/O: ``build_stats`` turns metric families into a JSON-ready
dict, ``advise`` applies the rules a person can act on, and ``render`` draws the dict
as a terminal table. Thresholds are constants here, named after the rule they drive.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Final

from prometheus_client.metrics_core import Metric

from proxy.policy.load import LoadedPolicy, RouteConfig, TieredBackend
from proxy.units import format_duration, format_size

LOW_RATIO: Final = 0.10  # "caching here costs more than it saves" below this hit ratio...
LOW_RATIO_MIN: Final = 100  # ...over at least this many cacheable requests
NEVER_HIT_MIN: Final = 20  # cacheable requests with no hit before "never hit"
EXPIRED_SHARE: Final = 0.5  # repeat requests arriving after expiry, as a share...
EXPIRED_MIN: Final = 10  # ...of at least this many repeat requests
NEAR_LIMIT: Final = 0.8  # largest object as a share of max_object_size
STALE_SHARE: Final = 0.2  # stale answers among cached answers...
STALE_MIN: Final = 20  # ...of at least this many
# what a full backend needs, by type: more memory, or leave to it which entries go
FULL_STORE_FIX: Final = {
    "redis": "raise maxmemory, or set maxmemory-policy to allkeys-lru or volatile-lru "
    "(every key sidecache writes has a TTL)",
    "memcached": "give memcached more memory (-m), or run it without -M so it evicts",
}
UNUSED_AFTER: Final = 600.0  # "unused" only after this many seconds of uptime...
UNUSED_AFTER_REQUESTS: Final = 1000  # ...or once this many requests reached other routes
BREAKER_NAMES: Final = {0.0: "closed", 1.0: "half_open", 2.0: "open"}

Samples = dict[str, list[tuple[dict[str, str], float]]]


def _index(families: Iterable[Metric]) -> Samples:
    out: Samples = defaultdict(list)
    for family in families:
        for sample in family.samples:
            out[sample.name].append((sample.labels, sample.value))
    return out


def _sum(samples: Samples, name: str, **match: str) -> float:
    return sum(
        value
        for labels, value in samples.get(name, ())
        if all(labels.get(k) == v for k, v in match.items())
    )


def _max(samples: Samples, name: str, **match: str) -> float:
    found = [
        value
        for labels, value in samples.get(name, ())
        if all(labels.get(k) == v for k, v in match.items())
    ]
    return max(found, default=0.0)


def _route_figures(samples: Samples, route: str, config: RouteConfig | None) -> dict[str, Any]:
    def count(name: str, **match: str) -> int:
        return int(_sum(samples, name, route=route, **match))

    hits, stale = (
        count("sidecache_requests_total", cache="HIT"),
        count("sidecache_requests_total", cache="STALE"),
    )
    misses = count("sidecache_requests_total", cache="MISS")
    bypass = count("sidecache_requests_total", cache="BYPASS")
    lookups = hits + stale + misses
    stored = count("sidecache_stored_objects_total")
    stored_bytes = count("sidecache_stored_bytes_total")
    fetches = count("sidecache_origin_duration_seconds_count")
    origin_seconds = _sum(samples, "sidecache_origin_duration_seconds_sum", route=route)
    origin_mean = origin_seconds / fetches if fetches else None
    expired = count("sidecache_rerequests_total", window="after_ttl")
    gap_count = count("sidecache_rerequest_gap_seconds_count")
    gap_sum = _sum(samples, "sidecache_rerequest_gap_seconds_sum", route=route)
    lifetimes = count("sidecache_stored_lifetime_seconds_count")
    lifetime_sum = _sum(samples, "sidecache_stored_lifetime_seconds_sum", route=route)
    return {
        "route": route,
        "in_policy": config is not None,
        "cache": config.cache if config else None,
        "backend": config.backend if config else None,
        "ttl_seconds": config.ttl if config else None,
        # what entries actually got (the origin's max-age, a status TTL, ...): the mean
        "stored_ttl_mean_seconds": round(lifetime_sum / lifetimes, 1) if lifetimes else None,
        "max_object_size": config.max_object_size if config else None,
        "requests": hits + stale + misses + bypass,
        "hits": hits,
        "stale": stale,
        "misses": misses,
        "bypass": bypass,
        "hit_ratio": round(hits / lookups, 4) if lookups else None,
        "stored_objects": stored,
        "stored_bytes": stored_bytes,
        "mean_object_bytes": stored_bytes // stored if stored else None,
        "largest_object_bytes": int(_max(samples, "sidecache_object_max_bytes", route=route)),
        "too_large": count("sidecache_uncached_responses_total", reason="size"),
        "not_stored": {
            labels["reason"]: int(value)
            for labels, value in samples.get("sidecache_uncached_responses_total", ())
            if labels.get("route") == route and value
        },
        "coalesced": count("sidecache_coalesced_requests_total"),
        "origin_fetches": fetches,
        "origin_mean_seconds": round(origin_mean, 6) if origin_mean is not None else None,
        "origin_time_saved_seconds": (
            round((hits + stale) * origin_mean, 3) if origin_mean is not None else None
        ),
        "repeat_within_ttl": count("sidecache_rerequests_total", window="within_ttl"),
        "repeat_after_ttl": expired,
        "repeat_gap_mean_seconds": round(gap_sum / gap_count, 3) if gap_count else None,
    }


def build_stats(families: Iterable[Metric], loaded: LoadedPolicy, now: float) -> dict[str, Any]:
    """The ``/stats`` document: per-route figures, per-backend figures, advice."""
    samples = _index(families)
    configs = {route.name: route for route in loaded.routes}
    names = list(configs)
    for labels, _ in samples.get("sidecache_requests_total", ()):
        if labels["route"] not in configs and labels["route"] not in names:
            names.append(labels["route"])  # removed by a reload, still has figures
    routes = [_route_figures(samples, name, configs.get(name)) for name in names]
    started = _max(samples, "sidecache_start_time_seconds") or now
    backends = [
        _backend_figures(samples, name, b.type, b.l2 if isinstance(b, TieredBackend) else name)
        for name, b in loaded.policy.backends.items()
    ]
    stats: dict[str, Any] = {
        "uptime_seconds": round(max(now - started, 0.0), 1),
        "policy": {"path": loaded.path, "digest": loaded.digest},
        "routes": routes,
        "backends": backends,
    }
    stats["advice"] = advise(routes, stats["uptime_seconds"]) + advise_backends(backends)
    return stats


def _backend_figures(samples: Samples, name: str, kind: str, guarded: str) -> dict[str, Any]:
    """One backend: memory stores' own counts, or a shared store's server figures
    (``sidecache_backend_*``, read from Redis ``INFO`` / Memcached ``stats``). The breaker
    and write refusals are ``guarded``'s: a tiered store's are its L2's (as in ``/readyz``);
    a memory store has no breaker (``n/a``)."""

    def value(metric: str, **match: str) -> int:
        return int(_sum(samples, metric, backend=name, **match))

    state = _max(samples, "sidecache_breaker_state", backend=guarded)
    out: dict[str, Any] = {
        "backend": name,
        "type": kind,
        "breaker": "n/a" if kind == "memory" else BREAKER_NAMES.get(state),
        "write_refusals": int(
            _sum(samples, "sidecache_store_errors_total", backend=guarded, reason="oom")
        ),
    }
    if kind == "memory":
        out["entries"] = value("sidecache_store_entries")
        out["bytes"] = value("sidecache_store_bytes")
        out["evictions"] = value("sidecache_store_evictions_total")
    elif kind in ("redis", "memcached"):
        read = any(
            labels.get("backend") == name for labels, _ in samples.get("sidecache_backend_up", ())
        )
        up = value("sidecache_backend_up") == 1 if read else None
        out["up"] = up
        if up:
            out["entries"] = value("sidecache_backend_items")
            out["bytes"] = value("sidecache_backend_memory_bytes")
            out["memory_limit_bytes"] = value("sidecache_backend_memory_limit_bytes")
            out["evictions"] = value("sidecache_backend_evictions_total")
            out["hits"] = value("sidecache_backend_hits_total")
            out["misses"] = value("sidecache_backend_misses_total")
            out["connections"] = value("sidecache_backend_connections")
    return out


def advise_backends(backends: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Findings about the stores themselves (a full store, one that cannot be read)."""
    out: list[dict[str, str]] = []
    for b in backends:
        name = b["backend"]
        if b.get("write_refusals"):
            out.append(
                {
                    "backend": name,
                    "rule": "store-full",
                    "advice": f"{b['write_refusals']} writes were refused for lack of memory: "
                    "new responses are not being cached; "
                    + FULL_STORE_FIX.get(b["type"], "give the store more memory"),
                }
            )
        if b.get("up") is False:
            out.append(
                {
                    "backend": name,
                    "rule": "backend-down",
                    "advice": f"the {b['type']} server(s) did not answer the last read of "
                    "their figures",
                }
            )
    return out


def advise(routes: list[dict[str, Any]], uptime: float) -> list[dict[str, str]]:
    """Findings a person can act on, one rule at a time, per route."""
    out: list[dict[str, str]] = []

    def add(route: str, rule: str, message: str) -> None:
        out.append({"route": route, "rule": rule, "advice": message})

    # a route is "unused" only once it had its chance: minutes of uptime, or traffic
    served = sum(r["requests"] for r in routes)
    judged = uptime >= UNUSED_AFTER or served >= UNUSED_AFTER_REQUESTS
    for r in routes:
        name = r["route"]
        if not r["in_policy"] or r["cache"] is False:
            continue
        lookups = r["hits"] + r["stale"] + r["misses"]
        if r["requests"] == 0 and name != "default":
            if not judged:
                continue
            add(
                name,
                "unused",
                f"no request matched this route in {format_duration(max(round(uptime), 1))} "
                f"({served} requests to other routes): check its match, or remove it",
            )
        elif lookups >= NEVER_HIT_MIN and r["hits"] + r["stale"] == 0:
            add(name, "never-hit", f"0 hits in {lookups} cacheable requests: {_why(r)}")
        elif lookups >= LOW_RATIO_MIN and r["hit_ratio"] < LOW_RATIO:
            add(
                name,
                "low-hit-ratio",
                f"hit ratio {r['hit_ratio']:.0%} over {lookups} requests: caching here "
                f"costs more than it saves ({_why(r)}); consider cache: false",
            )
        _advise_ttl(r, add)
        _advise_size(r, add)
        cached = r["hits"] + r["stale"]
        if r["stale"] >= STALE_MIN and r["stale"] / cached >= STALE_SHARE:
            add(
                name,
                "stale-share",
                f"{r['stale'] / cached:.0%} of cached answers were stale: the origin may be "
                "failing or slow, and stale serving hides it",
            )
    return out


def _why(r: dict[str, Any]) -> str:
    if r["not_stored"]:
        reason, count = max(r["not_stored"].items(), key=lambda item: item[1])
        return f"{count} responses were not stored ({reason})"
    if r["stored_objects"] and r["repeat_within_ttl"] == 0:
        return "no key was requested twice while fresh (check key.query / key.headers)"
    return "entries are gone before they are asked for again"


def _advise_ttl(r: dict[str, Any], add: Any) -> None:
    within, after = r["repeat_within_ttl"], r["repeat_after_ttl"]
    if after >= EXPIRED_MIN and after / (within + after) >= EXPIRED_SHARE:
        gap = r["repeat_gap_mean_seconds"] or 0.0
        got = r.get("stored_ttl_mean_seconds") or r["ttl_seconds"]
        ttl = format_duration(round(got, 1)) if got else "the origin's"
        add(
            r["route"],
            "ttl-too-short",
            f"{after} of {within + after} repeat requests came after the entry expired "
            f"(mean gap {format_duration(round(gap, 1))}, TTL {ttl}): a TTL of about "
            f"{format_duration(round(gap))} would turn them into hits",
        )


def _advise_size(r: dict[str, Any], add: Any) -> None:
    limit = r["max_object_size"]
    if not limit:
        return
    if r["too_large"]:
        add(
            r["route"],
            "over-size-limit",
            f"{r['too_large']} responses exceeded max_object_size ({format_size(limit)}) "
            "and streamed through unstored",
        )
    elif r["largest_object_bytes"] >= NEAR_LIMIT * limit:
        add(
            r["route"],
            "near-size-limit",
            f"largest stored object is {format_size(r['largest_object_bytes'])}, within "
            f"{1 - NEAR_LIMIT:.0%} of max_object_size ({format_size(limit)})",
        )


# ---------------------------------------------------------------- terminal table


COLUMNS: Final = (
    ("route", "route"),
    ("requests", "requests"),
    ("hit %", "hit_ratio"),
    ("stale", "stale"),
    ("stored", "stored_objects"),
    ("bytes", "stored_bytes"),
    ("mean size", "mean_object_bytes"),
    ("ttl got", "stored_ttl_mean_seconds"),
    ("origin saved", "origin_time_saved_seconds"),
)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "hit_ratio":
        return f"{value:.1%}"
    if key in ("stored_bytes", "mean_object_bytes"):
        return format_size(int(value))
    if key == "origin_time_saved_seconds":
        return format_duration(round(value, 3)) if value else "0s"
    if key == "stored_ttl_mean_seconds":
        return format_duration(round(value))
    return str(value)


def render(stats: dict[str, Any]) -> str:
    """The ``/stats`` document as a table for a terminal, advice underneath."""
    rows = [[title for title, _ in COLUMNS]]
    for r in stats["routes"]:
        rows.append([_cell(key, r.get(key)) for _, key in COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        f"sidecache report: policy {stats['policy']['path']} ({stats['policy']['digest']}), "
        f"up {format_duration(round(stats['uptime_seconds']))}",
        "",
    ]
    for index, row in enumerate(rows):
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    backends = stats.get("backends", [])
    if backends:
        lines.append("")
        lines.extend(_backend_line(b) for b in backends)
    lines.append("")
    if not stats["advice"]:
        lines.append("advice: nothing to report")
    for item in stats["advice"]:
        subject = item.get("route") or f"backend {item.get('backend')}"
        lines.append(f"! {subject} [{item['rule']}]: {item['advice']}")
    return "\n".join(lines) + "\n"


def _backend_line(b: dict[str, Any]) -> str:
    head = f"backend {b['backend']} ({b['type']}): "
    breaker = f"breaker {b.get('breaker') or 'n/a'}"
    if b.get("up") is False:
        return head + f"figures unavailable (server not answering), {breaker}"
    if "entries" not in b:
        return head + breaker
    # a server counts its keys (entries and index keys alike), a memory store its entries
    noun = {"redis": "keys", "memcached": "items"}.get(b["type"], "entries")
    parts = [f"{b['entries']} {noun}", format_size(b["bytes"])]
    limit = b.get("memory_limit_bytes")
    if limit is not None:
        parts[-1] += f" of {format_size(limit)}" if limit else " (no memory limit)"
    parts.append(f"{b['evictions']} evictions")
    lookups = b.get("hits", 0) + b.get("misses", 0)
    if "hits" in b:
        parts.append(f"server hit ratio {b['hits'] / lookups:.1%}" if lookups else "no lookups")
    if "connections" in b:
        parts.append(f"{b['connections']} connections")
    if b.get("write_refusals"):
        parts.append(f"{b['write_refusals']} writes refused (full)")
    return head + ", ".join(parts) + f", {breaker}"
