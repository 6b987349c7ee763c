"""``sidecache explain``: which route a request takes, its store key, windows and decision.

Table-driven on one policy that has every kind of match (template, prefix, regex, host,
methods), shadowed routes and a pass-through route; the CLI runs as a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from proxy.core.keys import derive_key
from proxy.ops.explain import BYPASSED, REFUSED, STORED, RequestError, explain
from proxy.policy.load import LoadedPolicy, parse_policy
from tests.conftest import ROOT

POLICY = """version: 1
origin: http://127.0.0.1:8000
backends:
  local: {type: memory}
defaults:
  backend: local
  ttl: 60s
routes:
  - name: products
    match: {path: "/api/products/{id}", methods: [GET, HEAD]}
    ttl: 1h
    max_ttl: 2h
    key: {query: [lang, page], headers: [Accept-Language], cookies: [region]}
    stale_while_revalidate: 30s
    stale_if_error: 10m
    tags: ["product:{id}"]
  - name: admin-host
    match: {prefix: /api, host: admin.example}
  - name: api
    match: {prefix: /api}
    key: {query: {exclude: [utm_source]}}
  - name: products-too
    match: {prefix: /api/products}
  - name: cart
    match: {regex: "^/api/(cart|checkout)"}
    cache: false
  - name: writes
    match: {prefix: /orders, methods: [POST, PUT]}
    invalidates: [api]
  - name: private
    match: {prefix: /me}
    cache_authorized: true
    key: {cookies: [session]}
"""


@pytest.fixture(scope="module")
def loaded() -> LoadedPolicy:
    return parse_policy(POLICY, "policy.yaml")


@pytest.mark.parametrize(
    ("method", "url", "route", "decision", "also"),
    [
        ("GET", "http://shop.example/api/products/7", "products", STORED, ["api", "products-too"]),
        ("HEAD", "http://shop.example/api/products/7", "products", STORED, ["api", "products-too"]),
        ("GET", "http://shop.example/api/products/7/reviews", "api", STORED, ["products-too"]),
        (
            "GET",
            "http://admin.example/api/products/7",
            "products",
            STORED,
            ["admin-host", "api", "products-too"],
        ),
        ("GET", "http://admin.example:8080/api/users", "admin-host", STORED, ["api"]),
        ("GET", "http://shop.example/api/cart/3", "api", STORED, ["cart"]),
        ("GET", "http://shop.example/orders/1", "default", STORED, []),
        ("POST", "http://shop.example/orders/1", "writes", BYPASSED, []),
        ("DELETE", "http://shop.example/api/products/7", "default", BYPASSED, []),
        ("GET", "http://shop.example/elsewhere", "default", STORED, []),
    ],
)
def test_route_shadowed_routes_and_decision(
    loaded: LoadedPolicy, method: str, url: str, route: str, decision: str, also: list[str]
) -> None:
    found = explain(loaded, method, url)
    assert found.route == route
    assert found.decision == decision
    assert found.also_matched == also


def test_template_params_key_parts_and_windows(loaded: LoadedPolicy) -> None:
    found = explain(
        loaded,
        "GET",
        "http://Shop.Example/api/products/7?page=2&utm=x&lang=de",
        ["Accept-Language: de-CH", "Cookie: region=eu; other=1"],
    )
    assert found.params == {"id": "7"}
    assert found.match == {
        "kind": "path",
        "pattern": "/api/products/{id}",
        "methods": ["GET", "HEAD"],
        "host": None,
    }
    assert found.key is not None
    assert found.key["host"] == "shop.example"
    assert found.key["query"] == "lang=de&page=2"
    assert found.key["headers"] == {"Accept-Language": "de-CH"}
    assert found.key["cookies"] == {"region": "eu"}
    cfg = loaded.routes[0]
    hmap = {"accept-language": "de-CH", "cookie": "region=eu; other=1"}
    expected = derive_key(
        "products", "shop.example", "/api/products/7", "page=2&utm=x&lang=de", cfg.key, hmap
    )
    assert found.store_key == expected
    assert found.backend == "local"
    assert found.ttl is not None
    assert (found.ttl["ttl"], found.ttl["max_ttl"]) == (3600.0, 7200.0)
    assert found.ttl["stale_while_revalidate"] == 30.0
    assert found.ttl["stale_if_error"] == 600.0
    assert "t:product:7" in found.index_tags
    assert "r:products" in found.index_tags


def test_head_and_get_share_a_key_and_the_query_rule_applies(loaded: LoadedPolicy) -> None:
    get = explain(loaded, "GET", "http://h/api/x?b=1&utm_source=mail&a=2")
    head = explain(loaded, "HEAD", "http://h/api/x?a=2&b=1")
    assert get.store_key == head.store_key
    assert get.key is not None
    assert get.key["query"] == "a=2&b=1"


def test_regex_route_is_a_pass_through_when_first(loaded: LoadedPolicy) -> None:
    # /api/cart is taken by the 'api' prefix first: the regex route 'cart' is shadowed
    found = explain(loaded, "GET", "http://h/api/checkout")
    assert found.route == "api"
    assert found.also_matched == ["cart"]
    alone = parse_policy(
        POLICY.replace(
            "  - name: admin-host",
            "  - name: cart0\n"
            '    match: {regex: "^/api/(cart|checkout)"}\n    cache: false\n'
            "  - name: admin-host",
        ),
        "p.yaml",
    )
    found = explain(alone, "GET", "http://h/api/checkout?x=1")
    assert found.route == "cart0"
    assert found.decision == BYPASSED
    assert "cache: false" in found.reason
    assert found.store_key is None


@pytest.mark.parametrize(
    ("method", "headers", "reason"),
    [
        ("POST", [], "POST is not cacheable"),
        ("PUT", [], "PUT is not cacheable"),
        ("GET", ["Content-Length: 5"], "fat GET"),
        ("GET", ["Transfer-Encoding: chunked"], "fat GET"),
        ("GET", ['If-Match: "x"'], "precondition"),
        ("PURGE", [], "PURGE is a purge"),
    ],
)
def test_bypassed_requests_say_why(
    loaded: LoadedPolicy, method: str, headers: list[str], reason: str
) -> None:
    found = explain(loaded, method, "http://h/api/products/7", headers)
    assert found.decision == BYPASSED
    assert reason in found.reason
    assert found.store_key is None


def test_unsafe_method_names_what_it_invalidates(loaded: LoadedPolicy) -> None:
    found = explain(loaded, "POST", "http://h/orders/9")
    assert found.route == "writes"
    assert "api" in found.reason
    preflight = explain(loaded, "OPTIONS", "http://h/orders/9")
    assert preflight.reason == "OPTIONS is not cacheable (only GET and HEAD)"  # purges nothing


def test_method_and_host_near_misses(loaded: LoadedPolicy) -> None:
    found = explain(loaded, "GET", "http://h/orders/1")
    assert {"route": "writes", "differs": "method", "route_wants": "POST, PUT"} in (
        found.near_misses
    )
    found = explain(loaded, "GET", "http://shop.example/api/x")
    assert {"route": "admin-host", "differs": "host", "route_wants": "admin.example"} in (
        found.near_misses
    )


def test_authorization_without_opt_in_is_conditional(loaded: LoadedPolicy) -> None:
    found = explain(loaded, "GET", "http://h/api/x", ["Authorization: Bearer t"])
    assert found.decision == STORED
    assert any("cache_authorized" in c for c in found.conditions)


def test_a_range_request_is_looked_up_and_says_it_is_cut_from_the_stored_response(
    loaded: LoadedPolicy,
) -> None:
    found = explain(loaded, "GET", "http://h/api/products/7", ["Range: bytes=0-9"])
    assert found.decision == STORED
    assert found.store_key == explain(loaded, "GET", "http://h/api/products/7").store_key
    assert any(c.startswith("Range: one bytes range is answered 206") for c in found.conditions)


def test_authorized_route_keys_per_identity(loaded: LoadedPolicy) -> None:
    alice = explain(loaded, "GET", "http://h/me", ["Authorization: Bearer a"])
    bob = explain(loaded, "GET", "http://h/me", ["Authorization: Bearer b"])
    assert alice.store_key != bob.store_key
    assert alice.key is not None
    assert alice.key["identity"]


def test_bad_paths_and_requests(loaded: LoadedPolicy) -> None:
    found = explain(loaded, "GET", "http://h/a/%2e%2E%2Fb/../c")
    assert found.decision in (STORED, REFUSED)
    found = explain(loaded, "GET", "http://h/a%00b")
    assert found.decision == REFUSED
    assert found.reason.startswith("400")
    with pytest.raises(RequestError, match="no host"):
        explain(loaded, "GET", "/api/x")
    assert explain(loaded, "GET", "/api/x", ["Host: h"]).route == "api"
    with pytest.raises(RequestError, match="Name: value"):
        explain(loaded, "GET", "http://h/", ["nocolon"])
    with pytest.raises(RequestError, match=r"http://\[::1/x: not a valid URL: Invalid IPv6"):
        explain(loaded, "GET", "http://[::1/x")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], capture_output=True, text=True, cwd=ROOT, timeout=30
    )


def test_cli_text_and_json(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    url = "http://shop.example/api/products/7?lang=de"
    text = _cli("explain", "--policy", str(path), url, "-H", "Accept-Language: de")
    assert text.returncode == 0, text.stderr
    assert "route:      products" in text.stdout
    assert "shadowed:   api, products-too" in text.stdout
    assert "store key:  sc:" in text.stdout
    as_json = _cli("explain", "--policy", str(path), url, "-H", "Accept-Language: de", "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = orjson.loads(as_json.stdout)
    assert data["route"] == "products"
    assert f"store key:  {data['store_key']}  (backend local)" in text.stdout
    post = _cli("explain", "--policy", str(path), "-X", "POST", url, "--json")
    assert orjson.loads(post.stdout)["decision"] == BYPASSED


def test_cli_exit_codes(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    assert _cli("explain", "--policy", str(path), "/no-host").returncode == 2
    broken = _cli("explain", "--policy", str(path), "http://[::1/x")
    assert (broken.returncode, broken.stdout) == (2, "")
    assert broken.stderr == "explain: http://[::1/x: not a valid URL: Invalid IPv6 URL\n"
    path.write_text("version: 1\norigin: 7\nroutes: nope\n")
    assert _cli("explain", "--policy", str(path), "http://h/").returncode == 2


def test_key_host_false_keys_every_host_alike() -> None:
    policy = POLICY.replace(
        "    key: {query: {exclude: [utm_source]}}",
        "    key: {host: false, query: {exclude: [utm_source]}}",
    )
    loaded = parse_policy(policy, "p.yaml")
    one = explain(loaded, "GET", "http://a.example/api/x")
    two = explain(loaded, "GET", "http://b.example:8080/api/x")
    assert one.route == two.route == "api"
    assert one.store_key == two.store_key
    assert one.key is not None
    assert one.key["host"] is None
    keyed = explain(parse_policy(POLICY, "p.yaml"), "GET", "http://A.example:80/api/x")
    assert keyed.key is not None
    assert keyed.key["host"] == "a.example"
    assert keyed.store_key != one.store_key
