"""The policy file: its schema (pydantic), its loader, and its errors with file:line:col.

This module owns what a valid policy is. It reads YAML into a node tree (to keep
line marks and reject duplicate keys), interpolates ``${VAR}``/``${VAR:-default}``,
validates with pydantic, and resolves every route against ``defaults``. It does no I/O
beyond reading the file it is given, and nothing here runs per request.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from proxy.errors import PolicyError, PolicyIssue
from proxy.units import format_duration, format_size, parse_duration, parse_size

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0}, {"type": "string"}]}),
]
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]}),
]

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
_NAME: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_ENV: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_TOKEN: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- backends


class Breaker(_Model):
    failures: int = Field(5, ge=1, description="consecutive failures that open the breaker")
    cooldown: Duration = Field(5.0, gt=0, description="time open before a probe")


class MemoryBackend(_Model):
    type: Literal["memory"]
    max_size: Size = Field(256 * 1024**2, gt=0, description="bound on keys+values+overhead")


class RedisBackend(_Model):
    type: Literal["redis"]
    url: str = "redis://127.0.0.1:6379/0"
    cluster: bool = False
    nodes: list[str] = Field(default_factory=list, description="host:port of cluster nodes")
    pool_size: int = Field(64, ge=1)
    connect_timeout: Duration = Field(0.5, gt=0)
    timeout: Duration = Field(0.05, gt=0, description="deadline of one store operation")
    key_prefix: str = ""
    breaker: Breaker = Breaker()

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


class MemcachedBackend(_Model):
    type: Literal["memcached"]
    servers: list[str] = Field(min_length=1, description='["host:port", ...]')
    pool_size: int = Field(8, ge=1)
    connect_timeout: Duration = Field(0.5, gt=0)
    timeout: Duration = Field(0.05, gt=0, description="deadline of one store operation")
    item_size_max: Size = Field(1024**2, ge=1024)
    key_prefix: str = ""
    breaker: Breaker = Breaker()

    @field_validator("servers")
    @classmethod
    def _check_servers(cls, value: list[str]) -> list[str]:
        for server in value:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return value


class TieredBackend(_Model):
    type: Literal["tiered"]
    l1: str = Field(description="name of a memory backend")
    l2: str = Field(description="name of a redis or memcached backend")
    l1_ttl: Duration = Field(5.0, gt=0, description="longest time an entry lives in L1")


Backend = Annotated[
    MemoryBackend | RedisBackend | MemcachedBackend | TieredBackend,
    Field(discriminator="type"),
]

# ---------------------------------------------------------------- route settings


class Compression(_Model):
    algorithm: Literal["gzip", "none"] = "gzip"
    min_size: Size = 1024
    level: int = Field(6, ge=1, le=9)


class Coalesce(_Model):
    enabled: bool = True
    timeout: Duration = Field(5.0, gt=0, description="longest a follower waits")
    max_waiters: int = Field(1024, ge=1, description="followers per key; more go to origin")
    hit_for_miss: Duration = Field(10.0, ge=0, description="remember uncacheable keys")


class Timeout(_Model):
    connect: Duration = Field(2.0, gt=0)
    total: Duration = Field(30.0, gt=0)


class QueryExclude(_Model):
    exclude: list[str]


class KeySpec(_Model):
    query: Literal["all", "ignore"] | list[str] | QueryExclude = "all"
    headers: list[str] = Field(default_factory=list)
    cookies: list[str] = Field(default_factory=list)


class EarlyRefresh(_Model):
    beta: float = Field(1.0, gt=0, description="XFetch beta; larger refreshes earlier")


def _early_refresh(value: object) -> object:
    if value is True:
        return {"beta": 1.0}
    if value is False:
        return None
    return value


class RouteSettings(_Model):
    """Every per-route setting; ``None`` means inherit (from ``defaults``, then built-ins)."""

    backend: str | None = None
    cache: bool | None = None
    ttl: Duration | None = None
    max_ttl: Duration | None = None
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


class Match(_Model):
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
    name: str = Field(pattern=_NAME)
    match: Match = Match()


# ---------------------------------------------------------------- top level


class Admin(_Model):
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


class Invalidation(_Model):
    channel: str = "sidecache:invalidate"
    redis: str = Field(description="name of a redis backend carrying the channel")


class Server(_Model):
    max_body_size: Size = Field(10 * 1024**2, ge=0, description="request bodies (413 above)")
    max_header_size: Size = Field(16 * 1024, ge=1024, description="request headers (431)")
    max_connections: int = Field(10_000, ge=1)
    origin_connections: int = Field(256, ge=1, description="keep-alive pool to the origin")
    shutdown_timeout: Duration = Field(20.0, ge=0)
    access_log: bool | float = Field(False, description="true, false, or a sample ratio 0..1")


def _check_origin(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query or fragment")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry user:password (credentials are not sent this way)")
    return value.rstrip("/")


class Policy(_Model):
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
    return RouteConfig(name=name, match=match, **values)


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

    def summary(self) -> str:
        backends = ", ".join(f"{n}={b.type}" for n, b in self.policy.backends.items())
        return (
            f"origin {self.policy.origin}, {len(self.routes) - 1} routes "
            f"({', '.join(r.name for r in self.routes[:-1]) or 'defaults only'}), "
            f"backends {backends}"
        )


_MAX_DEPTH: Final = 64
_MAX_VALUES: Final = 100_000
_INVALID: Final = object()


class _Abandoned(Exception):
    """The node tree cannot be built; the issue saying why is already recorded."""


class _Located:
    """A YAML node tree turned into plain data, remembering where each value was."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.marks: dict[tuple[str | int, ...], tuple[int, int]] = {}
        self.key_marks: dict[tuple[str | int, ...], tuple[int, int]] = {}
        self.issues: list[PolicyIssue] = []
        self._scalars = yaml.constructor.SafeConstructor()
        self._budget = _MAX_VALUES
        self._open: list[yaml.Node] = []  # the collections being built, outermost first

    def build(self, node: yaml.Node, loc: tuple[str | int, ...] = ()) -> Any:
        self.marks[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
        # Aliases are expanded here: a recursive one (``&a [*a]``) is a cycle and nested
        # ones multiply ("billion laughs"), so bound depth, cycles and total size.
        self._budget -= 1
        if node in self._open or len(loc) > _MAX_DEPTH or self._budget < 0:
            problem = (
                "recursive alias"
                if node in self._open
                else f"nested more than {_MAX_DEPTH} levels deep"
                if len(loc) > _MAX_DEPTH
                else f"more than {_MAX_VALUES} values after expanding aliases"
            )
            self._issue(node, loc if node in self._open else loc[:2], problem)
            raise _Abandoned
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            self._open.append(node)
            try:
                if isinstance(node, yaml.MappingNode):
                    return self._mapping(node, loc)
                return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
            finally:
                self._open.pop()
        value = self._construct(node, loc)
        if isinstance(value, str):
            return self._interpolate(value, loc)
        return None if value is _INVALID else value

    def _construct(self, node: yaml.Node, loc: tuple[str | int, ...]) -> Any:
        try:
            return self._scalars.construct_object(node)
        except Exception as exc:
            # An explicit tag (``!!int abc``, ``!!bool maybe``, ``!custom``) fails in
            # PyYAML's constructors with ConstructorError, ValueError, KeyError or even
            # AttributeError: whichever, it is a mistake in the file, not a crash.
            problem = getattr(exc, "problem", None) or f"not a valid {node.tag}: {exc}"
            self._issue(node, loc, str(problem))
            return _INVALID

    def _issue(self, node: yaml.Node, loc: tuple[str | int, ...], message: str) -> None:
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        self.issues.append(PolicyIssue(self.path, line, col, _dotted(loc), message))

    def _mapping(self, node: yaml.MappingNode, loc: tuple[str | int, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self._construct(key_node, loc)
            if key is _INVALID:
                continue
            if not isinstance(key, str):
                key = str(key)
            here = (*loc, key)
            mark = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in out:
                first = self.key_marks[here]
                self.issues.append(
                    PolicyIssue(
                        self.path, *mark, _dotted(here), f"duplicate key (first on line {first[0]})"
                    )
                )
                continue
            self.key_marks[here] = mark
            out[key] = self.build(value_node, here)
        return out

    def _interpolate(self, value: str, loc: tuple[str | int, ...]) -> str:
        def substitute(found: re.Match[str]) -> str:
            name, default = found.group(1), found.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            line, col = self.marks[loc]
            self.issues.append(
                PolicyIssue(
                    self.path, line, col, _dotted(loc), f"environment variable {name} is not set"
                )
            )
            return ""

        return _ENV.sub(substitute, value) if "${" in value else value

    def locate(self, loc: tuple[str | int, ...], *, key: bool = False) -> tuple[int, int]:
        """The mark of the deepest known node along ``loc``."""
        for end in range(len(loc), -1, -1):
            here = loc[:end]
            if key and here in self.key_marks:
                return self.key_marks[here]
            if here in self.marks:
                return self.marks[here]
        return (1, 1)


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


_UNION_TAGS: Final = frozenset(
    {
        "QueryExclude",
        "memory",
        "redis",
        "memcached",
        "tiered",
        "list[int]",
        "dict[int,function-before[parse_duration(), float]]",
    }
)


def _data_loc(raw: tuple[str | int, ...], data: Any) -> tuple[str | int, ...]:
    """pydantic's ``loc`` without union-member and validator tags, following the data."""
    out: list[str | int] = []
    node = data
    for part in raw:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            out.append(part)
            node = node[part]  # type: ignore[index]
        elif isinstance(node, dict | list):
            # union tags ("redis", "list[str]") and missing/extra keys
            if isinstance(part, str) and not _is_tag(part) and isinstance(node, dict):
                out.append(part)
                node = None
        else:
            break
    return tuple(out)


def _is_tag(part: str) -> bool:
    return part in _UNION_TAGS or "[" in part or "(" in part or part in ("str", "int", "bool")


def _is_branch_miss(error: Any, errors: list[Any], data: Any) -> bool:
    """A union member's type mismatch while another member got further into the data:
    beside ``statuses.200: invalid duration``, "statuses: should be a list" is noise."""
    raw = tuple(error["loc"])
    if not raw or error["type"] in ("missing", "extra_forbidden"):
        return False
    if _data_loc(raw, data)[-1:] == raw[-1:]:  # ends on a key of the data, not a member tag
        return False
    union = raw[:-1]
    return any(
        len(other["loc"]) > len(raw)
        and tuple(other["loc"][: len(union)]) == union
        and other["loc"][len(union)] != raw[-1]
        for other in errors
    )


def _message(error: Any, loc: tuple[str | int, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        name = str(loc[-1]) if loc else ""
        return f"unknown key {name!r}"
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _suggest(name: str, parent: tuple[str | int, ...], data: Any) -> str:
    model = _model_at(parent, data)
    if model is None:
        return ""
    close = difflib.get_close_matches(name, list(model.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_at(loc: tuple[str | int, ...], data: Any) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at ``loc`` (for suggestions)."""
    model: type[BaseModel] | None = Policy
    node = data
    if loc[:1] == ("backends",) and len(loc) >= 2 and isinstance(data.get("backends"), dict):
        node = data["backends"].get(loc[1])
        kind = node.get("type") if isinstance(node, dict) else None
        kinds: dict[str, type[BaseModel]] = {
            "memory": MemoryBackend,
            "redis": RedisBackend,
            "memcached": MemcachedBackend,
            "tiered": TieredBackend,
        }
        model = kinds.get(str(kind))
        loc = loc[2:]
    for part in loc:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        if model is None or not isinstance(node, dict):
            return None
        node = node.get(part)
        annotation = model.model_fields.get(part)
        model = _first_model(annotation.annotation if annotation else None)
    return model


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _cross_check(policy: Policy, located: _Located) -> list[PolicyIssue]:
    """References between sections: backend names, tiered layers, unique routes."""
    issues: list[PolicyIssue] = []

    def add(loc: tuple[str | int, ...], message: str) -> None:
        issues.append(PolicyIssue(located.path, *located.locate(loc), _dotted(loc), message))

    names = set(policy.backends)
    if not names:
        add(("backends",), "define at least one backend")
    for name, backend in policy.backends.items():
        if not re.match(_NAME, name):
            add(("backends", name), "backend names use letters, digits, '_', '.', '-'")
        if isinstance(backend, TieredBackend):
            l1 = policy.backends.get(backend.l1)
            l2 = policy.backends.get(backend.l2)
            if not isinstance(l1, MemoryBackend):
                add(("backends", name, "l1"), f"{backend.l1!r} is not a memory backend")
            if not isinstance(l2, RedisBackend | MemcachedBackend):
                add(("backends", name, "l2"), f"{backend.l2!r} is not a redis or memcached backend")
    if policy.defaults.backend is None and len(names) > 1:
        add(("defaults",), "backend: required when several backends are defined")
    settings: list[tuple[tuple[str | int, ...], RouteSettings]] = [(("defaults",), policy.defaults)]
    settings += [(("routes", i), spec) for i, spec in enumerate(policy.routes)]
    for loc, spec in settings:
        if spec.backend is not None and spec.backend not in names:
            known = ", ".join(sorted(names))
            add((*loc, "backend"), f"unknown backend {spec.backend!r} (defined: {known})")
    seen: dict[str, int] = {}
    for i, spec in enumerate(policy.routes):
        if spec.name == DEFAULT_ROUTE:
            add(("routes", i, "name"), f"{DEFAULT_ROUTE!r} is reserved for the defaults")
        if spec.name in seen:
            add(("routes", i, "name"), f"duplicate route name (also routes[{seen[spec.name]}])")
        seen.setdefault(spec.name, i)
    if policy.invalidation is not None:
        target = policy.backends.get(policy.invalidation.redis)
        if not isinstance(target, RedisBackend):
            add(("invalidation", "redis"), f"{policy.invalidation.redis!r} is not a redis backend")
    return issues


def parse_policy(text: str, path: str = "<policy>") -> LoadedPolicy:
    """Validate policy text; raise ``PolicyError`` listing every issue found."""
    located = _Located(path)
    try:
        node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = str(getattr(exc, "problem", None) or exc)
        field_name = "(yaml)"
        if "nesting depth" in problem:
            # PyYAML ≥ 6.0.4's scanner stops deep flow nesting before our own depth check
            # sees it: say it the same way, naming the key the nesting starts at
            problem = f"nested more than {_MAX_DEPTH} levels deep"
            lines = text.splitlines()
            key = lines[line - 1].strip().partition(":")[0] if line <= len(lines) else ""
            field_name = key if key and key[0] not in "[{" else field_name
        raise PolicyError([PolicyIssue(path, line, col, field_name, problem)]) from None
    if node is None:
        raise PolicyError([PolicyIssue(path, 1, 1, "(top level)", "the policy file is empty")])
    try:
        data = located.build(node)
    except _Abandoned:
        raise PolicyError(located.issues) from None
    if not isinstance(data, dict):
        raise PolicyError(
            [PolicyIssue(path, 1, 1, "(top level)", "the policy must be a mapping of keys")]
        )
    issues = list(located.issues)
    policy: Policy | None = None
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        for error in errors:
            if _is_branch_miss(error, errors, data):
                continue
            loc = _data_loc(tuple(error["loc"]), data)
            message = _message(error, loc)
            if error["type"] == "extra_forbidden" and loc:
                message += _suggest(str(loc[-1]), loc[:-1], data)
            line, col = located.locate(loc, key=error["type"] == "extra_forbidden")
            issues.append(PolicyIssue(path, line, col, _dotted(loc), message))
    if policy is not None:
        issues += _cross_check(policy, located)
    if issues or policy is None:
        issues.sort(key=lambda i: (i.line, i.column))
        raise PolicyError(issues)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return LoadedPolicy(path, policy, tuple(resolve_routes(policy)), digest)


def load_policy(path: str | os.PathLike[str]) -> LoadedPolicy:
    """Read and validate a policy file."""
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([PolicyIssue(name, 0, 0, "(file)", exc.strerror or str(exc))]) from None
    except UnicodeDecodeError as exc:
        raise PolicyError([PolicyIssue(name, 1, 1, "(file)", f"not UTF-8: {exc.reason}")]) from None
    return parse_policy(text, name)


def describe(route: RouteConfig) -> str:
    """A one-line human summary of a resolved route, for ``validate`` and logs."""
    if not route.cache:
        return f"{route.name}: pass-through"
    ttl = format_duration(route.ttl) if route.ttl is not None else "origin"
    return (
        f"{route.name}: ttl {ttl}, backend {route.backend}, "
        f"max object {format_size(route.max_object_size)}"
    )


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the policy file, for editors (``policies/schema.json``)."""
    schema = Policy.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "sidecache policy"
    return schema


if __name__ == "__main__":  # python -m proxy.policy > policies/schema.json
    import json
    import sys

    json.dump(json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
