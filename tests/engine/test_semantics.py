"""HTTP caching semantics end to end (issue 5): the proxy in-process on a real socket in
front of a real origin, one test per behaviour, grouped by the RFC section it exercises.
Time moves only through the fake clock, and the origin's Date follows it. What a
decision alone settles (storability, lifetimes, directives) is tested without sockets
in tests/core/; here stays what the wire shows: requests the origin sees, Age, Date,
variants in a store, coalescing, HEAD, invalidation."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from proxy.core.cachecontrol import format_http_date
from tests.conftest import FakeClock, MakeProxy, Origin, RunningProxy

POLICY = """
backends:
  local: {type: memory, max_size: 64MiB}
defaults:
  backend: local
routes:
  - name: ttl
    match: {prefix: /ttl}
    ttl: 60s
  - name: ignore
    match: {prefix: /ignore}
    origin_cache_control: ignore
    ttl: 60s
  - name: capped
    match: {prefix: /capped}
    max_ttl: 10s
  - name: heuristic
    match: {prefix: /heuristic}
    max_heuristic_ttl: 30s
  - name: statuses
    match: {prefix: /statuses}
    statuses: {200: 60s, 500: 5s}
  - name: authz
    match: {prefix: /authz}
    cache_authorized: true
  - name: cookies
    match: {prefix: /cookies}
    strip_set_cookie: true
  - name: honor
    match: {prefix: /honor}
    client_cache_control: honor
  - name: stale
    match: {prefix: /stale}
    stale_while_revalidate: 60s
    stale_if_error: 60s
  - name: cdn
    match: {prefix: /cdn}
    cdn_cache_control: true
  - name: variants
    match: {prefix: /variants}
    max_variants: 2
"""

Headers = Sequence[tuple[str, str]]


@dataclass
class Resource:
    """One path on the origin. It answers ``headers`` (plus a Date from the fake clock
    unless given) and, when ``validators`` is set and the request's If-None-Match or
    If-Modified-Since matches, a 304 carrying ``not_modified`` headers."""

    clock: FakeClock
    headers: Headers = ()
    status: int = 200
    body: bytes = b"hello"
    not_modified: Headers | None = None
    delay: float = 0.0  # seconds of fake time the origin takes to answer
    methods: list[str] = field(default_factory=list)

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.methods.append(request.method)
        self.clock.advance(self.delay)
        if self.not_modified is not None and _validates(request, self.headers):
            return web.Response(status=304, headers=self._dated(self.not_modified))
        body = None if self.status in (204, 304) else self.body
        return web.Response(status=self.status, body=body, headers=self._dated(self.headers))

    def _dated(self, headers: Headers) -> CIMultiDict[str]:
        out = CIMultiDict(headers)
        if "Date" not in out:
            out["Date"] = format_http_date(self.clock.time())
        return out


def _validates(request: web.Request, headers: Headers) -> bool:
    stored = CIMultiDict(headers)
    inm = request.headers.get("If-None-Match")
    if inm is not None:
        return inm == stored.get("ETag")
    ims = request.headers.get("If-Modified-Since")
    return ims is not None and ims == stored.get("Last-Modified")


@pytest.fixture
async def proxy(make_proxy: MakeProxy, fake_clock: FakeClock) -> RunningProxy:
    # whole seconds, as HTTP-dates have them: ages and TTLs come out exact
    fake_clock.advance(math.ceil(fake_clock.time()) - fake_clock.time())
    return await make_proxy(POLICY, clock=fake_clock)


def serve(origin: Origin, clock: FakeClock, path: str, *headers: tuple[str, str], **kw: object):
    resource = Resource(clock, headers, **kw)  # type: ignore[arg-type]
    origin.reply(path, resource)
    return resource


def ago(clock: FakeClock, seconds: float) -> str:
    return format_http_date(clock.time() - seconds)


def later(clock: FakeClock, seconds: float) -> str:
    return format_http_date(clock.time() + seconds)


# RFC 9211 §2: a List member: the cache's name then parameters (key or key=value).
_PARAM = r"[a-z*][a-z0-9_.*-]*(=([-0-9]+|[A-Za-z*][!#$%&'*+.^_`|~0-9A-Za-z:/-]*|\"[^\"]*\"))?"
_MEMBER = re.compile(rf"sidecache(; {_PARAM})*")


def status_of(response: aiohttp.ClientResponse) -> dict[str, str | bool]:
    """The Cache-Status parameters, after checking the member's syntax."""
    member = response.headers["Cache-Status"]
    assert _MEMBER.fullmatch(member), member
    params: dict[str, str | bool] = {}
    for part in member.split("; ")[1:]:
        key, eq, value = part.partition("=")
        params[key] = value if eq else True
    return params


def hits(origin: Origin, path: str) -> int:
    return origin.hits[path]


def sent(origin: Origin, name: str) -> str | None:
    """A header of the last request the origin received."""
    return origin.requests[-1].headers.get(name)


# ---------------------------------------------------------------- policy
# (route settings and lifetimes, §3.5 storing, Set-Cookie: tests/core/test_directives.py)


async def test_a_request_with_authorization_reuses_only_shareable_responses(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    serve(origin, fake_clock, "/anon", ("Cache-Control", "max-age=60"), ("ETag", '"a"'))
    serve(origin, fake_clock, "/shareable", ("Cache-Control", "max-age=60, public"))
    await proxy.get("/anon")
    await proxy.get("/shareable")
    auth = {"Authorization": "Bearer one"}
    forwarded = await proxy.get("/anon", headers=auth)
    assert status_of(forwarded)["fwd"] == "request"
    assert sent(origin, "Authorization") == "Bearer one"
    assert sent(origin, "If-None-Match") == '"a"'
    assert (await proxy.get("/shareable", headers=auth)).headers["X-Cache"] == "HIT"
    assert (await proxy.get("/anon")).headers["X-Cache"] == "HIT"


async def test_cache_authorized_keys_on_the_credentials(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    serve(origin, fake_clock, "/authz/me", ("Cache-Control", "max-age=60"))
    one, two = {"Authorization": "Bearer one"}, {"Authorization": "Bearer two"}
    await proxy.get("/authz/me", headers=one)
    assert (await proxy.get("/authz/me", headers=one)).headers["X-Cache"] == "HIT"
    assert (await proxy.get("/authz/me", headers=two)).headers["X-Cache"] == "MISS"
    assert (await proxy.get("/authz/me")).headers["X-Cache"] == "MISS"


async def test_strip_set_cookie_stores_without_it_and_the_first_client_keeps_it(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    cookie = ("Set-Cookie", "session=abc")
    serve(origin, fake_clock, "/cookies/page", ("Cache-Control", "max-age=60"), cookie)
    serve(origin, fake_clock, "/page", ("Cache-Control", "max-age=60"), cookie)
    first = await proxy.get("/cookies/page")
    assert first.headers["X-Cache"] == "MISS"
    assert first.headers.getall("Set-Cookie") == ["session=abc"]
    second = await proxy.get("/cookies/page")
    assert second.headers["X-Cache"] == "HIT"
    assert "Set-Cookie" not in second.headers
    await proxy.get("/page")
    assert (await proxy.get("/page")).headers["X-Cache"] == "MISS"  # default: not stored


# ---------------------------------------------------------------- §3 storing
# (§5.2-§5.4 parsing, storability and request directives: tests/core/test_directives.py)


async def test_no_transform_keeps_the_origin_bytes(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    text = b"compressible text " * 200
    serve(
        origin,
        fake_clock,
        "/no-transform",
        ("Cache-Control", "max-age=60, no-transform"),
        ("Content-Type", "text/plain"),
        ("ETag", '"t"'),
        body=text,
    )
    serve(
        origin,
        fake_clock,
        "/text",
        ("Cache-Control", "max-age=60"),
        ("Content-Type", "text/plain"),
        body=text,
    )
    gzip = {"Accept-Encoding": "gzip"}
    for path in ("/no-transform", "/text"):
        await proxy.get(path)
    kept = await proxy.client.get("/no-transform", headers=gzip, auto_decompress=False)
    assert kept.headers["X-Cache"] == "HIT"
    assert "Content-Encoding" not in kept.headers
    assert kept.headers["ETag"] == '"t"'
    assert await kept.read() == text
    asked = await proxy.client.get(
        "/text", headers={**gzip, "Cache-Control": "no-transform"}, auto_decompress=False
    )
    assert "Content-Encoding" not in asked.headers
    assert await asked.read() == text
    compressed = await proxy.client.get("/text", headers=gzip, auto_decompress=False)
    assert compressed.headers["Content-Encoding"] == "gzip"  # what no-transform prevents


# ---------------------------------------------------------------- §4.2 freshness and age
# (lifetimes from the origin's fields: tests/core/test_directives.py; here Age on the wire)


async def test_age_counts_the_origin_age_and_the_response_delay(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    serve(origin, fake_clock, "/aged", ("Cache-Control", "max-age=60"), ("Age", "30"))
    serve(origin, fake_clock, "/slow", ("Cache-Control", "max-age=60"), delay=5.0)
    first = await proxy.get("/aged")
    assert int(first.headers["Age"]) == 30
    fake_clock.advance(10)
    hit = await proxy.get("/aged")
    assert hit.headers["X-Cache"] == "HIT"
    assert int(hit.headers["Age"]) == 40
    assert status_of(hit)["ttl"] == "20"
    fake_clock.advance(21)
    assert (await proxy.get("/aged")).headers["X-Cache"] == "MISS"
    await proxy.get("/slow")
    assert int((await proxy.get("/slow")).headers["Age"]) == 5  # §4.2.3 response_delay


async def test_age_is_sent_on_every_reply_from_cache(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    serve(origin, fake_clock, "/age", ("Cache-Control", "max-age=60"), ("ETag", '"a"'))
    await proxy.get("/age")
    fake_clock.advance(3)
    replies = [
        await proxy.get("/age"),
        await proxy.request("HEAD", "/age"),
        await proxy.get("/age", headers={"If-None-Match": '"a"'}),
    ]
    assert [r.status for r in replies] == [200, 200, 304]
    assert [r.headers["Age"] for r in replies] == ["3", "3", "3"]


async def test_a_hit_keeps_the_origin_date(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    serve(origin, fake_clock, "/dated", ("Cache-Control", "max-age=600"))
    first = await proxy.get("/dated")
    fake_clock.advance(100)
    assert (await proxy.get("/dated")).headers["Date"] == first.headers["Date"]


# ---------------------------------------------------------------- §4.1 Vary


async def test_vary_stores_a_variant_per_normalized_value(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    serve(origin, fake_clock, "/negotiated", ("Cache-Control", "max-age=60"), ("Vary", "Foo"))
    assert status_of(await proxy.get("/negotiated", headers={"Foo": "1, 2"}))["fwd"] == "uri-miss"
    same = await proxy.get("/negotiated", headers={"Foo": " 1,2 "})
    assert same.headers["X-Cache"] == "HIT"
    other = await proxy.get("/negotiated", headers={"Foo": "3"})
    assert status_of(other)["fwd"] == "vary-miss"
    absent = await proxy.get("/negotiated")
    assert absent.headers["X-Cache"] == "MISS"
    empty = await proxy.get("/negotiated", headers={"Foo": ""})  # absent only matches absent
    assert empty.headers["X-Cache"] == "MISS"
    assert (await proxy.get("/negotiated", headers={"Foo": "1, 2"})).headers["X-Cache"] == "HIT"
    assert (await proxy.get("/negotiated", headers={"Foo": "3"})).headers["X-Cache"] == "HIT"
    assert (await proxy.get("/negotiated")).headers["X-Cache"] == "HIT"
    assert hits(origin, "/negotiated") == 4


def stored_keys(proxy: RunningProxy, route: str) -> list[str]:
    store: Any = proxy.stores["local"]
    # sc:<route>:<digest>[...], the route possibly a {hash tag}
    return [k for k in store.keys() if k.split(":")[1].strip("{}") == route]  # noqa: SIM118


async def test_max_variants_caps_the_variants_of_a_url(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    serve(origin, fake_clock, "/variants/x", ("Cache-Control", "max-age=60"), ("Vary", "Foo"))
    for value in ("1", "2", "3"):
        await proxy.get("/variants/x", headers={"Foo": value})
    assert len(stored_keys(proxy, "variants")) == 1 + 2  # the marker and two variants
    for value in ("3", "2"):
        assert (await proxy.get("/variants/x", headers={"Foo": value})).headers["X-Cache"] == "HIT"
    oldest = await proxy.get("/variants/x", headers={"Foo": "1"})
    assert status_of(oldest)["fwd"] == "vary-miss"
    assert len(stored_keys(proxy, "variants")) == 1 + 2


async def test_a_changed_vary_set_replaces_the_stored_variants(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    resource = serve(
        origin, fake_clock, "/revary", ("Cache-Control", "max-age=60"), ("Vary", "Foo")
    )
    await proxy.get("/revary", headers={"Foo": "1", "Bar": "a"})
    assert (await proxy.get("/revary", headers={"Foo": "1", "Bar": "b"})).headers[
        "X-Cache"
    ] == "HIT"
    resource.headers = [("Cache-Control", "max-age=60"), ("Vary", "Bar")]
    await proxy.get("/revary", headers={"Foo": "2", "Bar": "a"})  # the origin now varies on Bar
    assert (await proxy.get("/revary", headers={"Foo": "1", "Bar": "b"})).headers[
        "X-Cache"
    ] == "MISS"
    assert (await proxy.get("/revary", headers={"Foo": "9", "Bar": "a"})).headers[
        "X-Cache"
    ] == "HIT"
    assert len(stored_keys(proxy, "default")) == 1 + 2  # the Foo variant is gone


async def test_vary_accept_encoding_is_normalized_to_acceptable_codings(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    serve(
        origin,
        fake_clock,
        "/encoded",
        ("Cache-Control", "max-age=60"),
        ("Vary", "Accept-Encoding"),
        ("Content-Encoding", "br"),
    )
    await proxy.client.get(
        "/encoded", headers={"Accept-Encoding": "gzip, br"}, auto_decompress=False
    )
    same = await proxy.client.get(
        "/encoded", headers={"Accept-Encoding": "BR;q=0.5, gzip"}, auto_decompress=False
    )
    assert same.headers["X-Cache"] == "HIT"
    gzip_only = await proxy.client.get(
        "/encoded", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert gzip_only.headers["X-Cache"] == "MISS"  # a br body must not reach it


async def test_coalesced_followers_get_only_their_own_variant(
    make_proxy: MakeProxy, origin: Origin
):
    async def negotiated(request: web.Request) -> web.Response:
        await asyncio.sleep(0.2)
        lang = request.headers.get("Accept-Language", "none")
        headers = {"Cache-Control": "max-age=60", "Vary": "Accept-Language"}
        return web.Response(body=lang.encode(), headers=headers)

    origin.reply("/lang", negotiated)
    proxy = await make_proxy(POLICY)
    langs = ["en", "de", "en", "fr", "de"]
    replies = await asyncio.gather(
        *(proxy.get("/lang", headers={"Accept-Language": lang}) for lang in langs)
    )
    assert [await r.read() for r in replies] == [lang.encode() for lang in langs]


async def test_a_follower_with_authorization_takes_only_a_shareable_answer(
    make_proxy: MakeProxy, origin: Origin
):
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.2)
        who = request.headers.get("Authorization", "anonymous")
        return web.Response(body=who.encode(), headers={"Cache-Control": "max-age=60"})

    origin.reply("/members", slow)
    proxy = await make_proxy(POLICY)
    anonymous, member = await asyncio.gather(
        proxy.get("/members"), proxy.get("/members", headers={"Authorization": "Bearer m"})
    )
    assert await anonymous.read() == b"anonymous"
    assert await member.read() == b"Bearer m"
    assert origin.hits["/members"] == 2


# ---------------------------------------------------------------- §4.3 validation


async def test_stale_entry_is_revalidated_and_a_304_updates_it(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    etag = ("ETag", '"v1"')
    resource = serve(
        origin,
        fake_clock,
        "/validated",
        ("Cache-Control", "max-age=10"),
        etag,
        ("Test-Header", "A"),
        not_modified=[("Cache-Control", "max-age=100"), etag, ("Test-Header", "B")],
    )
    await proxy.get("/validated")
    fake_clock.advance(11)
    revalidated = await proxy.get("/validated")
    assert sent(origin, "If-None-Match") == '"v1"'
    assert revalidated.status == 200
    assert await revalidated.read() == b"hello"
    assert revalidated.headers["Test-Header"] == "B"
    assert status_of(revalidated)["fwd"] == "stale"
    assert status_of(revalidated)["fwd-status"] == "304"
    fake_clock.advance(50)  # freshened by the 304's max-age=100
    hit = await proxy.get("/validated")
    assert hit.headers["X-Cache"] == "HIT"
    assert hit.headers["Test-Header"] == "B"
    assert resource.methods == ["GET", "GET"]


async def test_last_modified_validation_and_a_200_replaces(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    modified = ago(fake_clock, 3600)
    resource = serve(
        origin,
        fake_clock,
        "/lm",
        ("Cache-Control", "max-age=10"),
        ("Last-Modified", modified),
    )
    await proxy.get("/lm")
    fake_clock.advance(11)
    resource.body = b"changed"
    resource.headers = [("Cache-Control", "max-age=10"), ("Last-Modified", ago(fake_clock, 1))]
    replaced = await proxy.get("/lm")
    assert sent(origin, "If-Modified-Since") == modified
    assert await replaced.read() == b"changed"
    assert await (await proxy.get("/lm")).read() == b"changed"
    assert hits(origin, "/lm") == 2


async def test_a_304_for_another_representation_updates_nothing(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    resource = serve(
        origin,
        fake_clock,
        "/other-etag",
        ("Cache-Control", "max-age=10"),
        ("ETag", '"v1"'),
        not_modified=[("ETag", '"v2"'), ("Cache-Control", "max-age=100")],
    )
    await proxy.get("/other-etag")
    fake_clock.advance(11)
    odd = await proxy.get("/other-etag")
    assert odd.headers["ETag"] == '"v2"'  # as the origin put it, for this client only
    assert status_of(odd)["detail"] == "unmatched-304"
    assert hits(origin, "/other-etag") == 2  # and the request was not re-sent
    resource.not_modified = None
    resource.body = b"second"
    again = await proxy.get("/other-etag")  # §4.3.4: the stored copy was not freshened
    assert await again.read() == b"second"
    assert origin.requests[-1].headers.get("If-None-Match") is None


async def test_no_cache_responses_are_revalidated_on_every_use(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    etag = ("ETag", '"n1"')
    serve(
        origin,
        fake_clock,
        "/no-cache",
        ("Cache-Control", "max-age=3600, no-cache"),
        etag,
        not_modified=[etag],
    )
    await proxy.get("/no-cache")
    for _ in range(2):
        again = await proxy.get("/no-cache")
        assert await again.read() == b"hello"
        assert sent(origin, "If-None-Match") == '"n1"'
    assert hits(origin, "/no-cache") == 3


@pytest.mark.parametrize(
    "conditional",
    [{"If-None-Match": '"c1"'}, {"If-None-Match": 'W/"c1", "x"'}, {"If-Modified-Since": "lm"}],
)
async def test_client_conditionals_get_a_304_from_a_fresh_entry(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock, conditional: dict[str, str]
):
    modified = ago(fake_clock, 3600)
    serve(
        origin,
        fake_clock,
        "/conditional",
        ("Cache-Control", "max-age=60"),
        ("ETag", '"c1"'),
        ("Last-Modified", modified),
    )
    await proxy.get("/conditional")
    headers = {k: modified if v == "lm" else v for k, v in conditional.items()}
    answer = await proxy.get("/conditional", headers=headers)
    assert answer.status == 304
    assert answer.headers["ETag"] == '"c1"'
    assert status_of(answer)["hit"] is True
    assert hits(origin, "/conditional") == 1
    changed = await proxy.get("/conditional", headers={"If-None-Match": '"other"'})
    assert changed.status == 200


# ---------------------------------------------------------------- §4.2.4, RFC 5861 stale


async def test_stale_while_revalidate_then_stale_if_error(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    resource = serve(
        origin, fake_clock, "/stale/ok", ("Cache-Control", "max-age=1, stale-if-error=300")
    )
    await proxy.get("/stale/ok")
    fake_clock.advance(2)
    served = await proxy.get("/stale/ok")
    assert served.headers["X-Cache"] == "STALE"
    assert status_of(served)["hit"] is True
    assert status_of(served)["detail"] == "stale-while-revalidate"
    for _ in range(50):  # the background refresh
        if hits(origin, "/stale/ok") == 2:
            break
        await asyncio.sleep(0.01)
    fake_clock.advance(70)  # past the route's 60s of stale-while-revalidate
    resource.status = 503
    failed_over = await proxy.get("/stale/ok")
    assert failed_over.status == 200
    assert status_of(failed_over) == {
        "fwd": "stale",
        "fwd-status": "503",
        "ttl": status_of(failed_over)["ttl"],
        "detail": "stale-if-error",
    }


async def test_stale_if_error_covers_a_dropped_connection(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    serve(origin, fake_clock, "/stale/down", ("Cache-Control", "max-age=1, stale-if-error=300"))
    await proxy.get("/stale/down")
    fake_clock.advance(70)  # past the route's stale-while-revalidate

    async def hang_up(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(0.01)
        return web.Response()

    origin.reply("/stale/down", hang_up)
    answer = await proxy.get("/stale/down")
    assert answer.status == 200
    assert answer.headers["X-Cache"] == "STALE"
    assert status_of(answer) == {"fwd": "stale", "ttl": "-69", "detail": "stale-if-error"}


# ---------------------------------------------------------------- §5.2.1 request directives
# (what each directive decides: tests/core/test_directives.py; here what the wire shows)


async def test_only_if_cached(proxy: RunningProxy, origin: Origin, fake_clock: FakeClock):
    serve(origin, fake_clock, "/honor/oic", ("Cache-Control", "max-age=60"))
    only = {"Cache-Control": "only-if-cached"}
    missing = await proxy.get("/honor/oic", headers=only)
    assert missing.status == 504
    assert hits(origin, "/honor/oic") == 0
    await proxy.get("/honor/oic")
    assert (await proxy.get("/honor/oic", headers=only)).headers["X-Cache"] == "HIT"
    fake_clock.advance(61)
    assert (await proxy.get("/honor/oic", headers=only)).status == 504


async def test_request_no_cache_and_no_store_when_honoured(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    serve(origin, fake_clock, "/honor/nc", ("Cache-Control", "max-age=60"))
    serve(origin, fake_clock, "/honor/ns", ("Cache-Control", "max-age=60"))
    await proxy.get("/honor/nc")
    forwarded = await proxy.get("/honor/nc", headers={"Cache-Control": "no-cache"})
    assert status_of(forwarded)["fwd"] == "request"
    assert hits(origin, "/honor/nc") == 2
    await proxy.get("/honor/nc", headers={"Pragma": "no-cache"})  # §5.4
    assert hits(origin, "/honor/nc") == 3
    unstored = await proxy.get("/honor/ns", headers={"Cache-Control": "no-store"})
    assert status_of(unstored)["detail"] == "request-no-store"
    assert (await proxy.get("/honor/ns")).headers["X-Cache"] == "MISS"


# ---------------------------------------------------------------- §4.4 invalidation


async def test_unsafe_methods_invalidate_the_target_and_same_origin_locations(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    fresh = ("Cache-Control", "max-age=600")
    for path in ("/inv/a", "/inv/b", "/inv/c", "/inv/d", "/inv/e"):
        serve(origin, fake_clock, path, fresh)
        await proxy.get(path)
    host = origin.url.removeprefix("http://")
    serve(
        origin,
        fake_clock,
        "/inv/post",
        ("Location", "b"),  # relative to the target
        ("Content-Location", f"http://{host}/inv/c"),
        status=201,
    )
    serve(origin, fake_clock, "/inv/foreign", ("Location", "http://elsewhere.test/inv/d"))
    serve(origin, fake_clock, "/inv/e", fresh)
    assert (await proxy.request("POST", "/inv/post", data=b"x")).status == 201
    await proxy.request("POST", "/inv/foreign", data=b"x")
    for path, kept in (("/inv/a", True), ("/inv/b", False), ("/inv/c", False), ("/inv/d", True)):
        assert ((await proxy.get(path)).headers["X-Cache"] == "HIT") is kept, path
    await proxy.request("M-SEARCH", "/inv/e")  # a method of unknown safety
    assert (await proxy.get("/inv/e")).headers["X-Cache"] == "MISS"


async def test_unsafe_invalidation_finds_paths_in_any_spelling_and_at_any_depth(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    # a Location spelled with escapes or dot segments names the entry stored under its
    # normalized path; a target deeper than the 8 segments entries are tagged with too
    fresh = ("Cache-Control", "max-age=600")
    deep = "/inv/1/2/3/4/5/6/7/8/9"
    for path in ("/inv/f", "/inv/g", deep):
        serve(origin, fake_clock, path, fresh)
        await proxy.get(path)
        assert (await proxy.get(path)).headers["X-Cache"] == "HIT", path
    serve(origin, fake_clock, "/inv/post2", ("Location", "/inv/%66"), status=201)
    serve(origin, fake_clock, "/inv/post3", ("Location", "/inv/x/../g"), status=201)
    serve(origin, fake_clock, deep, fresh)
    assert (await proxy.request("POST", "/inv/post2", data=b"x")).status == 201
    assert (await proxy.request("POST", "/inv/post3", data=b"x")).status == 201
    assert (await proxy.request("DELETE", deep)).status == 200
    for path in ("/inv/f", "/inv/g", deep):
        assert (await proxy.get(path)).headers["X-Cache"] == "MISS", path


async def test_an_error_response_invalidates_nothing(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    resource = serve(origin, fake_clock, "/inv/kept", ("Cache-Control", "max-age=600"))
    await proxy.get("/inv/kept")
    resource.status = 500
    assert (await proxy.request("DELETE", "/inv/kept")).status == 500
    assert (await proxy.get("/inv/kept")).headers["X-Cache"] == "HIT"


# ---------------------------------------------------------------- HEAD (§4.3.5) and Range (§14)


async def test_head_is_answered_from_a_stored_get(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    resource = serve(origin, fake_clock, "/head", ("Cache-Control", "max-age=60"))
    await proxy.get("/head")
    head = await proxy.request("HEAD", "/head")
    assert head.headers["X-Cache"] == "HIT"
    assert head.headers["Content-Length"] == "5"
    assert resource.methods == ["GET"]


async def test_head_on_a_stale_entry_goes_forward_as_head_and_updates_it(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    resource = serve(
        origin, fake_clock, "/head/stale", ("Cache-Control", "max-age=2"), ("Template-A", "1")
    )
    await proxy.get("/head/stale")
    fake_clock.advance(3)
    resource.headers = [("Cache-Control", "max-age=100"), ("Template-A", "2")]
    head = await proxy.request("HEAD", "/head/stale")
    assert resource.methods == ["GET", "HEAD"]
    assert head.headers["Template-A"] == "2"
    assert head.headers["Content-Length"] == "5"
    assert status_of(head)["stored"] is True
    updated = await proxy.get("/head/stale")
    assert updated.headers["X-Cache"] == "HIT"
    assert updated.headers["Template-A"] == "2"
    assert await updated.read() == b"hello"


async def test_a_mismatching_head_answer_drops_the_stored_get(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    resource = serve(
        origin, fake_clock, "/head/changed", ("Cache-Control", "max-age=2"), ("ETag", '"1"')
    )
    await proxy.get("/head/changed")
    fake_clock.advance(3)
    resource.headers = [("Cache-Control", "max-age=100"), ("ETag", '"2"')]
    resource.body = b"HELLO"  # the same length: only the validator tells
    await proxy.request("HEAD", "/head/changed")
    after = await proxy.get("/head/changed")
    assert await after.read() == b"HELLO"
    assert origin.requests[-1].headers.get("If-None-Match") is None


async def test_range_requests_are_cut_from_the_stored_response(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    serve(origin, fake_clock, "/range", ("Cache-Control", "max-age=60"))
    ranged = await proxy.get("/range", headers={"Range": "bytes=0-1"})
    assert (ranged.status, ranged.headers["X-Cache"]) == (206, "MISS")
    assert await ranged.read() == b"he"
    assert sent(origin, "Range") is None  # fetched whole, and stored
    hit = await proxy.get("/range", headers={"Range": "bytes=1-"})
    assert (hit.status, hit.headers["X-Cache"], await hit.read()) == (206, "HIT", b"ello")
    assert hit.headers["Content-Range"] == "bytes 1-4/5"
    assert hits(origin, "/range") == 1


async def test_a_matching_if_none_match_wins_over_range(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    """RFC 9110 §13.2.2: If-None-Match is evaluated before Range."""
    serve(origin, fake_clock, "/range/etag", ("Cache-Control", "max-age=60"), ("ETag", '"e"'))
    await proxy.get("/range/etag")
    answer = await proxy.get("/range/etag", headers={"Range": "bytes=0-1", "If-None-Match": '"e"'})
    assert (answer.status, answer.headers["X-Cache"]) == (304, "HIT")


async def test_a_range_of_a_revalidated_entry_is_cut_from_the_freshened_response(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    serve(
        origin,
        fake_clock,
        "/range/revalidated",
        ("Cache-Control", "max-age=2"),
        ("ETag", '"r"'),
        not_modified=[("Cache-Control", "max-age=60"), ("ETag", '"r"')],
    )
    await proxy.get("/range/revalidated")
    fake_clock.advance(3)
    ranged = await proxy.get("/range/revalidated", headers={"Range": "bytes=-3", "If-Range": '"r"'})
    assert (ranged.status, await ranged.read()) == (206, b"llo")
    assert status_of(ranged)["fwd-status"] == "304"
    assert sent(origin, "If-None-Match") == '"r"'  # the proxy's validation, not the client's
    assert sent(origin, "Range") is None
    assert sent(origin, "If-Range") is None


async def test_stale_while_revalidate_answers_a_range_stale(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    serve(origin, fake_clock, "/stale/range", ("Cache-Control", "max-age=1"))
    await proxy.get("/stale/range")
    fake_clock.advance(5)
    stale = await proxy.get("/stale/range", headers={"Range": "bytes=0-0"})
    assert (stale.status, stale.headers["X-Cache"], await stale.read()) == (206, "STALE", b"h")


# ---------------------------------------------------------------- RFC 9211 Cache-Status


async def test_cache_status_parameters(proxy: RunningProxy, origin: Origin, fake_clock: FakeClock):
    serve(origin, fake_clock, "/status", ("Cache-Control", "max-age=60"))
    serve(origin, fake_clock, "/status-nostore", ("Cache-Control", "no-store"))
    origin.reply("/created", Resource(fake_clock, status=201))
    miss = status_of(await proxy.get("/status"))
    assert miss == {"fwd": "uri-miss", "fwd-status": "200", "stored": True, "ttl": "60"}
    fake_clock.advance(15)
    assert status_of(await proxy.get("/status")) == {"hit": True, "ttl": "45"}
    unstored = status_of(await proxy.get("/status-nostore"))
    assert unstored == {"fwd": "uri-miss", "fwd-status": "200", "detail": "no-store"}
    method = status_of(await proxy.request("PUT", "/created", data=b"x"))
    assert method == {"fwd": "method", "fwd-status": "201"}
    bypass = status_of(await proxy.get("/status", data=b"fat"))
    assert bypass["fwd"] == "bypass"


async def test_cache_status_collapsed(make_proxy: MakeProxy, origin: Origin):
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        return web.Response(body=b"x", headers={"Cache-Control": "max-age=60"})

    origin.reply("/collapse", slow)
    proxy = await make_proxy(POLICY)
    replies = await asyncio.gather(*(proxy.get("/collapse") for _ in range(5)))
    statuses = [status_of(r) for r in replies]
    assert sum(1 for s in statuses if s.get("stored")) == 1
    followers = [s for s in statuses if s.get("collapsed")]
    assert followers
    assert all(s["fwd"] == "uri-miss" and s["fwd-status"] == "200" for s in followers)
    assert origin.hits["/collapse"] == 1


# ---------------------------------------------------------------- acceptance


async def test_uncacheable_requests_pass_through_untouched(
    proxy: RunningProxy, origin: Origin, fake_clock: FakeClock
):
    origin.reply("/things", Resource(fake_clock, [("Location", "/things/9")], status=201))
    created = await proxy.request(
        "PUT",
        "/things",
        data=b'{"name": "x"}',
        headers={"X-Unknown-Thing": "  Odd,Value ", "Content-Type": "application/json"},
    )
    assert created.status == 201
    assert created.headers["Location"] == "/things/9"
    seen = origin.requests[-1]
    assert seen.method == "PUT"
    assert seen.headers["X-Unknown-Thing"] == "Odd,Value"  # (the server trims OWS)
    assert [n for n in seen.raw_headers if n[0] == b"X-Unknown-Thing"]


async def test_a_request_is_never_retried(proxy: RunningProxy, origin: Origin):
    async def hang_up(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(0.01)
        return web.Response()

    for path in ("/hangup/get", "/hangup/put"):
        origin.reply(path, hang_up)
    assert (await proxy.get("/hangup/get")).status == 502
    assert (await proxy.request("PUT", "/hangup/put", data=b"x")).status == 502
    assert origin.hits["/hangup/get"] == origin.hits["/hangup/put"] == 1
