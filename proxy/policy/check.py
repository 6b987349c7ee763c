"""Checks across a policy's sections, made on the file's data so that they run even when
other parts of the file are invalid: every error is reported in one pass.

Errors: backend references, tiered layers, route names, the invalidation channel's backend,
an explicit ``max_ttl`` below a ``ttl``. Warnings (the policy still loads): a route without
``match``, and a route an earlier one shadows. Nothing here raises.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError

from proxy.errors import PolicyIssue
from proxy.policy.model import DEFAULT_ROUTE, NAME, Match
from proxy.policy.source import Located, dotted
from proxy.units import format_duration, parse_duration

Loc = tuple[str | int, ...]
_KINDS: Final = ("path", "prefix", "regex")


def format_warning(issue: PolicyIssue) -> str:
    """``FILE:LINE:COL: warning: field: message``."""
    return f"{issue.path}:{issue.line}:{issue.column}: warning: {issue.field}: {issue.message}"


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _routes(data: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    routes = data.get("routes")
    if not isinstance(routes, list):
        return []
    return [(i, spec) for i, spec in enumerate(routes) if isinstance(spec, dict)]


class _Issues(list[PolicyIssue]):
    def __init__(self, located: Located) -> None:
        super().__init__()
        self.located = located

    def add(self, loc: Loc, message: str, *, key: bool = False) -> None:
        line, col = self.located.locate(loc, key=key)
        self.append(PolicyIssue(self.located.path, line, col, dotted(loc), message))


# ---------------------------------------------------------------- errors


def cross_check(data: dict[str, Any], located: Located) -> list[PolicyIssue]:
    """References between sections: backend names, tiered layers, unique routes, ceilings."""
    issues = _Issues(located)
    _check_backends(data, issues)
    _check_routes(data, issues)
    _check_references(data, issues)
    _check_ceilings(data, issues)
    return issues


def _check_backends(data: dict[str, Any], issues: _Issues) -> None:
    raw = data.get("backends", {"local": {"type": "memory"}})
    if not isinstance(raw, dict):
        return  # the schema reports the type; names cannot be checked
    backends = {str(name): _mapping(spec) for name, spec in raw.items()}
    types = {name: spec.get("type") for name, spec in backends.items()}
    if not backends:
        issues.add(("backends",), "define at least one backend")
    for name, spec in backends.items():
        if not re.match(NAME, name):
            issues.add(("backends", name), "backend names use letters, digits, '_', '.', '-'")
        if spec.get("type") == "tiered":
            l1, l2 = spec.get("l1"), spec.get("l2")
            if isinstance(l1, str) and types.get(l1) != "memory":
                issues.add(("backends", name, "l1"), f"{l1!r} is not a memory backend")
            if isinstance(l2, str) and types.get(l2) not in ("redis", "memcached"):
                issues.add(("backends", name, "l2"), f"{l2!r} is not a redis or memcached backend")
    defaults = _mapping(data.get("defaults"))
    if defaults.get("backend") is None and len(backends) > 1:
        issues.add(("defaults",), "backend: required when several backends are defined")
    known = ", ".join(sorted(backends))
    settings: list[tuple[Loc, dict[str, Any]]] = [(("defaults",), defaults)]
    settings += [(("routes", i), spec) for i, spec in _routes(data)]
    for loc, spec in settings:
        backend = spec.get("backend")
        if isinstance(backend, str) and backend not in backends:
            issues.add((*loc, "backend"), f"unknown backend {backend!r} (defined: {known})")
    invalidation = _mapping(data.get("invalidation"))
    target = invalidation.get("redis")
    if isinstance(target, str) and types.get(target) != "redis":
        issues.add(("invalidation", "redis"), f"{target!r} is not a redis backend")


def _check_routes(data: dict[str, Any], issues: _Issues) -> None:
    seen: dict[str, int] = {}
    for i, spec in _routes(data):
        name = spec.get("name")
        if not isinstance(name, str):
            continue
        if name == DEFAULT_ROUTE:
            issues.add(("routes", i, "name"), f"{DEFAULT_ROUTE!r} is reserved for the defaults")
        if name in seen:
            issues.add(("routes", i, "name"), f"duplicate route name (also routes[{seen[name]}])")
        seen.setdefault(name, i)


def _check_references(data: dict[str, Any], issues: _Issues) -> None:
    """``invalidates`` names routes or path prefixes, and a route's ``tags`` templates
    use its own parameters: either mistake would otherwise purge or tag nothing, silently."""
    routes = _routes(data)
    names = [n for _, spec in routes if isinstance(n := spec.get("name"), str)]
    names.append(DEFAULT_ROUTE)
    blocks: list[tuple[Loc, dict[str, Any]]] = [(("defaults",), _mapping(data.get("defaults")))]
    blocks += [(("routes", i), spec) for i, spec in routes]
    for loc, spec in blocks:
        targets = spec.get("invalidates")
        for j, target in enumerate(targets if isinstance(targets, list) else []):
            if isinstance(target, str) and not target.startswith("/") and target not in names:
                issues.add(
                    (*loc, "invalidates", j),
                    f"no route named {target!r} (routes: {', '.join(names)}); "
                    "a path prefix starts with /",
                )
        if loc[0] == "routes":
            _check_tag_templates(spec, loc, issues)


def _check_tag_templates(spec: dict[str, Any], loc: Loc, issues: _Issues) -> None:
    params = _params(_mapping(spec.get("match")))
    templates = spec.get("tags")
    if params is None or not isinstance(templates, list):
        return
    has = ", ".join(params) or "none"
    for j, template in enumerate(templates):
        if not isinstance(template, str):
            continue
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as exc:
            issues.add((*loc, "tags", j), f"not a template: {exc}")
            continue
        for name in fields:
            if re.split(r"[.\[!:]", name, maxsplit=1)[0] not in params or not name:
                issues.add(
                    (*loc, "tags", j),
                    f"{{{name}}} is not a parameter of this route's match (it has {has})",
                )
                break


def _params(match: dict[str, Any]) -> list[str] | None:
    """The parameters a route's match captures (``None``: an invalid regex, said elsewhere)."""
    path, regex = match.get("path"), match.get("regex")
    if isinstance(path, str):
        return re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::path)?\}", path)
    if isinstance(regex, str):
        try:
            return list(re.compile(regex).groupindex)
        except re.error:
            return None
    return []


def _seconds(value: object) -> float | None:
    if isinstance(value, str) and value.strip().lower() == "none":
        return math.inf
    try:
        return parse_duration(value)
    except ValueError:
        return None  # the schema reports it


def _ttls(spec: dict[str, Any], loc: Loc) -> Iterator[tuple[float, Loc]]:
    """A settings block's own lifetimes: ``ttl`` and per-status TTLs."""
    if (ttl := _seconds(spec.get("ttl"))) is not None:
        yield ttl, (*loc, "ttl")
    statuses = spec.get("statuses")
    if isinstance(statuses, dict):
        for status, value in statuses.items():
            if (seconds := _seconds(value)) is not None:
                yield seconds, (*loc, "statuses", status)


def _check_ceilings(data: dict[str, Any], issues: _Issues) -> None:
    """An explicit ``max_ttl`` below a ``ttl`` that applies under it: an error naming
    both (the route's ``ttl`` is its choice, so the ceiling must not silently undo it)."""
    defaults = _mapping(data.get("defaults"))
    blocks: list[tuple[Loc, dict[str, Any]]] = [(("defaults",), defaults)]
    blocks += [(("routes", i), spec) for i, spec in _routes(data)]
    reported: set[tuple[Loc, Loc]] = set()
    for loc, spec in blocks:
        own_ceiling = "max_ttl" in spec and spec["max_ttl"] is not None
        ceiling_loc: Loc = (*loc, "max_ttl") if own_ceiling else ("defaults", "max_ttl")
        ceiling = _seconds((spec if own_ceiling else defaults).get("max_ttl"))
        if ceiling is None or math.isinf(ceiling):
            continue
        ttls = list(_ttls(spec, loc))
        if not any(where[-1] == "ttl" for _, where in ttls):
            ttls += [t for t in _ttls(defaults, ("defaults",)) if t[1][-1] == "ttl"]
        for ttl, where in ttls:
            if ttl <= ceiling or (where, ceiling_loc) in reported:
                continue
            reported.add((where, ceiling_loc))
            named = "statuses." if where[-2] == "statuses" else ""
            fix = f"raise max_ttl or shorten {named}{where[-1]}"
            if where[: len(loc)] == loc:  # the block's own ttl: said at the ttl
                issues.add(
                    where,
                    f"{format_duration(ttl)} is longer than max_ttl "
                    f"{format_duration(ceiling)} ({dotted(ceiling_loc)}): {fix}",
                )
            else:  # an inherited ttl under the block's own max_ttl: said at the max_ttl
                issues.add(
                    ceiling_loc,
                    f"{format_duration(ceiling)} is shorter than {where[-1]} "
                    f"{format_duration(ttl)} ({dotted(where)}): {fix}",
                )


# ---------------------------------------------------------------- warnings


@dataclass(frozen=True, slots=True)
class _Route:
    index: int
    name: str
    match: Match
    explicit: bool  # the file has a ``match`` with a path, prefix or regex
    written: bool  # the file has a ``match`` key at all (warnings point at it)

    @property
    def label(self) -> str:
        return f"routes[{self.index}] ({self.name})"


def _parsed_routes(data: dict[str, Any]) -> list[_Route]:
    out = []
    for i, spec in _routes(data):
        try:
            match = Match.model_validate(spec.get("match") or {})
        except ValidationError:
            continue  # reported as an error
        explicit = any(getattr(match, kind) is not None for kind in _KINDS)
        out.append(_Route(i, str(spec.get("name", "?")), match, explicit, "match" in spec))
    return out


def route_warnings(data: dict[str, Any], located: Located) -> list[PolicyIssue]:
    """A route without ``match`` and a route that an earlier one shadows."""
    issues = _Issues(located)
    routes = _parsed_routes(data)
    for later_at, later in enumerate(routes):
        loc: Loc = ("routes", later.index)
        if not later.explicit:
            methods = ", ".join(later.match.methods)
            issues.add(
                loc,
                f"{later.label} has no match (path, prefix or regex): it takes every "
                f"{methods} request{' for ' + later.match.host if later.match.host else ''} "
                "that reaches it, and no route below it sees those",
            )
        for earlier in routes[:later_at]:
            reason = shadow_reason(earlier.match, later.match)
            if reason is not None:
                where = (*loc, "match") if later.written else loc
                issues.add(
                    where,
                    f"{later.label} is never matched: {earlier.label} comes first and {reason}",
                    key=True,
                )
                break
    return issues


def shadow_reason(earlier: Match, later: Match) -> str | None:
    """Why every request ``later`` matches is taken by ``earlier`` first, or ``None``.

    Methods and host count: an earlier route for GET only, or for another host, leaves
    the later one requests of its own."""
    if not set(later.methods) <= set(earlier.methods):
        return None
    if earlier.host is not None and (later.host or "").lower() != earlier.host.lower():
        return None
    if earlier.path is None and earlier.prefix is None and earlier.regex is None:
        return "has no match, so it takes every request"
    if earlier.prefix is not None:
        inner = later.prefix or _literal_head(later.path)
        if inner is not None and _under(inner, earlier.prefix):
            return f"its prefix {earlier.prefix} encloses {later.prefix or later.path}"
    if earlier.path is not None and (head := _catch_all_head(earlier.path)) is not None:
        inner = later.prefix or _literal_head(later.path)
        if inner is not None and inner.startswith(head) and len(inner) > len(head):
            return f"its template {earlier.path} matches everything under {inner}"
    if earlier.path is not None and later.path is not None:
        if _shape(earlier.path) == _shape(later.path):
            return f"has the same template {earlier.path}"
        if "{" not in later.path and _template_regex(earlier.path).match(later.path):
            return f"its template {earlier.path} matches {later.path}"
    if earlier.regex is not None and earlier.regex == later.regex:
        return f"has the same regex {earlier.regex}"
    return None


def _under(path: str, prefix: str) -> bool:
    """Whether every path under ``path`` is under ``prefix`` (segment boundaries)."""
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


_PARAM: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}")


def _literal_head(template: str | None) -> str | None:
    """The literal directory every match of a template lies under (``/a/{id}`` → ``/a``),
    or the template itself when it has no parameter."""
    if template is None:
        return None
    head = template.partition("{")[0]
    if head == template:
        return template
    return head.rstrip("/") or "/" if head.endswith("/") else None


def _catch_all_head(template: str) -> str | None:
    """``/a/{rest:path}`` → ``/a/``: a template that takes every path below a directory."""
    found = _PARAM.search(template)
    if found is None or not found.group(2) or found.end() != len(template):
        return None
    head = template[: found.start()]
    return head if head.endswith("/") else None


def _shape(template: str) -> str:
    return _PARAM.sub(lambda m: "{*}" if m.group(2) else "{}", template)


def _template_regex(template: str) -> re.Pattern[str]:
    parts = _PARAM.split(template)
    # split yields literal, name, ":path"|None, literal, …
    out = ["^"]
    for i in range(0, len(parts), 3):
        out.append(re.escape(parts[i]))
        if i + 2 < len(parts):
            out.append(".+" if parts[i + 2] else "[^/]+")
    return re.compile("".join(out) + "$")
