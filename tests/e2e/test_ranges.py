"""Ranges from cache (issue 16 item 4), through a real proxy process and a real origin, on
the memory store and on Redis: a single-range GET is cut from the stored whole response
(206 and Content-Range, X-Cache HIT), 416 past the end, the whole 200 for several
ranges or an If-Range that does not hold, HEAD ignores Range, a Vary'd entry and a
gzip-stored body are cut as the client gets them, and a miss fetches the whole."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Mapping
from email.utils import formatdate

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import Origin, ProxyProcess, Reply, SpawnProxy, policy_text

BODY = bytes(range(256)) * 40  # 10,240 bytes, not compressible: stored as it came
TEXT = b"".join(b"line %05d of a text the proxy stores gzipped\n" % i for i in range(100))
BINARY = {"Content-Type": "application/octet-stream", "Cache-Control": "max-age=60"}
IDENTITY = {"Accept-Encoding": "identity"}


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "{type: memory, max_size: 64MiB}"
    return f"{{type: redis, url: '{request.getfixturevalue('redis_url')}'}}"


@pytest.fixture
def proxy(origin: Origin, backend: str, spawn_proxy: SpawnProxy) -> ProxyProcess:
    return spawn_proxy(
        policy_text(
            origin.url,
            f"""
            backends:
              store: {backend}
            defaults:
              backend: store
              ttl: 60s
            routes:
              - name: live
                match: {{prefix: /live}}
                cache: false
              - name: small
                match: {{prefix: /small}}
                max_object_size: 4KiB
            """,
        )
    )


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # bytes as the proxy sent them: a gzip answer stays gzip
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def get(
    client: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
) -> tuple[int, Mapping[str, str], bytes]:
    async with client.request(method, url, headers={**IDENTITY, **(headers or {})}) as response:
        return response.status, response.headers, await response.read()


async def warm(
    origin: Origin,
    client: aiohttp.ClientSession,
    proxy: ProxyProcess,
    path: str,
    extra: Mapping[str, str] | None = None,
) -> str:
    """Serve BODY on ``path`` and have the proxy store it; the proxy's URL for it."""
    origin.reply(path, body=BODY, headers={**BINARY, **(extra or {})})
    status, headers, _ = await get(client, proxy.url + path)
    assert (status, headers["X-Cache"], headers["Accept-Ranges"]) == (200, "MISS", "bytes")
    return proxy.url + path


async def test_first_last_and_suffix_ranges_are_cut_from_the_stored_body(
    origin: Origin, proxy: ProxyProcess, client: aiohttp.ClientSession
) -> None:
    url = await warm(origin, client, proxy, "/file")
    cases = [
        ("bytes=0-99", 0, 99),  # first
        ("bytes=10000-", 10000, 10239),  # last, open
        ("bytes=10239-10239", 10239, 10239),  # the last byte
        ("bytes=-240", 10000, 10239),  # suffix
        ("bytes=-99999", 0, 10239),  # a suffix longer than the body: all of it
        ("bytes=5000-99999", 5000, 10239),  # past the end: to the end
        ("bytes=0-", 0, 10239),
    ]
    for spec, first, last in cases:
        status, headers, body = await get(client, url, {"Range": spec})
        assert status == 206, spec
        assert headers["Content-Range"] == f"bytes {first}-{last}/{len(BODY)}", spec
        assert headers["Content-Length"] == str(last - first + 1), spec
        assert body == BODY[first : last + 1], spec
        assert headers["X-Cache"] == "HIT", spec
        assert "; hit" in headers["Cache-Status"], spec
        assert headers["Accept-Ranges"] == "bytes", spec
        assert headers["Content-Type"] == "application/octet-stream", spec
        assert headers["Cache-Control"] == "max-age=60", spec  # RFC 9110 §15.3.7
        assert "Age" in headers, spec
    assert origin.hits["/file"] == 1


async def test_a_miss_fetches_the_whole_response_and_answers_the_range(
    origin: Origin, proxy: ProxyProcess, client: aiohttp.ClientSession
) -> None:
    origin.reply("/miss", body=BODY, headers={**BINARY, "ETag": '"m1"'})
    status, headers, body = await get(
        client, proxy.url + "/miss", {"Range": "bytes=100-199", "If-Range": '"m1"'}
    )
    assert (status, headers["X-Cache"], body) == (206, "MISS", BODY[100:200])
    assert headers["Content-Range"] == f"bytes 100-199/{len(BODY)}"
    assert "stored" in headers["Cache-Status"]
    seen = {name.lower() for name in origin.seen_headers[0]}
    assert not seen & {"range", "if-range"}  # the origin was asked for the whole
    status, headers, body = await get(client, proxy.url + "/miss")
    assert (status, headers["X-Cache"], body) == (200, "HIT", BODY)
    assert origin.hits["/miss"] == 1


async def test_ranges_asked_together_on_a_cold_key_share_one_fetch(
    origin: Origin, proxy: ProxyProcess, client: aiohttp.ClientSession
) -> None:
    """The leader's whole response answers every follower's own range (coalescing)."""
    origin.reply("/cold", Reply(body=BODY, headers=BINARY, delay=0.5))
    parts = [(i * 500, i * 500 + 99) for i in range(20)]
    answers = await asyncio.gather(
        *(get(client, proxy.url + "/cold", {"Range": f"bytes={a}-{b}"}) for a, b in parts)
    )
    for (first, last), (status, headers, body) in zip(parts, answers, strict=True):
        assert (status, body) == (206, BODY[first : last + 1])
        assert headers["Content-Range"] == f"bytes {first}-{last}/{len(BODY)}"
    assert origin.hits["/cold"] == 1
    assert "range" not in {name.lower() for name in origin.seen_headers[0]}


async def test_if_range_with_a_strong_validator_or_a_date(
    origin: Origin, proxy: ProxyProcess, client: aiohttp.ClientSession
) -> None:
    modified = formatdate(time.time() - 3600, usegmt=True)  # strong: over 60 s before Date
    url = await warm(origin, client, proxy, "/cond", {"ETag": '"c1"', "Last-Modified": modified})
    part = {"Range": "bytes=0-9"}
    holds = ['"c1"', modified]
    fails = ['"c2"', 'W/"c1"', formatdate(time.time() - 7200, usegmt=True), "garbage"]
    for condition in holds:
        status, headers, body = await get(client, url, {**part, "If-Range": condition})
        assert (status, body, headers["X-Cache"]) == (206, BODY[:10], "HIT"), condition
    for condition in fails:  # the whole representation (RFC 9110 §13.1.5)
        status, headers, body = await get(client, url, {**part, "If-Range": condition})
        assert (status, body, headers["X-Cache"]) == (200, BODY, "HIT"), condition
        assert "Content-Range" not in headers, condition
    assert origin.hits["/cond"] == 1


async def test_a_recent_last_modified_is_weak_so_if_range_by_date_gets_the_whole(
    origin: Origin, proxy: ProxyProcess, client: aiohttp.ClientSession
) -> None:
    modified = formatdate(time.time(), usegmt=True)  # the Date's own second: weak (§8.8.2.2)
    url = await warm(origin, client, proxy, "/recent", {"Last-Modified": modified})
    status, _, body = await get(client, url, {"Range": "bytes=0-9", "If-Range": modified})
    assert (status, body) == (200, BODY)


async def test_unsatisfiable_ranges_are_416_with_the_length(
    origin: Origin, proxy: ProxyProcess, client: aiohttp.ClientSession
) -> None:
    url = await warm(origin, client, proxy, "/short")
    for spec in (f"bytes={len(BODY)}-", "bytes=20000-30000", "bytes=-0"):
        status, headers, body = await get(client, url, {"Range": spec})
        assert (status, body) == (416, b""), spec
        assert headers["Content-Range"] == f"bytes */{len(BODY)}", spec
        assert headers["X-Cache"] == "HIT", spec
        # none of the stored response's fields: its freshness would let a cache keep a 416
        assert not {"cache-control", "content-type"} & {k.lower() for k in headers}, spec
    assert origin.hits["/short"] == 1


async def test_several_ranges_or_an_invalid_one_get_the_whole_200(
    origin: Origin, proxy: ProxyProcess, client: aiohttp.ClientSession
) -> None:
    url = await warm(origin, client, proxy, "/multi")
    for spec in ("bytes=0-1,5-6", "bytes=0-1, -5", "bytes=9-2", "items=0-1", "bytes=x-"):
        status, headers, body = await get(client, url, {"Range": spec})
        assert (status, body, headers["X-Cache"]) == (200, BODY, "HIT"), spec
        assert "Content-Range" not in headers, spec
    assert origin.hits["/multi"] == 1


async def test_head_ignores_range(
    origin: Origin, proxy: ProxyProcess, client: aiohttp.ClientSession
) -> None:
    url = await warm(origin, client, proxy, "/head")
    status, headers, body = await get(client, url, {"Range": "bytes=0-9"}, "HEAD")
    assert (status, body, headers["X-Cache"]) == (200, b"", "HIT")
    assert headers["Content-Length"] == str(len(BODY))
    assert headers["Accept-Ranges"] == "bytes"
    assert "Content-Range" not in headers
    assert origin.hits["/head"] == 1
    # a HEAD the cache cannot answer goes forward as a HEAD for the whole
    origin.reply("/head/miss", body=BODY, headers=BINARY)
    condition = {"Range": "bytes=0-9", "If-Range": '"x"'}
    status, headers, _ = await get(client, proxy.url + "/head/miss", condition, "HEAD")
    assert (status, headers["X-Cache"]) == (200, "MISS")
    assert origin.requests[-1].method == "HEAD"
    forwarded = {name.lower() for name in origin.seen_headers[-1]}
    assert "range" not in forwarded
    assert "if-range" not in forwarded


async def test_a_varied_entry_is_cut_from_the_variant_the_request_selects(
    origin: Origin, proxy: ProxyProcess, client: aiohttp.ClientSession
) -> None:
    bodies = {"en": BODY, "fr": BODY[::-1]}

    async def handler(request: web.Request) -> web.Response:
        language = request.headers.get("Accept-Language", "en")
        headers = {**BINARY, "Vary": "Accept-Language"}
        return web.Response(body=bodies[language], headers=headers)

    origin.reply("/varied", handler)
    for language, expected in bodies.items():
        await get(client, proxy.url + "/varied", {"Accept-Language": language})
        status, headers, body = await get(
            client, proxy.url + "/varied", {"Accept-Language": language, "Range": "bytes=-16"}
        )
        assert (status, body, headers["X-Cache"]) == (206, expected[-16:], "HIT"), language
        assert headers["Vary"] == "Accept-Language"
    assert origin.hits["/varied"] == 2


async def test_a_gzip_stored_body_is_cut_as_the_client_gets_it(
    origin: Origin, proxy: ProxyProcess, client: aiohttp.ClientSession
) -> None:
    origin.reply(
        "/text",
        Reply(
            headers={"Content-Type": "text/plain", "ETag": '"t1"', "Cache-Control": "max-age=60"},
            body=TEXT,
        ),
    )
    plain = {"Accept-Encoding": "identity"}
    zipped = {"Accept-Encoding": "gzip"}
    await get(client, proxy.url + "/text", plain)
    status, headers, whole = await get(client, proxy.url + "/text", zipped)
    assert (status, headers["Content-Encoding"]) == (200, "gzip")  # stored gzipped
    assert gzip.decompress(whole) == TEXT
    assert headers["ETag"] == 'W/"t1"'  # another representation: not the strong tag

    # a client that takes gzip: the range is over the gzip bytes it would get whole
    status, headers, body = await get(
        client, proxy.url + "/text", {**zipped, "Range": "bytes=0-99"}
    )
    assert (status, body, headers["Content-Encoding"]) == (206, whole[:100], "gzip")
    assert headers["Content-Range"] == f"bytes 0-99/{len(whole)}"
    # a client that does not: over the decoded bytes, with the origin's strong ETag
    status, headers, body = await get(client, proxy.url + "/text", {**plain, "Range": "bytes=0-99"})
    assert (status, body, headers["ETag"]) == (206, TEXT[:100], '"t1"')
    assert headers["Content-Range"] == f"bytes 0-99/{len(TEXT)}"
    assert "Content-Encoding" not in headers

    # the strong tag is the identity representation's: If-Range with it on the gzip one
    # gets the whole, never gzip bytes spliced into a decoded body
    condition = {"Range": "bytes=100-", "If-Range": '"t1"'}
    status, headers, body = await get(client, proxy.url + "/text", {**zipped, **condition})
    assert (status, body) == (200, whole)
    status, headers, body = await get(client, proxy.url + "/text", {**plain, **condition})
    assert (status, body) == (206, TEXT[100:])
    assert origin.hits["/text"] == 1


async def test_remembered_answers_never_cross_between_range_and_whole(
    origin: Origin, proxy: ProxyProcess, client: aiohttp.ClientSession
) -> None:
    """Identical request heads are answered from the wire memo: a Range request's head
    differs from the plain one's, so neither is ever the other's replay."""
    url = await warm(origin, client, proxy, "/memo")
    for _ in range(5):
        status, _, body = await get(client, url)
        assert (status, body) == (200, BODY)
    for _ in range(5):
        status, headers, body = await get(client, url, {"Range": "bytes=1-3"})
        assert (status, body, headers["Content-Range"]) == (206, BODY[1:4], "bytes 1-3/10240")
    for _ in range(3):
        status, _, body = await get(client, url)
        assert (status, body) == (200, BODY)
    assert origin.hits["/memo"] == 1


async def test_a_route_without_cache_passes_range_through(
    origin: Origin, proxy: ProxyProcess, client: aiohttp.ClientSession
) -> None:
    origin.reply("/live/file", body=BODY, headers=BINARY)
    for _ in range(2):
        _, headers, _ = await get(
            client, proxy.url + "/live/file", {"Range": "bytes=0-1", "If-Range": '"x"'}
        )
        assert headers["X-Cache"] == "BYPASS"
    assert [h.get("Range") for h in origin.seen_headers] == ["bytes=0-1"] * 2
    assert [h.get("If-Range") for h in origin.seen_headers] == ['"x"'] * 2


@pytest.mark.parametrize(
    ("path", "extra"),
    [("/private", {"Cache-Control": "no-store"}), ("/small/big", {})],  # 10 KiB over 4 KiB
)
async def test_an_unstorable_answer_leaves_later_ranges_to_the_origin(
    origin: Origin,
    proxy: ProxyProcess,
    client: aiohttp.ClientSession,
    path: str,
    extra: dict[str, str],
) -> None:
    """Hit-for-miss: once the origin's answer proved unstorable (no-store, or larger
    than max_object_size), a Range request goes to the origin as sent: there is no
    stored whole to cut it from."""
    origin.reply(path, body=BODY, headers={**BINARY, **extra})
    status, headers, body = await get(client, proxy.url + path, {"Range": "bytes=0-1"})
    assert (status, body, headers["X-Cache"]) == (200, BODY, "MISS")  # fetched whole
    status, headers, _ = await get(client, proxy.url + path, {"Range": "bytes=0-1"})
    assert headers["X-Cache"] == "BYPASS"
    assert [h.get("Range") for h in origin.seen_headers] == [None, "bytes=0-1"]
