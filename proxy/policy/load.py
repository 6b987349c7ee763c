"""The policy file: read it, report every mistake in it with FILE:LINE:COL, load it.

``parse_policy``/``load_policy`` return a ``LoadedPolicy`` or raise ``PolicyError``
listing every problem at once (YAML syntax, the schema's errors in plain words, the
checks across sections), with warnings for routes that can never match. The schema is
``proxy.policy.model`` (re-exported here), YAML marks ``proxy.policy.source``, the
cross-section checks ``proxy.policy.check``. No I/O but reading the file given.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ValidationError

from proxy.errors import PolicyError, PolicyIssue
from proxy.policy.backends import (
    Backend,
    Breaker,
    MemcachedBackend,
    MemoryBackend,
    RedisBackend,
    TieredBackend,
)
from proxy.policy.check import cross_check, format_warning, route_warnings
from proxy.policy.model import (
    DEFAULT_MAX_TTL,
    DEFAULT_ROUTE,
    DEFAULT_STRIP_HEADERS,
    DEFAULT_TAG_HEADERS,
    Admin,
    Coalesce,
    Compression,
    EarlyRefresh,
    Invalidation,
    KeySpec,
    LoadedPolicy,
    Match,
    Policy,
    QueryExclude,
    RouteConfig,
    RouteSettings,
    RouteSpec,
    Server,
    Timeout,
    describe,
    json_schema,
    resolve_routes,
)
from proxy.policy.source import Abandoned, Located, compose, dotted
from proxy.policy.wording import plain_message

__all__ = [
    "DEFAULT_MAX_TTL",
    "DEFAULT_ROUTE",
    "DEFAULT_STRIP_HEADERS",
    "DEFAULT_TAG_HEADERS",
    "Admin",
    "Backend",
    "Breaker",
    "Coalesce",
    "Compression",
    "EarlyRefresh",
    "Invalidation",
    "KeySpec",
    "LoadedPolicy",
    "Match",
    "MemcachedBackend",
    "MemoryBackend",
    "Policy",
    "QueryExclude",
    "RedisBackend",
    "RouteConfig",
    "RouteSettings",
    "RouteSpec",
    "Server",
    "TieredBackend",
    "Timeout",
    "describe",
    "format_warning",
    "json_schema",
    "load_policy",
    "parse_policy",
    "resolve_routes",
]

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


def _schema_issues(
    data: dict[str, Any], located: Located
) -> tuple[Policy | None, list[PolicyIssue]]:
    """Validate with pydantic; its errors in plain words, located in the file."""
    try:
        return Policy.model_validate(data), []
    except ValidationError as exc:
        errors = [e for e in exc.errors() if not _is_branch_miss(e, exc.errors(), data)]
    issues: list[PolicyIssue] = []
    # a value no member of a union accepts gives one error per member: say it once
    grouped: dict[tuple[str | int, ...], list[Any]] = {}
    for error in errors:
        raw = tuple(error["loc"])
        # a missing key is the last part, whatever its name ("redis" is also a union tag)
        loc = (*_data_loc(raw[:-1], data), raw[-1]) if error["type"] == "missing" else None
        grouped.setdefault(loc or _data_loc(raw, data), []).append(error)
    for loc, group in grouped.items():
        for message, error in plain_message(group, loc):
            if error["type"] == "extra_forbidden" and loc:
                message += _suggest(str(loc[-1]), loc[:-1], data)
            line, col = located.locate(loc, key=error["type"] == "extra_forbidden")
            issues.append(PolicyIssue(located.path, line, col, dotted(loc), message))
    return None, issues


def parse_policy(text: str, path: str = "<policy>") -> LoadedPolicy:
    """Validate policy text; raise ``PolicyError`` listing every issue found. Warnings
    (routes that never match, routes without ``match``) are on the result."""
    node = compose(text, path)
    if node is None:
        raise PolicyError([PolicyIssue(path, 1, 1, "(top level)", "the policy file is empty")])
    located = Located(path)
    try:
        data = located.build(node)
    except Abandoned:
        raise PolicyError(located.issues) from None
    if not isinstance(data, dict):
        raise PolicyError(
            [PolicyIssue(path, 1, 1, "(top level)", "the policy must be a mapping of keys")]
        )
    policy, schema = _schema_issues(data, located)
    issues = [*located.issues, *schema, *cross_check(data, located)]
    warnings = tuple(route_warnings(data, located))
    if issues or policy is None:
        issues.sort(key=lambda i: (i.line, i.column))
        raise PolicyError(issues, warnings)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return LoadedPolicy(path, policy, tuple(resolve_routes(policy)), digest, warnings)


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


if __name__ == "__main__":  # python -m proxy.policy.load > policies/schema.json
    import json
    import sys

    json.dump(json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
