"""How an origin answer becomes a stored entry: the ``CachedResponse`` (stored fields,
our gzip encoding, freshness facts, the Vary selection), the tags it is indexed under,
and the validators a stale copy is revalidated with. Pure: no store, no origin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from proxy.core.cachecontrol import parse_field_list, parse_vary
from proxy.core.entry import CachedResponse, compress
from proxy.core.freshness import StoreDecision, initial_age, transform_forbidden
from proxy.core.keys import path_tags, route_tag, user_tag, variant_of
from proxy.core.storedfields import first_header, header_values, storable_headers
from proxy.policy.load import RouteConfig

_COMPRESSIBLE: Final = ("text/", "json", "xml", "javascript", "ecmascript", "svg", "csv", "yaml")
MAX_ORIGIN_TAGS: Final = 64


def make_entry(
    cfg: RouteConfig,
    request: Mapping[str, str],
    status: int,
    fields: Sequence[tuple[str, str]],
    body: bytes,
    decision: StoreDecision,
    request_time: float,
    response_time: float,
) -> CachedResponse:
    """The entry to store for an origin answer ``decide_storage`` admitted (RFC 9111
    §3.1 fields, §4.2.3 ages, §4.1 the selecting request fields)."""
    headers = storable_headers(fields, decision.strip, response_time)
    encoding: str | None = None
    stored_body = body
    compression = cfg.compression
    if (
        compression.algorithm == "gzip"
        and len(body) >= compression.min_size
        and first_header(headers, "Content-Encoding") is None
        and compressible(first_header(headers, "Content-Type"))
        and not transform_forbidden(headers)
    ):
        stored_body = compress(body, compression.level)
        encoding = "gzip"
    vary = parse_vary(header_values(headers, "Vary"))
    return CachedResponse(
        status=status,
        headers=headers,
        body=stored_body,
        body_encoding=encoding,
        request_time=request_time,
        response_time=response_time,
        initial_age=initial_age(fields, request_time, response_time),
        tags=origin_tags(cfg, fields),
        variant=variant_of(vary, request) if vary else (),
        **freshness_facts(decision),
    )


def freshness_facts(decision: StoreDecision) -> dict[str, Any]:
    """The fields of a stored response that ``decide_storage`` decided (RFC 9111 §4.2.1,
    §4.2.4, RFC 5861), for a new entry or one a 304 or a HEAD updated."""
    return {
        "lifetime": decision.lifetime,
        "stale_while_revalidate": decision.stale_while_revalidate,
        "stale_if_error": decision.stale_if_error,
        "must_revalidate": decision.must_revalidate,
        "no_cache": decision.no_cache,
    }


def origin_tags(cfg: RouteConfig, headers: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """The tags the origin names in the route's ``tag_headers`` (at most 64)."""
    tags: list[str] = []
    for name in cfg.tag_headers:
        tags += parse_field_list(header_values(headers, name))
    return tuple(tags[:MAX_ORIGIN_TAGS])


def entry_tags(
    cfg: RouteConfig, path: str, params: Mapping[str, str], named: Sequence[str] = ()
) -> list[str]:
    """Everything an entry is indexed under: its route, its path prefixes, the tags the
    origin ``named`` and the route's tag templates filled from the path's parameters."""
    tags = [route_tag(cfg.name), *path_tags(path)]
    tags += [user_tag(t) for t in named]
    for template in cfg.tags:
        try:
            tags.append(user_tag(template.format(**params)))
        except (KeyError, IndexError, ValueError):
            continue
    return tags


def validators(entry: CachedResponse) -> list[tuple[str, str]]:
    """RFC 9111 §4.3.1: validate a stored response with its ETag and Last-Modified."""
    out = []
    etag = entry.header("ETag")
    if etag:
        out.append(("If-None-Match", etag))
    modified = entry.header("Last-Modified")
    if modified:
        out.append(("If-Modified-Since", modified))
    return out


def compressible(content_type: str | None) -> bool:
    if not content_type:
        return False
    lowered = content_type.lower()
    return any(marker in lowered for marker in _COMPRESSIBLE)
