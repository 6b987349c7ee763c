"""The core proxy in-process against a real origin: HIT/MISS/BYPASS, keys, TTL, HEAD."""

from __future__ import annotations

from tests.conftest import FakeClock, MakeProxy, Origin, Reply

POLICY = """
backends:
  local: {type: memory, max_size: 64MiB}
defaults:
  backend: local
  ttl: 60s
routes:
  - name: products
    match: {path: "/api/products/{id}"}
    ttl: 1h
    key: {query: [lang, page], headers: [Accept-Language]}
  - name: short
    match: {prefix: /short}
    ttl: 1s
  - name: cart
    match: {regex: "^/api/(cart|checkout)"}
    cache: false
"""


async def test_second_get_is_a_hit_with_the_same_body(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    first = await proxy.get("/api/products/1")
    second = await proxy.get("/api/products/1")
    assert first.status == second.status == 200
    assert first.headers["X-Cache"] == "MISS"
    assert second.headers["X-Cache"] == "HIT"
    assert await first.read() == await second.read()
    assert origin.hits["/api/products/1"] == 1
    assert second.headers["Cache-Status"].startswith("sidecache; hit; ttl=")
    assert "fwd=uri-miss" in first.headers["Cache-Status"]
    assert "stored" in first.headers["Cache-Status"]
    assert second.headers["Age"] == "0"


async def test_query_order_does_not_matter(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    await proxy.get("/api/products/1?lang=en&page=2")
    again = await proxy.get("/api/products/1?page=2&lang=en")
    assert again.headers["X-Cache"] == "HIT"
    # a parameter outside key.query does not make a new entry
    other = await proxy.get("/api/products/1?page=2&utm=x&lang=en")
    assert other.headers["X-Cache"] == "HIT"
    different = await proxy.get("/api/products/1?lang=fr&page=2")
    assert different.headers["X-Cache"] == "MISS"
    assert origin.hits["/api/products/1"] == 2


async def test_key_headers_separate_entries(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    await proxy.get("/api/products/1", headers={"Accept-Language": "en"})
    fr = await proxy.get("/api/products/1", headers={"Accept-Language": "fr"})
    en = await proxy.get("/api/products/1", headers={"Accept-Language": "en"})
    assert fr.headers["X-Cache"] == "MISS"
    assert en.headers["X-Cache"] == "HIT"


async def test_head_after_get_is_a_hit(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    got = await proxy.get("/api/products/2")
    head = await proxy.request("HEAD", "/api/products/2")
    assert head.headers["X-Cache"] == "HIT"
    assert head.headers["Content-Length"] == str(len(await got.read()))
    assert await head.read() == b""
    assert origin.hits["/api/products/2"] == 1


async def test_ttl_expiry_refetches(make_proxy: MakeProxy, origin: Origin, fake_clock: FakeClock):
    proxy = await make_proxy(POLICY, clock=fake_clock)
    assert (await proxy.get("/short/a")).headers["X-Cache"] == "MISS"
    assert (await proxy.get("/short/a")).headers["X-Cache"] == "HIT"
    fake_clock.advance(1.5)
    again = await proxy.get("/short/a")
    assert again.headers["X-Cache"] == "MISS"
    assert origin.hits["/short/a"] == 2


async def test_cache_false_route_always_reaches_origin(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    for _ in range(3):
        response = await proxy.get("/api/cart/7")
        assert response.headers["X-Cache"] == "BYPASS"
    assert origin.hits["/api/cart/7"] == 3


async def test_no_store_and_private_are_not_stored(make_proxy: MakeProxy, origin: Origin):
    origin.reply("/nostore", headers={"Cache-Control": "no-store"})
    origin.reply("/private", headers={"Cache-Control": "private, max-age=60"})
    proxy = await make_proxy(POLICY)
    for path in ("/nostore", "/private"):
        await proxy.get(path)
        second = await proxy.get(path)
        assert second.headers["X-Cache"] == "MISS"
        assert origin.hits[path] == 2


async def test_set_cookie_and_authorization_are_not_stored(make_proxy: MakeProxy, origin: Origin):
    origin.reply("/cookie", headers={"Set-Cookie": "session=abc"})
    proxy = await make_proxy(POLICY)
    await proxy.get("/cookie")
    assert (await proxy.get("/cookie")).headers["X-Cache"] == "MISS"
    await proxy.get("/auth", headers={"Authorization": "Bearer one"})
    second = await proxy.get("/auth", headers={"Authorization": "Bearer two"})
    assert second.headers["X-Cache"] == "MISS"
    assert origin.hits["/auth"] == 2


async def test_errors_are_not_stored_by_default(make_proxy: MakeProxy, origin: Origin):
    origin.reply("/boom", status=500)
    proxy = await make_proxy(POLICY)
    await proxy.get("/boom")
    assert (await proxy.get("/boom")).status == 500
    assert origin.hits["/boom"] == 2


async def test_body_bytes_pass_untouched(make_proxy: MakeProxy, origin: Origin):
    payload = bytes(range(256)) * 64
    origin.reply("/bin", body=payload, headers={"Content-Type": "application/octet-stream"})
    origin.reply("/gz", body=b"\x1f\x8b" + b"x" * 2000, headers={"Content-Encoding": "gzip"})
    proxy = await make_proxy(POLICY)
    for _ in range(2):
        response = await proxy.get("/bin")
        assert await response.read() == payload
        raw = await proxy.client.get("/gz", auto_decompress=False)
        assert raw.headers["Content-Encoding"] == "gzip"
        assert await raw.read() == b"\x1f\x8b" + b"x" * 2000


async def test_compressed_storage_served_either_way(make_proxy: MakeProxy, origin: Origin):
    text = b'{"data": "' + b"abc" * 2000 + b'"}'
    origin.reply("/big", body=text)
    proxy = await make_proxy(POLICY)
    await proxy.get("/big")
    plain = await proxy.client.get("/big", headers={"Accept-Encoding": "identity"})
    assert plain.headers["X-Cache"] == "HIT"
    assert "Content-Encoding" not in plain.headers
    assert await plain.read() == text
    gz = await proxy.client.get("/big", headers={"Accept-Encoding": "gzip"})
    assert gz.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in gz.headers["Vary"]
    assert await gz.read() == text  # the client decompresses


async def test_forwarding_headers(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    await proxy.get(
        "/api/cart/1",
        headers={"X-Forwarded-Host": "evil.example", "Connection": "X-Secret", "X-Secret": "1"},
    )
    seen = origin.seen_headers[-1]
    assert seen["Host"] == origin.url.removeprefix("http://")
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["X-Forwarded-Host"] != "evil.example"
    assert "X-Secret" not in seen


async def test_large_response_streams_unstored(make_proxy: MakeProxy, origin: Origin):
    payload = b"z" * (3 * 1024 * 1024)
    origin.reply("/large", body=payload)
    proxy = await make_proxy(POLICY)
    small = await make_proxy(
        POLICY.replace("  ttl: 60s\n", "  ttl: 60s\n  max_object_size: 1MiB\n", 1)
    )
    first = await small.get("/large")
    assert await first.read() == payload
    assert first.headers["X-Cache"] == "MISS"
    assert "detail=size" in first.headers["Cache-Status"]
    assert (await small.get("/large")).headers["X-Cache"] == "MISS"
    assert (await proxy.get("/large")).status == 200


async def test_origin_down_is_a_clean_502(make_proxy: MakeProxy, origin: Origin):
    from proxy.policy.load import parse_policy

    loaded = parse_policy("version: 1\norigin: http://127.0.0.1:9\n", "p.yaml")
    proxy = await make_proxy(loaded=loaded)
    response = await proxy.get("/anything")
    assert response.status == 502


async def test_slow_origin_is_a_504(make_proxy: MakeProxy, origin: Origin):
    origin.reply("/slow", Reply(delay=2.0))
    timed = POLICY.replace("  ttl: 60s\n", "  ttl: 60s\n  timeout: {total: 300ms}\n", 1)
    proxy = await make_proxy(timed)
    response = await proxy.get("/slow")
    assert response.status == 504


async def test_memory_bound_evicts_oldest(make_proxy: MakeProxy, origin: Origin):
    body = b"x" * (64 * 1024)
    bounded = POLICY.replace("max_size: 64MiB", "max_size: 4MiB").replace(
        "  ttl: 60s\n", "  ttl: 60s\n  compression: {algorithm: none}\n", 1
    )
    proxy = await make_proxy(bounded)
    for i in range(200):
        origin.reply(f"/blob/{i}", body=body)
        assert (await proxy.get(f"/blob/{i}")).status == 200
    store = proxy.stores["local"]
    stats = store.stats()
    assert stats.bytes is not None
    assert stats.bytes <= 4 * 1024 * 1024
    assert (await proxy.get("/blob/199")).headers["X-Cache"] == "HIT"
    assert (await proxy.get("/blob/0")).headers["X-Cache"] == "MISS"
    assert stats.evictions
    assert stats.evictions > 100


async def test_unsafe_method_passes_and_invalidates(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    await proxy.get("/things/1")
    assert (await proxy.get("/things/1")).headers["X-Cache"] == "HIT"
    put = await proxy.request("PUT", "/things/1", data=b"new")
    assert put.status == 200
    assert (await proxy.get("/things/1")).headers["X-Cache"] == "MISS"
