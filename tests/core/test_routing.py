"""proxy/core/routing.py: templates, prefixes, regexes, methods and hosts, first match wins."""

from __future__ import annotations

import textwrap

import pytest

from proxy.core.routing import Router, compile_prefix, compile_template
from proxy.policy.load import DEFAULT_ROUTE, parse_policy

HEAD = "version: 1\norigin: http://127.0.0.1:8000\nroutes:\n"


def router(routes: str) -> Router:
    return Router(parse_policy(HEAD + textwrap.indent(textwrap.dedent(routes), "  ")).routes)


def matched(r: Router, path: str, method: str = "GET", host: str = "example.com") -> str:
    return r.match(method, host, path)[0].name


# ---------------------------------------------------------------- templates


@pytest.mark.parametrize(
    ("template", "path", "params"),
    [
        ("/api/products/{id}", "/api/products/7", {"id": "7"}),
        ("/api/products/{id}", "/api/products/abc-DEF_1.json", {"id": "abc-DEF_1.json"}),
        ("/api/products/{id}", "/api/products/7/", None),
        ("/api/products/{id}", "/api/products/7/reviews", None),
        ("/api/products/{id}", "/api/products/", None),
        ("/api/products/{id}", "/api/products", None),
        ("/api/products/{id}", "/x/api/products/7", None),
        ("/u/{user}/posts/{post}", "/u/ann/posts/12", {"user": "ann", "post": "12"}),
        ("/u/{user}/posts/{post}", "/u/ann/posts", None),
        ("/static/{rest:path}", "/static/css/site.css", {"rest": "css/site.css"}),
        ("/static/{rest:path}", "/static/a", {"rest": "a"}),
        ("/static/{rest:path}", "/static/", None),
        ("/static/{rest:path}", "/static", None),
        ("/files/{rest:path}/edit", "/files/a/b/edit", {"rest": "a/b"}),
        ("/v1.0/{id}", "/v1.0/3", {"id": "3"}),
        ("/v1.0/{id}", "/v1x0/3", None),  # the dot is literal, not a regex wildcard
        ("/a+b/{id}", "/a+b/3", {"id": "3"}),
        ("/exact", "/exact", {}),
        ("/exact", "/exact/", None),
        ("/exact", "/exactly", None),
    ],
)
def test_compile_template(template: str, path: str, params: dict[str, str] | None) -> None:
    found = compile_template(template).match(path)
    if params is None:
        assert found is None
    else:
        assert found is not None
        assert found.groupdict() == params


@pytest.mark.parametrize(
    ("prefix", "path", "matches"),
    [
        ("/api/search", "/api/search", True),
        ("/api/search", "/api/search/", True),
        ("/api/search", "/api/search/x", True),
        ("/api/search", "/api/search/x/y", True),
        ("/api/search", "/api/searchers", False),
        ("/api/search", "/api/searc", False),
        ("/api/search", "/api", False),
        ("/api/search", "/x/api/search", False),
        ("/api/", "/api/x", True),
        ("/api/", "/api", False),
        ("/api/", "/apis", False),
        ("/", "/", True),
        ("/", "/anything/at/all", True),
        ("/a.b", "/a.b/c", True),
        ("/a.b", "/axb/c", False),
    ],
)
def test_compile_prefix_on_segment_boundaries(prefix: str, path: str, matches: bool) -> None:
    assert (compile_prefix(prefix).match(path) is not None) is matches


# ---------------------------------------------------------------- the router

MIXED = """\
- name: product
  match: {path: "/api/products/{id}"}
- name: static
  match: {path: "/static/{rest:path}"}
- name: search
  match: {prefix: /api/search}
- name: cart
  match: {regex: "(cart|checkout)$"}
- name: writes
  match: {prefix: /api, methods: [POST, PUT, delete]}
"""


@pytest.mark.parametrize(
    ("method", "path", "route", "params"),
    [
        ("GET", "/api/products/42", "product", {"id": "42"}),
        ("HEAD", "/api/products/42", "product", {"id": "42"}),
        ("GET", "/api/products/42/reviews", DEFAULT_ROUTE, {}),
        ("GET", "/static/js/app.js", "static", {"rest": "js/app.js"}),
        ("GET", "/api/search", "search", {}),
        ("GET", "/api/search/books", "search", {}),
        ("GET", "/api/searchers", DEFAULT_ROUTE, {}),
        # regexes search anywhere in the path (use ^ to anchor)
        ("GET", "/api/cart", "cart", {}),
        ("GET", "/shop/v2/checkout", "cart", {}),
        ("GET", "/api/cart/items", DEFAULT_ROUTE, {}),
        # methods default to GET and HEAD
        ("POST", "/api/products/42", "writes", {}),
        ("PUT", "/api/search", "writes", {}),
        ("DELETE", "/api/cart", "writes", {}),
        ("PATCH", "/api/products/42", DEFAULT_ROUTE, {}),
        ("OPTIONS", "/api/search", DEFAULT_ROUTE, {}),
        ("POST", "/elsewhere", DEFAULT_ROUTE, {}),
        ("GET", "/", DEFAULT_ROUTE, {}),
    ],
)
def test_router_match(method: str, path: str, route: str, params: dict[str, str]) -> None:
    found, captured = router(MIXED).match(method, "example.com", path)
    assert found.name == route
    assert captured == params


def test_regex_captures_named_groups() -> None:
    r = router('- name: tenant\n  match: {regex: "^/t/(?P<tenant>[a-z]+)/"}\n')
    found, params = r.match("GET", "example.com", "/t/acme/orders")
    assert found.name == "tenant"
    assert params == {"tenant": "acme"}


def test_first_match_wins() -> None:
    r = router(
        """\
        - name: specific
          match: {path: "/api/products/{id}"}
        - name: broad
          match: {prefix: /api}
        - name: never
          match: {path: "/api/products/{id}"}
        """
    )
    assert matched(r, "/api/products/1") == "specific"
    assert matched(r, "/api/other") == "broad"
    assert "never" in r.by_name


def test_order_decides_between_overlapping_routes() -> None:
    r = router(
        """\
        - name: broad
          match: {prefix: /api}
        - name: specific
          match: {path: "/api/products/{id}"}
        """
    )
    assert matched(r, "/api/products/1") == "broad"


def test_a_skipped_method_falls_through_to_a_later_route() -> None:
    r = router(
        """\
        - name: reads
          match: {prefix: /api}
        - name: writes
          match: {prefix: /api, methods: [POST]}
        """
    )
    assert matched(r, "/api/x", "GET") == "reads"
    assert matched(r, "/api/x", "POST") == "writes"


@pytest.mark.parametrize(
    ("host", "route"),
    [
        ("api.example.com", "pinned"),
        ("www.example.com", "open"),
        ("example.com", "open"),
        ("api.example.com.evil", "open"),
        ("", "open"),
    ],
)
def test_host_pinning(host: str, route: str) -> None:
    r = router(
        """\
        - name: pinned
          match: {prefix: /, host: API.Example.COM}
        - name: open
          match: {prefix: /}
        """
    )
    # the server hands the router a lower-cased Host without its port
    assert matched(r, "/x", host=host) == route


def test_route_without_a_path_matcher_matches_every_path() -> None:
    r = router("- name: everything\n  match: {methods: [GET]}\n")
    assert matched(r, "/any/where") == "everything"
    assert matched(r, "/any/where", "HEAD") == DEFAULT_ROUTE


def test_route_without_match_takes_the_default_methods() -> None:
    r = router("- name: reads\n")
    assert matched(r, "/x", "GET") == "reads"
    assert matched(r, "/x", "HEAD") == "reads"
    assert matched(r, "/x", "POST") == DEFAULT_ROUTE


def test_no_routes_means_default_for_everything() -> None:
    r = Router(parse_policy("version: 1\norigin: http://127.0.0.1:8000\n").routes)
    assert r.routes == []
    found, params = r.match("GET", "example.com", "/x")
    assert found is r.default
    assert found.name == DEFAULT_ROUTE
    assert params == {}


def test_routes_are_compiled_once_and_found_by_name() -> None:
    r = router(MIXED)
    assert list(r.by_name) == ["product", "static", "search", "cart", "writes", DEFAULT_ROUTE]
    product = r.by_name["product"]
    assert product.pattern is not None
    assert product.pattern.pattern == compile_template("/api/products/{id}").pattern
    assert product.methods == frozenset({"GET", "HEAD"})
    assert r.by_name["writes"].methods == frozenset({"POST", "PUT", "DELETE"})
    assert product.config.name == "product"
