"""What the proxy would do with one request: ``sidecache explain`` and ``GET /explain``.

``explain`` runs the engine's own steps on a request without sending it anywhere: the
router's match, ``derive_key`` (the exact string a store is written under), the same
bypass checks in the same order as ``decide.classify``, and the route's TTL and stale
windows. ``inspect`` then reads what a store holds under that key now (the only await).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from proxy.core import decide
from proxy.core.admission import entry_tags
from proxy.core.decide import CACHEABLE_METHODS
from proxy.core.entry import EntryError, VaryMarker, decode
from proxy.core.exchange import Exchange
from proxy.core.freshness import (
    SAFE_METHODS,
    VALIDATION_KEEP,
    passed_through,
    request_cache_control,
)
from proxy.core.keys import (
    _cookie,
    derive_key,
    normalize_host,
    normalize_path,
    normalize_query,
    variant_key,
    variant_of,
)
from proxy.core.routing import Route, Router
from proxy.errors import StoreError
from proxy.policy.load import DEFAULT_ROUTE, LoadedPolicy, RouteConfig
from proxy.stores.base import Store
from proxy.units import format_size

STORED: Final = "stored"  # the origin's answer is written (if it allows: see ``conditions``)
BYPASSED: Final = "bypassed"  # forwarded untouched, never looked up nor stored
REFUSED: Final = "refused"  # the proxy answers 400 itself


class RequestError(ValueError):
    """The URL or a header given to explain cannot be a request the proxy accepts."""


@dataclass(slots=True)
class Explanation:
    """Everything ``explain`` finds out; ``as_json`` is the ``--json`` and /explain body."""

    method: str
    url: str
    host: str
    path: str
    query: str
    headers: dict[str, str]
    route: str
    params: dict[str, str] = field(default_factory=dict)
    match: dict[str, object] = field(default_factory=dict)
    also_matched: list[str] = field(default_factory=list)
    near_misses: list[dict[str, str]] = field(default_factory=list)
    decision: str = STORED
    reason: str = ""
    conditions: list[str] = field(default_factory=list)
    key: dict[str, object] | None = None
    store_key: str | None = None
    backend: str | None = None
    ttl: dict[str, object] | None = None
    index_tags: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "request": {
                "method": self.method,
                "url": self.url,
                "host": self.host,
                "path": self.path,
                "query": self.query,
                "headers": self.headers,
            },
            "route": self.route,
            "params": self.params,
            "match": self.match,
            "also_matched": self.also_matched,
            "near_misses": self.near_misses,
            "decision": self.decision,
            "reason": self.reason,
            "conditions": self.conditions,
            "key": self.key,
            "store_key": self.store_key,
            "backend": self.backend,
            "ttl": self.ttl,
            "index_tags": self.index_tags,
        }


def parse_header(line: str) -> tuple[str, str]:
    """``'Name: value'`` → ``("Name", "value")``."""
    name, sep, value = line.partition(":")
    if not sep or not name.strip() or name != name.strip():
        raise RequestError(f"header {line!r}: expected 'Name: value'")
    return name, value.strip()


def build_exchange(method: str, url: str, headers: Sequence[tuple[str, str]]) -> Exchange:
    """The request as the proxy port would hand it to the engine (host lowercased, path
    normalized as ``http1`` does; a ``Host`` header wins over a bare path's nothing)."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed [ of an IPv6 address
        raise RequestError(f"{url}: not a valid URL: {exc}") from None
    if parts.scheme and parts.scheme not in ("http", "https"):
        raise RequestError(f"{url}: only http:// and https:// URLs (or a bare /path)")
    if not (parts.path or "/").startswith("/"):
        raise RequestError(f"{url}: give an absolute URL (http://HOST/path) or a /path")
    hmap = {name.lower(): value for name, value in headers}
    host = (parts.netloc or hmap.get("host", "")).strip().lower()
    if not host:
        raise RequestError(f"{url}: no host: give http://HOST/path or -H 'Host: HOST'")
    listed = [(n, v) for n, v in headers if n.lower() != "host"]
    return Exchange.build(
        method.upper(), parts.path or "/", parts.query, (("Host", host), *listed), host=host
    )


def explain(
    loaded: LoadedPolicy, method: str, url: str, headers: Sequence[str] = ()
) -> Explanation:
    """What the proxy would do with ``method url`` and these ``Name: value`` headers."""
    ex = build_exchange(method, url, [parse_header(h) for h in headers])
    router = Router(loaded.routes)
    hostname = decide.hostname(ex.host)
    try:
        path = normalize_path(ex.path)
    except ValueError as exc:
        return _base(ex, url, router.default.config, {}, REFUSED, f"400: {exc}")
    ex = Exchange.build(ex.method, path, ex.query, ex.headers, host=ex.host)
    route, params = router.match(ex.method, hostname, path)
    also, near = _others(router, route, ex.method, hostname, path)
    base = _base(ex, url, route.config, params, STORED, "")
    base.also_matched.extend(also)
    base.near_misses.extend(near)
    base.match.update(_describe_match(route))
    return _decide(base, ex, route.config, params)


def _base(
    ex: Exchange,
    url: str,
    cfg: RouteConfig,
    params: dict[str, str],
    decision: str,
    reason: str,
) -> Explanation:
    shown = {name: value for name, value in ex.headers if name.lower() != "host"}
    return Explanation(
        ex.method,
        url,
        ex.host,
        ex.path,
        ex.query,
        shown,
        cfg.name,
        dict(params),
        decision=decision,
        reason=reason,
    )


def _describe_match(route: Route) -> dict[str, object]:
    match = route.config.match
    if route.name == DEFAULT_ROUTE:
        return {"kind": "none", "note": "no route matched: the defaults apply"}
    kind, pattern = "any", None
    for name in ("path", "prefix", "regex"):
        if (value := getattr(match, name)) is not None:
            kind, pattern = name, value
    return {"kind": kind, "pattern": pattern, "methods": list(match.methods), "host": match.host}


def _others(
    router: Router, winner: Route, method: str, hostname: str, path: str
) -> tuple[list[str], list[dict[str, str]]]:
    """The later routes that would also have matched (shadowed for this request), and
    the routes whose path matched but not the method or host. Each is asked through a
    router of its own, so matching is the router's, never a copy of it."""
    also: list[str] = []
    near: list[dict[str, str]] = []
    later = False
    for route in router.routes:
        if route is winner:
            later = True
            continue
        alone = Router([route.config, router.default.config])
        if alone.match(method, hostname, path)[0].name == route.name:
            if later:
                also.append(route.name)
            continue
        for why, probe in (
            ("method", (next(iter(route.methods), method), hostname)),
            ("host", (method, route.host or hostname)),
        ):
            if alone.match(probe[0], probe[1], path)[0].name == route.name:
                wanted = ", ".join(sorted(route.methods)) if why == "method" else route.host
                near.append({"route": route.name, "differs": why, "route_wants": str(wanted)})
                break
    return also, near


def _decide(
    out: Explanation, ex: Exchange, cfg: RouteConfig, params: dict[str, str]
) -> Explanation:
    """``decide.classify``'s checks, in its order, in words."""
    if ex.method == "PURGE":
        return _with(out, BYPASSED, "PURGE is a purge of this URL (admin.purge_from only)")
    if not cfg.cache:
        return _with(out, BYPASSED, f"route {cfg.name} has cache: false")
    if ex.method in SAFE_METHODS and ex.method not in CACHEABLE_METHODS:
        return _with(out, BYPASSED, f"{ex.method} is not cacheable (only GET and HEAD)")
    if ex.method not in CACHEABLE_METHODS:
        targets = ["its own path", "Location / Content-Location", *cfg.invalidates]
        return _with(
            out,
            BYPASSED,
            f"{ex.method} is not cacheable (only GET and HEAD); a 2xx/3xx answer purges "
            + ", ".join(targets),
        )
    if ex.hmap.get("content-length", "0") != "0" or "transfer-encoding" in ex.hmap:
        return _with(out, BYPASSED, "a GET with a body (fat GET) is never keyed")
    if (untouched := passed_through(ex.hmap)) is not None:
        return _with(out, BYPASSED, f"{untouched} requests go to the origin untouched")
    identity = decide.identity(ex.hmap, cfg.key.cookies) if cfg.cache_authorized else ""
    key = derive_key(cfg.name, ex.host, ex.path, ex.query, cfg.key, ex.hmap, identity)
    out.store_key = key
    out.backend = cfg.backend
    out.key = _key_parts(ex, cfg, identity)
    out.ttl = _ttl(cfg)
    out.index_tags.extend(entry_tags(cfg, ex.path, params))
    out.conditions.extend(_conditions(ex, cfg))
    out.reason = (
        f"looked up in backend {cfg.backend}; a miss is fetched and stored "
        "if the origin's answer allows it (conditions below)"
    )
    if request_cache_control(cfg, ex.hmap).has("no-store"):
        out.conditions.insert(0, "the request's Cache-Control: no-store: nothing is stored")
    return out


def _with(out: Explanation, decision: str, reason: str) -> Explanation:
    out.decision, out.reason = decision, reason
    return out


def _key_parts(ex: Exchange, cfg: RouteConfig, identity: str) -> dict[str, object]:
    spec = cfg.key
    return {
        "method_class": "GET/HEAD",
        "host": normalize_host(ex.host) if spec.host else None,
        "path": ex.path,
        "query": normalize_query(ex.query, spec),
        "query_rule": spec.query if isinstance(spec.query, str | list) else spec.query.model_dump(),
        "headers": {name: ex.hmap.get(name.lower(), "") for name in spec.headers},
        "cookies": {name: _cookie(ex.hmap, name) for name in spec.cookies},
        "identity": "per credentials (cache_authorized)" if identity else None,
    }


def _ttl(cfg: RouteConfig) -> dict[str, object]:
    if cfg.origin_cache_control == "ignore":
        source = "the route's ttl (origin Cache-Control ignored)"
    else:
        fallback = f"the route's ttl {cfg.ttl:g}s" if cfg.ttl is not None else "a heuristic"
        source = f"the origin's s-maxage / max-age / Expires, else {fallback}"
    return {
        "freshness": source,
        "ttl": cfg.ttl,
        "max_ttl": cfg.max_ttl,
        "status_ttls": {str(k): v for k, v in cfg.status_ttls.items()},
        "stale_while_revalidate": cfg.stale_while_revalidate,
        "stale_if_error": cfg.stale_if_error,
        "kept_after_freshness": max(cfg.stale_while_revalidate, cfg.stale_if_error)
        or f"up to {VALIDATION_KEEP:g}s to revalidate",
    }


def _conditions(ex: Exchange, cfg: RouteConfig) -> list[str]:
    notes = []
    if "authorization" in ex.hmap and not cfg.cache_authorized:
        notes.append(
            "Authorization without the route's cache_authorized: stored or served from cache "
            "only when the origin's answer says public, s-maxage or must-revalidate"
        )
    if "range" in ex.hmap:
        notes.append(
            "Range: one bytes range is answered 206 from the stored whole response (a miss "
            "fetches it whole, without Range); several ranges get the whole 200"
        )
    notes.append(f"answers over {format_size(cfg.max_object_size)} stream through unstored")
    if cfg.statuses:
        notes.append("only statuses " + ", ".join(map(str, cfg.statuses)))
    if not cfg.strip_set_cookie:
        notes.append("an answer with Set-Cookie is not stored")
    return notes


# ---------------------------------------------------------------- what a store holds


async def inspect(store: Store, key: str, hmap: Mapping[str, str], backend: str) -> dict[str, Any]:
    """What ``store`` holds under ``key`` now, as a request with ``hmap`` would select it
    (a Vary marker leads to the variant these headers pick)."""
    try:
        raw = await store.get(key)
        stored_key = key
        value = decode(raw) if raw is not None else None
        if isinstance(value, VaryMarker):
            stored_key = variant_key(key, variant_of(value.fields, hmap))
            raw = await store.get(stored_key)
            value = decode(raw) if raw is not None else None
    except StoreError as exc:
        return {"backend": backend, "held": None, "error": str(exc)}
    except EntryError as exc:
        return {"backend": backend, "held": None, "error": f"not a sidecache entry: {exc}"}
    if value is None or isinstance(value, VaryMarker) or raw is None:
        return {"backend": backend, "held": False}
    now = time.time()
    age = value.age(now)
    return {
        "backend": backend,
        "held": True,
        "stored_key": stored_key,
        "status": value.status,
        "age": round(age, 3),
        "ttl_left": round(value.lifetime - age, 3),
        "lifetime": value.lifetime,
        "stale_while_revalidate": value.stale_while_revalidate,
        "stale_if_error": value.stale_if_error,
        "size": len(raw),
        "body_bytes": len(value.body),
        "tags": list(value.tags),
    }


# ---------------------------------------------------------------- text


def render(found: Mapping[str, Any]) -> str:
    """The human-readable form of ``as_json()`` (and of /explain's ``held`` part)."""
    request = found["request"]
    lines = [f"{request['method']} {request['url']}  (host {request['host']})"]
    lines += _render_route(found)
    lines.append(f"decision:   {found['decision']}: {found['reason']}")
    if found["key"] is not None:
        lines += _render_key(found)
    if found["ttl"] is not None:
        lines += _render_ttl(found["ttl"])
    for note in found["conditions"]:
        lines.append(f"condition:  {note}")
    if found["index_tags"]:
        lines.append("tags:       " + " ".join(found["index_tags"]))
    if (held := found.get("now")) is not None:
        lines.append(_render_held(held))
    return "\n".join(lines) + "\n"


def _render_route(found: Mapping[str, Any]) -> list[str]:
    lines = []
    match = found["match"]
    if match.get("kind") == "none":
        lines.append(f"route:      {found['route']}  ({match['note']})")
    elif match:
        how = f"{match['kind']} {match['pattern']!r}" if match["pattern"] else "any path"
        lines.append(
            f"route:      {found['route']}  ({how}, methods {', '.join(match['methods'])}"
            + (f", host {match['host']}" if match["host"] else "")
            + ")"
        )
    else:
        lines.append(f"route:      {found['route']}")
    if found["params"]:
        lines.append("params:     " + ", ".join(f"{k}={v}" for k, v in found["params"].items()))
    if found["also_matched"]:
        lines.append(
            "shadowed:   "
            + ", ".join(found["also_matched"])
            + " would also match (later in the policy: never reached for this request)"
        )
    for near in found["near_misses"]:
        lines.append(
            f"not taken:  {near['route']}: path matches, {near['differs']} "
            f"is not {near['route_wants']}"
        )
    return lines


def _render_key(found: Mapping[str, Any]) -> list[str]:
    key = found["key"]
    lines = [
        f"store key:  {found['store_key']}  (backend {found['backend']})",
        f"key parts:  {key['method_class']}, "
        + (f"host {key['host']}" if key["host"] is not None else "any host (key.host: false)")
        + f", path {key['path']}, "
        f"query {key['query']!r} ({_rule(key['query_rule'])})",
    ]
    for kind in ("headers", "cookies"):
        for name, value in key[kind].items():
            lines.append(f"            {kind[:-1]} {name}: {value!r}")
    if key["identity"]:
        lines.append(f"            identity: {key['identity']}")
    return lines


def _render_ttl(ttl: Mapping[str, Any]) -> list[str]:
    lines = [
        f"freshness:  {ttl['freshness']}"
        + (f", capped at max_ttl {ttl['max_ttl']:g}s" if ttl["max_ttl"] else "")
    ]
    for status, seconds in ttl["status_ttls"].items():
        lines.append(f"            status {status}: {seconds:g}s")
    lines.append(
        f"stale:      stale_while_revalidate {ttl['stale_while_revalidate']:g}s, "
        f"stale_if_error {ttl['stale_if_error']:g}s"
    )
    return lines


def _rule(rule: object) -> str:
    if isinstance(rule, list):
        return "only " + ", ".join(rule)
    if isinstance(rule, dict):
        return "all but " + ", ".join(rule.get("exclude", []))
    return str(rule)


def _render_held(held: Mapping[str, Any]) -> str:
    if held.get("error"):
        return f"now:        {held['error']}"
    if not held.get("held"):
        return f"now:        nothing held (backend {held['backend']})"
    return (
        f"now:        held in {held['backend']}: status {held['status']}, Age {held['age']:.0f}s, "
        f"TTL left {held['ttl_left']:.0f}s, {held['size']} bytes stored, "
        f"tags {' '.join(held['tags']) or '-'}"
    )
