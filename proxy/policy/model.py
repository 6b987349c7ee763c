"""The policy's schema (pydantic) and its routes resolved against ``defaults``.

This module owns what a valid policy *is*: every key, its type and its default, and how
a route's settings fall back to ``defaults`` then to built-ins. Reading YAML, locating
errors and the checks across sections live in ``proxy.policy.load`` and ``proxy.policy.check``.
Nothing here does I/O or runs per request.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from proxy.errors import PolicyIssue
from proxy.policy.backends import Backend, Duration, MemoryBackend, Model, Size
from proxy.units import format_duration, format_size, parse_duration


def parse_ceiling(value: object) -> float:
    """``max_ttl``: a duration, or ``none`` (no ceiling, kept as infinity)."""
    if isinstance(value, str) and value.strip().lower() == "none":
        return math.inf
    if isinstance(value, float) and value == math.inf:
        return value
    try:
        return parse_duration(value)
    except ValueError:
        if not isinstance(value, str):
            raise
        raise ValueError(
            f"invalid duration {value!r}: use 250ms, 30s, 5m, 1h, 1d, seconds, or none (no ceiling)"
        ) from None


Ceiling = Annotated[
    float,
    BeforeValidator(parse_ceiling),
    WithJsonSchema(
        {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string"}]},
    ),
]
DEFAULT_MAX_TTL: Final = 86400.0

DEFAULT_TAG_HEADERS: Final = ("Surrogate-Key", "Cache-Tag")
# Headers that change what many origins answer but that a client must not steer
# through a shared cache (PortSwigger's unkeyed-input research): never forwarded
# unless a route lists them in ``forward_headers``.
DEFAULT_STRIP_HEADERS: Final = (
    "X-Forwarded-Host",
    "X-Forwarded-Scheme",
    "X-Forwarded-Server",
    "X-Forwarded-Prefix",
    "X-Forwarded-Port",
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
    "X-Host",
    "Forwarded",
)
NAME: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_TOKEN: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


# ---------------------------------------------------------------- route settings


class Compression(Model):
    algorithm: Literal["gzip", "none"] = "gzip"
    min_size: Size = 1024
    level: int = Field(6, ge=1, le=9)


class Coalesce(Model):
    enabled: bool = True
    timeout: Duration = Field(5.0, gt=0, description="longest a follower waits")
    max_waiters: int = Field(1024, ge=1, description="followers per key; more go to origin")
    hit_for_miss: Duration = Field(10.0, ge=0, description="remember uncacheable keys")


class Timeout(Model):
    connect: Duration = Field(2.0, gt=0)
    total: Duration = Field(30.0, gt=0)


class QueryExclude(Model):
    exclude: list[str]


class KeySpec(Model):
    host: bool = Field(
        True, description="key on the Host (lowercased, default port dropped); false: ignore it"
    )
    query: Literal["all", "ignore"] | list[str] | QueryExclude = "all"
    headers: list[str] = Field(default_factory=list)
    cookies: list[str] = Field(default_factory=list)


class EarlyRefresh(Model):
    beta: float = Field(1.0, gt=0, description="XFetch beta; larger refreshes earlier")


def _early_refresh(value: object) -> object:
    if value is True:
        return {"beta": 1.0}
    if value is False:
        return None
    return value


class RouteSettings(Model):
    """Every per-route setting; ``None`` means inherit (from ``defaults``, then built-ins)."""

    backend: str | None = None
    cache: bool | None = None
    ttl: Duration | None = None
    max_ttl: Ceiling | None = Field(
        None, description="cap on lifetimes (default 1d, `none` for no cap)"
    )
    max_heuristic_ttl: Duration | None = None
    statuses: list[int] | dict[int, Duration] | None = None
    compression: Compression | None = None
    max_object_size: Size | None = None
    coalesce: Coalesce | None = None
    stale_while_revalidate: Duration | None = None
    stale_if_error: Duration | None = None
    early_refresh: Annotated[EarlyRefresh | None, BeforeValidator(_early_refresh)] = None
    timeout: Timeout | None = None
    key: KeySpec | None = None
    origin_cache_control: Literal["honor", "ignore"] | None = None
    client_cache_control: Literal["honor", "ignore"] | None = None
    cdn_cache_control: bool | None = None
    cache_authorized: bool | None = None
    strip_set_cookie: bool | None = None
    tags: list[str] | None = None
    tag_headers: list[str] | None = None
    invalidates: list[str] | None = None
    store_failure: Literal["open", "closed"] | None = None
    forward_headers: list[str] | None = None
    strip_headers: list[str] | None = None
    max_variants: int | None = Field(None, ge=1)

    @field_validator("statuses")
    @classmethod
    def _check_statuses(
        cls, value: list[int] | dict[int, float] | None
    ) -> list[int] | dict[int, float] | None:
        for status in value or ():
            if not 100 <= status <= 599:
                raise ValueError(f"{status} is not an HTTP status code")
        return value

    @field_validator("tag_headers", "forward_headers", "strip_headers")
    @classmethod
    def _check_header_names(cls, value: list[str] | None) -> list[str] | None:
        for name in value or ():
            if not _TOKEN.match(name):
                raise ValueError(f"{name!r} is not a header name")
        return value


class Match(Model):
    path: str | None = Field(None, description="template such as /api/products/{id}")
    prefix: str | None = None
    regex: str | None = None
    methods: list[str] = Field(default_factory=lambda: ["GET", "HEAD"])
    host: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Match:
        kinds = [k for k in ("path", "prefix", "regex") if getattr(self, k) is not None]
        if len(kinds) > 1:
            raise ValueError(f"use one of path, prefix or regex, not {' and '.join(kinds)}")
        return self

    @field_validator("path", "prefix")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must start with /")
        return value

    @field_validator("path")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            names: set[str] = set()
            for part in re.findall(r"\{([^}]*)\}", value):
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(:path)?", part):
                    raise ValueError(f"bad template parameter {{{part}}}")
                # each becomes a named regex group: a repeated name would not compile
                name = part.removesuffix(":path")
                if name in names:
                    raise ValueError(f"template parameter {{{name}}} appears twice")
                names.add(name)
        return value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from exc
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        upper = [m.upper() for m in value]
        for method in upper:
            if not _TOKEN.match(method):
                raise ValueError(f"{method!r} is not an HTTP method")
        return upper


class RouteSpec(RouteSettings):
    name: str = Field(pattern=NAME)
    match: Match = Match()


# ---------------------------------------------------------------- top level


class Admin(Model):
    token: str | None = Field(None, description="Bearer token for the admin API")
    purge_from: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=lambda: [  # type: ignore[arg-type]
            ipaddress.IPv4Network("127.0.0.0/8"),
            ipaddress.IPv6Network("::1/128"),
        ],
        description="CIDRs allowed to send PURGE on the proxy port",
    )

    @field_validator("token")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None


class Invalidation(Model):
    channel: str = "sidecache:invalidate"
    redis: str = Field(description="name of a redis backend carrying the channel")


class Snapshot(Model):
    """Warm restart: the memory stores written to ``path`` on SIGTERM and every ``interval``."""

    path: str = Field(min_length=1, description="snapshot file (with --workers N: path.wI)")
    interval: Duration = Field(300.0, gt=0, description="how often it is written while running")


class Server(Model):
    max_body_size: Size = Field(10 * 1024**2, ge=0, description="request bodies (413 above)")
    max_header_size: Size = Field(16 * 1024, ge=1024, description="request headers (431)")
    max_connections: int = Field(10_000, ge=1)
    origin_connections: int = Field(256, ge=1, description="keep-alive pool to the origin")
    shutdown_timeout: Duration = Field(20.0, ge=0)
    access_log: bool | float = Field(False, description="true, false, or a sample ratio 0..1")
    snapshot: Snapshot | None = Field(None, description="warm restart of the memory stores")


def _check_origin(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query or fragment")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry user:password (credentials are not sent this way)")
    return value.rstrip("/")


class Policy(Model):
    """The whole policy file."""

    version: Literal[1]
    origin: str = Field(description="the upstream API; the only place requests go")
    admin: Admin = Admin()
    backends: dict[str, Backend] = Field(
        default_factory=lambda: {"local": MemoryBackend(type="memory")}  # type: ignore[arg-type]
    )
    defaults: RouteSettings = RouteSettings()
    routes: list[RouteSpec] = Field(default_factory=list)
    invalidation: Invalidation | None = None
    server: Server = Server()

    @field_validator("origin")
    @classmethod
    def _origin(cls, value: str) -> str:
        return _check_origin(value)


# ---------------------------------------------------------------- resolved routes


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """One route with every setting resolved (route over defaults over built-ins)."""

    name: str
    match: Match
    backend: str
    cache: bool = True
    ttl: float | None = None
    max_ttl: float | None = None
    max_heuristic_ttl: float = 86400.0
    statuses: tuple[int, ...] | None = None
    status_ttls: dict[int, float] = field(default_factory=dict)
    compression: Compression = Compression()
    max_object_size: int = 8 * 1024**2
    coalesce: Coalesce = Coalesce()
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0
    early_refresh: EarlyRefresh | None = None
    timeout: Timeout = Timeout()
    key: KeySpec = KeySpec()
    origin_cache_control: Literal["honor", "ignore"] = "honor"
    client_cache_control: Literal["honor", "ignore"] = "ignore"
    cdn_cache_control: bool = False
    cache_authorized: bool = False
    strip_set_cookie: bool = False
    tags: tuple[str, ...] = ()
    tag_headers: tuple[str, ...] = DEFAULT_TAG_HEADERS
    invalidates: tuple[str, ...] = ()
    store_failure: Literal["open", "closed"] = "open"
    forward_headers: tuple[str, ...] = ()
    strip_headers: tuple[str, ...] = DEFAULT_STRIP_HEADERS
    max_variants: int = 16


DEFAULT_ROUTE: Final = "default"
_TUPLES: Final = ("tags", "tag_headers", "invalidates", "forward_headers", "strip_headers")


def _merge(base: RouteSettings, over: RouteSettings) -> RouteSettings:
    """``over`` wins field by field; nested settings merge key by key."""
    merged: dict[str, Any] = {}
    for name in RouteSettings.model_fields:
        low, high = getattr(base, name), getattr(over, name)
        if isinstance(low, BaseModel) and isinstance(high, BaseModel):
            merged[name] = low.model_copy(
                update={k: getattr(high, k) for k in high.model_fields_set}
            )
        else:
            merged[name] = high if high is not None else low
    return RouteSettings.model_construct(**merged)


def _resolve(name: str, match: Match, settings: RouteSettings, backend: str) -> RouteConfig:
    values: dict[str, Any] = {}
    for key in RouteSettings.model_fields:
        value = getattr(settings, key)
        if value is None:
            continue
        if key in _TUPLES:
            value = tuple(value)
        if key == "statuses":
            if isinstance(value, dict):
                values["status_ttls"] = dict(value)
            value = tuple(sorted(value))
        values[key] = value
    values["backend"] = backend
    values["max_ttl"] = resolve_ceiling(settings)
    return RouteConfig(name=name, match=match, **values)


def resolve_ceiling(settings: RouteSettings) -> float | None:
    """The cap on freshness: an explicit ``max_ttl`` (``none``: no cap), else 1 day, raised
    to the route's own ``ttl`` and per-status TTLs: those are the route's choice."""
    if settings.max_ttl is not None:
        return None if math.isinf(settings.max_ttl) else settings.max_ttl
    own = [settings.ttl or 0.0]
    if isinstance(settings.statuses, dict):
        own += settings.statuses.values()
    return max(DEFAULT_MAX_TTL, *own)


def resolve_routes(policy: Policy) -> list[RouteConfig]:
    """Routes in match order, then the ``default`` route for what no route matches."""
    default_backend = policy.defaults.backend or next(iter(policy.backends))
    resolved = []
    for spec in policy.routes:
        settings = _merge(policy.defaults, spec)
        resolved.append(_resolve(spec.name, spec.match, settings, settings.backend or ""))
    resolved.append(_resolve(DEFAULT_ROUTE, Match(), policy.defaults, default_backend))
    return [r if r.backend else replace(r, backend=default_backend) for r in resolved]


# ---------------------------------------------------------------- loading


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """A validated policy, where it came from, and its routes resolved."""

    path: str
    policy: Policy
    routes: tuple[RouteConfig, ...]
    digest: str
    # what ``validate`` and ``run`` print as ``FILE:LINE:COL: warning: …`` (see policycheck)
    warnings: tuple[PolicyIssue, ...] = ()

    def summary(self) -> str:
        backends = ", ".join(f"{n}={b.type}" for n, b in self.policy.backends.items())
        return (
            f"origin {self.policy.origin}, {len(self.routes) - 1} routes "
            f"({', '.join(r.name for r in self.routes[:-1]) or 'defaults only'}), "
            f"backends {backends}"
        )


def describe(route: RouteConfig) -> str:
    """A one-line human summary of a resolved route, for ``validate`` and logs."""
    if not route.cache:
        return f"{route.name}: pass-through"
    ttl = format_duration(route.ttl) if route.ttl is not None else "origin"
    ceiling = format_duration(route.max_ttl) if route.max_ttl is not None else "none"
    host = "" if route.key.host else ", key without host"
    return (
        f"{route.name}: ttl {ttl}, max_ttl {ceiling}, backend {route.backend}, "
        f"max object {format_size(route.max_object_size)}{host}"
    )


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the policy file, for editors (``policies/schema.json``)."""
    schema = Policy.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "sidecache policy"
    return schema
