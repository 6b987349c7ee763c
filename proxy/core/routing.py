"""Route matching: policy routes compiled once into regexes, matched in order.

``Router.match`` is on every request's path, so it runs only precompiled patterns
and a method set lookup. Path templates follow Starlette's ``compile_path``:
``{name}`` matches one segment, ``{name:path}`` the rest of the path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from proxy.policy.load import RouteConfig

_PARAM: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}")


@dataclass(frozen=True, slots=True)
class Route:
    """A resolved route with its compiled matcher."""

    config: RouteConfig
    pattern: re.Pattern[str] | None
    methods: frozenset[str]
    host: str | None

    @property
    def name(self) -> str:
        return self.config.name


def compile_template(template: str) -> re.Pattern[str]:
    """``/api/products/{id}`` → ``^/api/products/(?P<id>[^/]+)$``."""
    out, last = ["^"], 0
    for found in _PARAM.finditer(template):
        out.append(re.escape(template[last : found.start()]))
        group = ".+" if found.group(2) else "[^/]+"
        out.append(f"(?P<{found.group(1)}>{group})")
        last = found.end()
    out.append(re.escape(template[last:]))
    out.append("$")
    return re.compile("".join(out))


def compile_prefix(prefix: str) -> re.Pattern[str]:
    """A prefix matches on segment boundaries: ``/api/search`` matches ``/api/search/x``
    and ``/api/search`` itself, never ``/api/searchers``."""
    if prefix.endswith("/"):
        return re.compile("^" + re.escape(prefix))
    return re.compile("^" + re.escape(prefix) + "(?:/|$)")


def compile_route(config: RouteConfig) -> Route:
    match = config.match
    pattern: re.Pattern[str] | None = None
    if match.path is not None:
        pattern = compile_template(match.path)
    elif match.prefix is not None:
        pattern = compile_prefix(match.prefix)
    elif match.regex is not None:
        pattern = re.compile(match.regex)
    host = match.host.lower() if match.host else None
    return Route(config, pattern, frozenset(match.methods), host)


class Router:
    """Ordered routes; the first whose host, method and path match wins."""

    def __init__(self, configs: list[RouteConfig] | tuple[RouteConfig, ...]) -> None:
        *routes, default = configs
        self.routes = [compile_route(c) for c in routes]
        self.default = Route(default, None, frozenset(), None)
        self.by_name = {r.name: r for r in [*self.routes, self.default]}

    def match(self, method: str, host: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for a request, and the template parameters it captured."""
        for route in self.routes:
            if method not in route.methods:
                continue
            if route.host is not None and route.host != host:
                continue
            if route.pattern is None:
                return route, {}
            found = (
                route.pattern.search(path)
                if route.config.match.regex
                else (route.pattern.match(path))
            )
            if found is not None:
                return route, found.groupdict()
        return self.default, {}
