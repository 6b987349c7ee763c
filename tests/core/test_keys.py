"""proxy/core/keys.py: what identifies a stored response, and the keys and tags derived from it."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.keys import (
    derive_key,
    normalize_header,
    normalize_query,
    path_tags,
    route_tag,
    user_tag,
    variant_key,
    variant_of,
)
from proxy.policy.load import KeySpec, QueryExclude

ALL = KeySpec()
IGNORE = KeySpec(query="ignore")
ONLY_LANG_PAGE = KeySpec(query=["lang", "page"])
NOT_UTM = KeySpec(query=QueryExclude(exclude=["utm_source", "utm_medium"]))
KEY = re.compile(r"^sc:(?P<route>[^:{}]+):(?P<digest>[0-9a-f]{32})$")


def key(
    query: str = "",
    *,
    spec: KeySpec = ALL,
    route: str = "products",
    host: str = "shop.example",
    path: str = "/api/products/1",
    headers: Mapping[str, str] | None = None,
    identity: str = "",
) -> str:
    return derive_key(route, host, path, query, spec, headers or {}, identity)


# ---------------------------------------------------------------- query normalization


@pytest.mark.parametrize(
    ("query", "spec", "normalized"),
    [
        ("", ALL, ""),
        ("b=2&a=1", ALL, "a=1&b=2"),
        ("a=2&a=1", ALL, "a=1&a=2"),
        ("flag&a=1", ALL, "a=1&flag="),
        ("q=red+shoes", ALL, "q=red%20shoes"),
        ("q=red%20shoes", ALL, "q=red%20shoes"),
        ("q=a%2Bb", ALL, "q=a%2Bb"),
        ("q=%C3%A9", ALL, "q=%C3%A9"),
        ("q=%FF", ALL, "q=%FF"),
        ("x=1%26y%3D2", ALL, "x=1%26y%3D2"),
        ("b=2&a=1", IGNORE, ""),
        ("page=2&utm=x&lang=en", ONLY_LANG_PAGE, "lang=en&page=2"),
        ("utm=x", ONLY_LANG_PAGE, ""),
        ("utm_source=nl&id=3&utm_medium=mail", NOT_UTM, "id=3"),
        ("utm_source=nl", NOT_UTM, ""),
    ],
)
def test_normalize_query(query: str, spec: KeySpec, normalized: str) -> None:
    assert normalize_query(query, spec) == normalized


@pytest.mark.parametrize(
    ("first", "second", "spec"),
    [
        ("a=1&b=2", "b=2&a=1", ALL),
        ("a=1&b=2&c=3", "c=3&a=1&b=2", ALL),
        ("q=red+shoes", "q=red%20shoes", ALL),
        ("q=%41", "q=A", ALL),
        ("flag", "flag=", ALL),
        ("a=1", "b=2", IGNORE),
        ("a=1", "", IGNORE),
        ("lang=en&utm=1", "lang=en", ONLY_LANG_PAGE),
        ("page=2&lang=en&x=1", "lang=en&page=2&y=2", ONLY_LANG_PAGE),
        ("id=3&utm_source=a", "utm_medium=b&id=3", NOT_UTM),
    ],
)
def test_same_key(first: str, second: str, spec: KeySpec) -> None:
    assert key(first, spec=spec) == key(second, spec=spec)


@pytest.mark.parametrize(
    ("first", "second", "spec"),
    [
        ("a=1", "a=2", ALL),
        ("a=1", "", ALL),
        ("a=1&a=2", "a=1", ALL),
        ("q=a+b", "q=a%2Bb", ALL),
        ("x=1&y=2", "x=1%26y%3D2", ALL),
        ("q=%FF", "q=%FE", ALL),  # undecodable bytes must not all become U+FFFD
        ("q=%FF", "q=%EF%BF%BD", ALL),
        ("lang=en", "lang=de", ONLY_LANG_PAGE),
        ("id=3", "id=4", NOT_UTM),
    ],
)
def test_different_key(first: str, second: str, spec: KeySpec) -> None:
    assert key(first, spec=spec) != key(second, spec=spec)


@given(st.lists(st.tuples(st.text(), st.text()), max_size=6), st.randoms())
def test_query_order_never_matters(pairs: list[tuple[str, str]], rnd: random.Random) -> None:
    shuffled = list(pairs)
    rnd.shuffle(shuffled)
    assert key(urlencode(pairs)) == key(urlencode(shuffled))


# ---------------------------------------------------------------- the rest of the key


def test_key_format() -> None:
    found = KEY.match(key("a=1"))
    assert found is not None
    assert found["route"] == "products"


@given(st.text(), st.text(), st.text())
def test_key_format_holds_for_any_request(host: str, path: str, query: str) -> None:
    found = KEY.match(key(query, host=host, path=path, headers={"x": path}))
    assert found is not None


def test_route_names_the_key_and_does_not_change_the_digest() -> None:
    a, b = key(route="a"), key(route="b")
    assert a.startswith("sc:a:")
    assert b.startswith("sc:b:")
    assert a.rsplit(":", 1)[1] == b.rsplit(":", 1)[1]


def test_key_is_stable() -> None:
    assert key("a=1", headers={"accept-language": "en"}) == key(
        "a=1", headers={"accept-language": "en"}
    )


Request = tuple[str, str, str]  # host, path, identity


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("a.example", "/x", ""), ("b.example", "/x", "")),
        (("h", "/api/products/1", ""), ("h", "/api/products/2", "")),
        (("h", "/a/b", ""), ("h", "/a%2Fb", "")),
        (("h", "/a", ""), ("h", "/a/", "")),
        (("a", "b/c", ""), ("ab", "/c", "")),  # the parts are separated, not concatenated
        (("h", "/x", ""), ("h", "/x", "user-1")),
        (("h", "/x", "user-1"), ("h", "/x", "user-2")),
    ],
)
def test_host_path_and_identity_distinguish(first: Request, second: Request) -> None:
    host, path, identity = first
    other_host, other_path, other_identity = second
    assert key(host=host, path=path, identity=identity) != key(
        host=other_host, path=other_path, identity=other_identity
    )


LANG = KeySpec(headers=["Accept-Language"])
TWO_HEADERS = KeySpec(headers=["X-A", "X-B"])
SESSION = KeySpec(cookies=["session"])


@pytest.mark.parametrize(
    ("spec", "first", "second", "same"),
    [
        (LANG, {"accept-language": "en"}, {"accept-language": "de"}, False),
        (LANG, {"accept-language": "en"}, {"accept-language": "en", "x-other": "1"}, True),
        (LANG, {}, {"accept-language": ""}, True),
        (LANG, {}, {"accept-language": "en"}, False),
        (ALL, {"accept-language": "en"}, {"accept-language": "de"}, True),
        (TWO_HEADERS, {"x-a": "1", "x-b": ""}, {"x-a": "", "x-b": "1"}, False),
        (SESSION, {"cookie": "session=abc"}, {"cookie": "session=def"}, False),
        (SESSION, {"cookie": "theme=dark; session=abc"}, {"cookie": "session=abc"}, True),
        (
            SESSION,
            {"cookie": "session=abc; theme=dark"},
            {"cookie": "theme=light;session=abc"},
            True,
        ),
        (SESSION, {"cookie": "xsession=abc"}, {}, True),
        (SESSION, {"cookie": "session=abc"}, {}, False),
        (ALL, {"cookie": "session=abc"}, {"cookie": "session=def"}, True),
    ],
)
def test_headers_and_cookies_in_the_key(
    spec: KeySpec, first: dict[str, str], second: dict[str, str], same: bool
) -> None:
    assert (key(spec=spec, headers=first) == key(spec=spec, headers=second)) is same


def test_header_value_is_not_confused_with_a_cookie() -> None:
    header = KeySpec(headers=["X-Session"])
    cookie = KeySpec(cookies=["session"])
    assert key(spec=header, headers={"x-session": "abc"}) != key(
        spec=cookie, headers={"cookie": "session=abc"}
    )


# ---------------------------------------------------------------- Vary variants


@pytest.mark.parametrize(
    ("value", "normalized"),
    [
        ("en-US,  en;q=0.8", "en-US, en;q=0.8"),
        ("  en\t", "en"),
        ("en", "en"),
        ("", ""),
    ],
)
def test_normalize_header_folds_whitespace(value: str, normalized: str) -> None:
    assert normalize_header("accept-language", value) == normalized


def ae_variant(value: str) -> str:
    return variant_key(key(), variant_of(["accept-encoding"], {"accept-encoding": value}))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("gzip, br", "br, gzip"),
        ("gzip, br", "GZIP, BR"),
        ("gzip, br", "  gzip ,br  "),
        ("gzip, br", "br;q=0.5, gzip;q=0.9"),
        ("gzip", "x-gzip"),
        ("br", "br, gzip;q=0"),
        ("br", "br, gzip;q=0.0"),
    ],
)
def test_accept_encoding_spellings_share_a_variant(first: str, second: str) -> None:
    # Vary: Accept-Encoding must not multiply variants per browser spelling (RFC 9110
    # §12.5.3): order, case, whitespace, weights and refused codings drop out.
    assert ae_variant(first) == ae_variant(second)


@pytest.mark.parametrize(("first", "second"), [("gzip", "br"), ("gzip", "gzip;q=0")])
def test_accept_encoding_that_changes_the_answer_changes_the_variant(
    first: str, second: str
) -> None:
    assert ae_variant(first) != ae_variant(second)


def test_variant_of_picks_and_normalizes_the_vary_fields() -> None:
    headers = {"accept-encoding": "gzip", "accept-language": "en  US", "x-other": "1"}
    picked = variant_of(["accept-encoding", "accept-language"], headers)
    assert picked == (
        ("accept-encoding", normalize_header("accept-encoding", "gzip")),
        ("accept-language", "en US"),
    )
    assert variant_of([], headers) == ()


def test_variant_key_format() -> None:
    primary = key()
    variant = variant_key(primary, (("accept-language", "en"),))
    assert re.fullmatch(re.escape(primary) + r":v:[0-9a-f]{24}", variant)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((("accept-language", "en"),), (("accept-language", "de"),)),
        ((("accept-language", "en"),), (("x-lang", "en"),)),
        ((("a", "1"), ("b", "")), (("a", ""), ("b", "1"))),
        ((("a", "1"),), (("a", "1"), ("b", ""))),
        ((), (("a", ""),)),
    ],
)
def test_variant_keys_differ(
    first: tuple[tuple[str, str], ...], second: tuple[tuple[str, str], ...]
) -> None:
    primary = key()
    assert variant_key(primary, first) != variant_key(primary, second)


def test_variant_key_is_under_its_primary() -> None:
    variant = (("accept-language", "en"),)
    one, two = key(path="/1"), key(path="/2")
    assert variant_key(one, variant).startswith(one + ":v:")
    assert variant_key(one, variant) != variant_key(two, variant)


# ---------------------------------------------------------------- tags


@pytest.mark.parametrize(
    ("path", "tags"),
    [
        ("/api/products/7", ("p:/api", "p:/api/products", "p:/api/products/7")),
        ("/api/products/7/", ("p:/api", "p:/api/products", "p:/api/products/7")),
        ("//api//x", ("p:/api", "p:/api/x")),
        ("/", ("p:/",)),
        ("", ("p:/",)),
        ("/a", ("p:/a",)),
        (
            "/1/2/3/4/5/6/7/8/9/10",
            tuple("p:" + "".join(f"/{i}" for i in range(1, n + 1)) for n in range(1, 9)),
        ),
    ],
)
def test_path_tags(path: str, tags: tuple[str, ...]) -> None:
    assert path_tags(path) == tags


def test_tag_namespaces_do_not_collide() -> None:
    assert route_tag("products") == "r:products"
    assert user_tag("products") == "t:products"
    assert len({route_tag("x"), user_tag("x"), *path_tags("/x")}) == 3


# ---------------------------------------------------------------- key.host

NO_HOST = KeySpec(host=False)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Example.COM:80", "example.com"),
        ("example.com:80", "EXAMPLE.com"),
        ("[::1]:80", "[::1]"),
    ],
)
def test_host_spellings_of_one_authority_share_a_key(first: str, second: str) -> None:
    assert key(host=first) == key(host=second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("example.com:8080", "example.com"),
        ("example.com:8", "example.com"),
        ("svc", "svc.ns"),
    ],
)
def test_other_ports_and_names_stay_apart(first: str, second: str) -> None:
    assert key(host=first) != key(host=second)


def test_key_host_false_keys_every_name_alike() -> None:
    names = ["svc", "svc.ns", "svc.ns.svc.cluster.local", "10.1.2.3:8080", ""]
    assert len({key(host=name, spec=NO_HOST) for name in names}) == 1
    assert key(host="svc", spec=NO_HOST) != key(host="svc")
    assert key(host="svc", path="/a", spec=NO_HOST) != key(host="svc", path="/b", spec=NO_HOST)
