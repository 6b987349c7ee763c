"""Request targets and Host: absolute-form, CONNECT, Host mismatches, path traversal and
percent-encoding variants, non-ASCII and NUL. A target is either normalised once (so
routing, the cache key and the origin all see the same path) or refused with a 4xx.
"""

from __future__ import annotations

import pytest

from tests.conftest import MakeProxy, Origin
from tests.security.wire import get, talk

POLICY = """
defaults: {ttl: 60s}
routes:
  - name: private
    match: {prefix: /account}
    cache: false
  - name: static
    match: {prefix: /static}
    ttl: 1d
    origin_cache_control: ignore
"""


@pytest.mark.parametrize(
    ("target", "normal"),
    [
        ("/a/../b", "/b"),
        ("/a/./b", "/a/b"),
        ("/a/%2e%2e/b", "/b"),
        ("/a/%2E%2e/b", "/b"),
        ("/a/.%2e/b", "/b"),
        ("//b", "/b"),
        ("/a//b", "/a/b"),
        ("/../../b", "/b"),
        ("/%62", "/b"),
        ("/a/b/..", "/a/"),
        ("/b?x=1", "/b?x=1"),
        ("/b/../b?x=1", "/b?x=1"),
    ],
)
async def test_path_variants_share_one_key_and_one_origin_path(
    make_proxy: MakeProxy, origin: Origin, target: str, normal: str
):
    proxy = await make_proxy(POLICY)
    first, _ = await talk(proxy.url, get(normal))
    again, _ = await talk(proxy.url, get(target))
    assert [a.status for a in first + again] == [200, 200]
    assert again[0].header("X-Cache") == "HIT"  # the same key as the normal spelling
    assert first[0].body == again[0].body
    # and the origin only ever saw the normal spelling
    assert [r.raw_path for r in origin.requests] == [normal]


async def test_traversal_out_of_a_cached_prefix_reaches_the_private_route(
    make_proxy: MakeProxy, origin: Origin
):
    """``/static/../account`` must be routed as ``/account`` (never cached), not as a
    ``/static`` path whose Cache-Control is ignored: that would store an account page
    under a key any client can request (web cache deception)."""
    origin.reply("/account", body=b"alice's account", headers={"Cache-Control": "private"})
    proxy = await make_proxy(POLICY)
    for target in ("/static/../account", "/static/%2e%2e/account", "/static//../account"):
        answers, _ = await talk(proxy.url, get(target, extra="Cookie: session=alice\r\n"))
        assert answers[0].status == 200
        assert answers[0].header("X-Cache") == "BYPASS"
    again, _ = await talk(proxy.url, get("/static/../account"))
    assert again[0].header("X-Cache") == "BYPASS"
    assert origin.hits["/account"] == 4
    assert all(r.raw_path == "/account" for r in origin.requests)


@pytest.mark.parametrize(
    "target",
    [
        b"/a%00b",  # NUL, percent-encoded
        b"/static/..%2faccount",  # a dot segment the origin may see once it decodes %2F
        b"/static/..%2Faccount",
        b"/static/%2e%2e%2faccount",
        b"/static/..%5caccount",
        b"/static\\..\\account",  # backslash: not a URI character
        b"/a%zz",  # broken escapes
        b"/a%4",
        b"/a\x00b",  # raw NUL
        "/caf\u00e9".encode(),  # raw non-ASCII (UTF-8)
        b"/caf\xe9",  # raw non-ASCII (Latin-1)
        b"/a\x7fb",
        b"/a#frag",
        b"/a b",
    ],
)
async def test_unsafe_targets_are_refused(make_proxy: MakeProxy, origin: Origin, target: bytes):
    proxy = await make_proxy(POLICY)
    raw = b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n" + get("/after")
    answers, closed = await talk(proxy.url, raw)
    assert [a.status for a in answers] == [400]
    assert closed
    assert origin.requests == []


async def test_encoded_non_ascii_and_reserved_characters_pass_unchanged(
    make_proxy: MakeProxy, origin: Origin
):
    proxy = await make_proxy(POLICY)
    for target in ("/caf%C3%A9", "/a%2Fb", "/a%3Bb", "/x%20y"):
        answers, _ = await talk(proxy.url, get(target))
        assert answers[0].status == 200
    # escapes are upper-cased (RFC 3986 §6.2.2.1), so /caf%c3%a9 is the same key
    answers, _ = await talk(proxy.url, get("/caf%c3%a9"))
    assert answers[0].header("X-Cache") == "HIT"
    assert [r.raw_path for r in origin.requests] == ["/caf%C3%A9", "/a%2Fb", "/a%3Bb", "/x%20y"]


async def test_absolute_form_never_leaves_the_origin_and_its_authority_is_the_host(
    make_proxy: MakeProxy, origin: Origin
):
    proxy = await make_proxy(POLICY)
    raw = b"GET http://evil.example/abs?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"
    answers, _ = await talk(proxy.url, raw)
    assert answers[0].status == 200
    assert origin.hits["/abs"] == 1  # our origin, never evil.example
    # RFC 9112 §3.2.2: the authority replaces Host, so it is the key's host too
    assert origin.seen_headers[-1]["X-Forwarded-Host"] == "evil.example"
    same, _ = await talk(proxy.url, get("/abs?x=1", host="evil.example"))
    assert same[0].header("X-Cache") == "HIT"
    other, _ = await talk(proxy.url, get("/abs?x=1", host="a"))
    assert other[0].header("X-Cache") == "MISS"
    for bad in (b"ftp://evil/x", b"http://evil", b"http://user@evil/x", b"evil.example:80"):
        answers, closed = await talk(proxy.url, b"GET " + bad + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        assert [a.status for a in answers] == [400], bad
        assert closed


async def test_connect_and_asterisk_form_are_refused(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    connect = b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"
    answers, closed = await talk(proxy.url, connect + get("/after"))
    assert [a.status for a in answers] == [405]
    assert closed
    answers, closed = await talk(proxy.url, b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [a.status for a in answers] == [400]
    assert origin.requests == []


@pytest.mark.parametrize(
    "host",
    [
        b"Host: a\r\nHost: b",  # two Hosts
        b"Host: a\r\nHost: a",
        b"Host: a b",
        b"Host: a@evil",
        b"Host: evil/x",
        b"Host: evil?x",
        b"Host: evil\\x",
        b'Host: "evil"',
        b"Host: a:8o",
        b"",  # none, in HTTP/1.1
        b"Host:",
    ],
)
async def test_bad_host_is_refused(make_proxy: MakeProxy, origin: Origin, host: bytes):
    proxy = await make_proxy(POLICY)
    raw = b"GET /h HTTP/1.1\r\n" + (host + b"\r\n" if host else b"") + b"\r\n"
    answers, closed = await talk(proxy.url, raw + get("/after"))
    assert [a.status for a in answers] == [400]
    assert closed
    assert origin.requests == []


async def test_host_is_keyed_so_a_foreign_host_never_poisons_ours(
    make_proxy: MakeProxy, origin: Origin
):
    """The client's Host reaches the origin only as X-Forwarded-Host; an origin that
    builds links from it answers per Host, and each Host has its own entry."""
    from aiohttp import web

    async def links(request: web.Request) -> web.Response:
        host = request.headers.get("X-Forwarded-Host", "")
        return web.Response(text=f"<script src=//{host}/app.js>")

    origin.reply("/page", links)
    proxy = await make_proxy(POLICY)
    evil, _ = await talk(proxy.url, get("/page", host="evil.example"))
    assert b"//evil.example/app.js" in evil[0].body
    ours, _ = await talk(proxy.url, get("/page", host="shop.example"))
    assert ours[0].header("X-Cache") == "MISS"
    assert b"//shop.example/app.js" in ours[0].body
    # Host case and surrounding space do not make a new entry
    again, _ = await talk(proxy.url, get("/page", host="SHOP.example"))
    assert again[0].header("X-Cache") == "HIT"
    assert origin.hits["/page"] == 2
