"""Cache poisoning and deception (after PortSwigger's research): unkeyed inputs never
steer a shared entry, and a response made for one user's credentials is never served
to another. Every test plays an attacker and a victim and asserts there is no leak.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from tests.conftest import MakeProxy, Origin

UNKEYED = {
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Scheme": "nothttps",
    "X-Forwarded-Server": "evil.example",
    "X-Forwarded-Prefix": "/evil",
    "X-Forwarded-Port": "1337",
    "X-Original-URL": "/admin",
    "X-Rewrite-URL": "/admin",
    "X-HTTP-Method-Override": "DELETE",
    "X-HTTP-Method": "DELETE",
    "X-Method-Override": "DELETE",
    "X-Host": "evil.example",
    "Forwarded": "host=evil.example;proto=http",
}


async def reflect(request: web.Request) -> web.Response:
    """An origin that builds its page from whatever forwarding headers it is given."""
    seen = {name: request.headers.get(name, "") for name in UNKEYED}
    body = "".join(f"{name}={value}\n" for name, value in seen.items())
    return web.Response(text=body, headers={"Cache-Control": "max-age=60"})


async def test_unkeyed_forwarding_headers_never_reach_the_origin(
    make_proxy: MakeProxy, origin: Origin
):
    origin.reply("/page", reflect)
    proxy = await make_proxy("defaults: {ttl: 60s}\n")
    attacker = await proxy.get("/page", headers=UNKEYED)
    victim = await proxy.get("/page")
    assert victim.headers["X-Cache"] == "HIT"
    body = (await victim.read()).decode()
    for value in set(UNKEYED.values()):
        assert value not in body
    assert await attacker.read() == await victim.read()
    sent = origin.seen_headers[0]
    assert sent.get("X-Forwarded-Host") == "127.0.0.1:" + proxy.url.rsplit(":", 1)[1]
    for name in UNKEYED:
        if name != "X-Forwarded-Host":
            assert name not in sent


async def test_a_forwarded_header_that_is_also_keyed_cannot_poison(
    make_proxy: MakeProxy, origin: Origin
):
    origin.reply("/page", reflect)
    proxy = await make_proxy(
        """
        defaults: {ttl: 60s}
        routes:
          - name: prefixed
            match: {prefix: /page}
            forward_headers: [X-Forwarded-Prefix]
            key: {headers: [X-Forwarded-Prefix]}
        """
    )
    attacker = await proxy.get("/page", headers={"X-Forwarded-Prefix": "/evil"})
    assert "X-Forwarded-Prefix=/evil" in (await attacker.read()).decode()
    victim = await proxy.get("/page")
    assert victim.headers["X-Cache"] == "MISS"
    assert "/evil" not in (await victim.read()).decode()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_fat_get_is_passed_through_and_never_stored(
    make_proxy: MakeProxy, origin: Origin, method: str
):
    async def by_body(request: web.Request) -> web.Response:
        body = await request.read()
        text = f"for body {body.decode() or '-'}"
        return web.Response(text=text, headers={"Cache-Control": "max-age=60"})

    origin.reply("/item", by_body)
    proxy = await make_proxy("defaults: {ttl: 60s}\n")
    for _ in range(2):
        fat = await proxy.request(method, "/item", data=b"id=666")
        assert fat.headers["X-Cache"] == "BYPASS"
        assert "detail=body" in fat.headers["Cache-Status"]
    chunked = await proxy.request(method, "/item", data=_chunks(b"id=666"))
    assert chunked.headers["X-Cache"] == "BYPASS"
    victim = await proxy.get("/item")
    assert victim.headers["X-Cache"] == "MISS"
    assert await victim.read() == b"for body -"
    again = await proxy.get("/item")
    assert again.headers["X-Cache"] == "HIT"
    assert await again.read() == b"for body -"


async def _chunks(data: bytes):  # type: ignore[no-untyped-def]
    yield data


# ---------------------------------------------------------------- credentials


async def personal(request: web.Request) -> web.Response:
    """A careless origin: personal pages with no Cache-Control at all, for any path
    under /account (like a framework that ignores ``;params`` and suffixes)."""
    cookie = request.cookies.get("session")
    auth = request.headers.get("Authorization")
    user = cookie or (auth.split()[-1] if auth else None)
    if user is None:
        return web.Response(text="please log in")
    return web.Response(text=f"account page of {user}")


DECEPTION = """
defaults: {ttl: 60s}
routes:
  - name: static
    match: {regex: "\\\\.(css|js|png)$"}
    ttl: 1d
    origin_cache_control: ignore
"""


@pytest.mark.parametrize(
    "path",
    ["/account;x.css", "/account/x.css", "/account%3Bx.css", "/account/..;/x.css", "/account"],
)
@pytest.mark.parametrize("credential", ["cookie", "authorization"])
async def test_path_confusion_never_serves_a_private_page_to_another_user(
    make_proxy: MakeProxy, origin: Origin, path: str, credential: str
):
    for decoded in ("/account", "/account;x.css", "/account/x.css", "/account/..;/x.css"):
        origin.reply(decoded, personal)
    proxy = await make_proxy(DECEPTION)
    victim = (
        {"Cookie": "session=alice"} if credential == "cookie" else {"Authorization": "Bearer alice"}
    )
    lured = await proxy.get(path, headers=victim)
    assert lured.status == 200
    attacker = await proxy.get(path)
    assert b"alice" not in await attacker.read()
    other = await proxy.get(path, headers={"Cookie": "session=bob"})
    assert b"alice" not in await other.read()


@pytest.mark.parametrize("credential", ["Cookie", "Authorization"])
async def test_credentialed_responses_are_not_shared_by_default(
    make_proxy: MakeProxy, origin: Origin, credential: str
):
    async def per_user(request: web.Request) -> web.Response:
        who = request.headers.get(credential, "nobody")
        return web.Response(text=f"hello {who}", headers={"Cache-Control": "max-age=60"})

    origin.reply("/me", per_user)
    proxy = await make_proxy("defaults: {ttl: 60s}\n")
    alice = await proxy.get("/me", headers={credential: "alice"})
    assert await alice.read() == b"hello alice"
    bob = await proxy.get("/me", headers={credential: "bob"})
    assert await bob.read() == b"hello bob"
    anonymous = await proxy.get("/me")
    assert await anonymous.read() == b"hello nobody"
    assert origin.hits["/me"] == 3


async def test_public_response_stays_shared_for_credentialed_requests(
    make_proxy: MakeProxy, origin: Origin
):
    """RFC 9111 §3.5: an origin that marks the response ``public`` allows sharing it."""
    origin.reply("/news", body=b"news", headers={"Cache-Control": "public, max-age=60"})
    proxy = await make_proxy("defaults: {ttl: 60s}\n")
    await proxy.get("/news", headers={"Cookie": "session=alice"})
    again = await proxy.get("/news")
    assert again.headers["X-Cache"] == "HIT"


@pytest.mark.parametrize(
    ("name", "alice", "bob"),
    [
        ("Authorization", "Bearer alice", "Bearer bob"),
        ("Cookie", "session=alice; theme=dark", "session=bob; theme=dark"),
    ],
)
async def test_cache_authorized_keys_by_identity(
    make_proxy: MakeProxy, origin: Origin, name: str, alice: str, bob: str
):
    async def per_user(request: web.Request) -> web.Response:
        who = request.headers.get(name, "nobody")
        return web.Response(text=f"hello {who}", headers={"Cache-Control": "max-age=60"})

    origin.reply("/me", per_user)
    proxy = await make_proxy("defaults: {ttl: 60s, cache_authorized: true}\n")
    first = await proxy.get("/me", headers={name: alice})
    assert first.headers["X-Cache"] == "MISS"
    again = await proxy.get("/me", headers={name: alice})
    assert again.headers["X-Cache"] == "HIT"
    assert await again.read() == f"hello {alice}".encode()
    other = await proxy.get("/me", headers={name: bob})
    assert await other.read() == f"hello {bob}".encode()
    anonymous = await proxy.get("/me")
    assert await anonymous.read() == b"hello nobody"
    assert origin.hits["/me"] == 3


async def test_cache_authorized_with_key_cookies_keys_by_those_cookies(
    make_proxy: MakeProxy, origin: Origin
):
    async def per_user(request: web.Request) -> web.Response:
        text = f"hello {request.cookies.get('session', 'nobody')}"
        return web.Response(text=text, headers={"Cache-Control": "max-age=60"})

    origin.reply("/me", per_user)
    proxy = await make_proxy(
        "defaults: {ttl: 60s, cache_authorized: true, key: {cookies: [session]}}\n"
    )
    await proxy.get("/me", headers={"Cookie": "session=alice; _ga=1"})
    again = await proxy.get("/me", headers={"Cookie": "_ga=2; session=alice"})
    assert again.headers["X-Cache"] == "HIT"  # analytics cookies do not split entries
    bob = await proxy.get("/me", headers={"Cookie": "session=bob; _ga=1"})
    assert await bob.read() == b"hello bob"


async def test_key_cookies_alone_does_not_share_credentialed_pages(
    make_proxy: MakeProxy, origin: Origin
):
    """A route keyed on a preference cookie (``lang``) must not store pages that the
    origin personalised by another cookie (``session``) the key does not cover."""

    async def page(request: web.Request) -> web.Response:
        who = request.cookies.get("session", "nobody")
        text = f"{request.cookies.get('lang', 'en')} page of {who}"
        return web.Response(text=text, headers={"Cache-Control": "max-age=60"})

    origin.reply("/home", page)
    proxy = await make_proxy("defaults: {ttl: 60s, key: {cookies: [lang]}}\n")
    await proxy.get("/home", headers={"Cookie": "lang=fr; session=alice"})
    bob = await proxy.get("/home", headers={"Cookie": "lang=fr; session=bob"})
    assert await bob.read() == b"fr page of bob"


async def test_vary_cookie_response_is_stored_per_cookie(make_proxy: MakeProxy, origin: Origin):
    async def per_user(request: web.Request) -> web.Response:
        text = f"hello {request.cookies.get('session', 'nobody')}"
        return web.Response(text=text, headers={"Cache-Control": "max-age=60", "Vary": "Cookie"})

    origin.reply("/me", per_user)
    proxy = await make_proxy("defaults: {ttl: 60s}\n")
    await proxy.get("/me", headers={"Cookie": "session=alice"})
    again = await proxy.get("/me", headers={"Cookie": "session=alice"})
    assert again.headers["X-Cache"] == "HIT"
    bob = await proxy.get("/me", headers={"Cookie": "session=bob"})
    assert await bob.read() == b"hello bob"
    anonymous = await proxy.get("/me")
    assert await anonymous.read() == b"hello nobody"


async def test_vary_is_honoured(make_proxy: MakeProxy, origin: Origin):
    async def localised(request: web.Request) -> web.Response:
        lang = request.headers.get("Accept-Language", "none")
        headers = {"Cache-Control": "max-age=60", "Vary": "Accept-Language"}
        return web.Response(text=f"page in {lang}", headers=headers)

    origin.reply("/page", localised)
    proxy = await make_proxy("defaults: {ttl: 60s}\n")
    for lang in ("en", "fr", "en", "fr"):
        response = await proxy.get("/page", headers={"Accept-Language": lang})
        assert await response.read() == f"page in {lang}".encode()
    plain = await proxy.get("/page")
    assert await plain.read() == b"page in none"
    assert origin.hits["/page"] == 3


async def test_set_cookie_is_never_replayed_to_another_client(
    make_proxy: MakeProxy, origin: Origin
):
    minted = 0

    async def login(request: web.Request) -> web.Response:
        nonlocal minted
        minted += 1
        headers = {"Cache-Control": "max-age=60", "Set-Cookie": f"session=minted-{minted}"}
        return web.Response(text="welcome", headers=headers)

    origin.reply("/login-page", login)
    origin.reply("/stripped", login)
    proxy = await make_proxy(
        """
        defaults: {ttl: 60s}
        routes:
          - name: stripped
            match: {prefix: /stripped}
            strip_set_cookie: true
        """
    )
    first = await proxy.get("/login-page")
    second = await proxy.get("/login-page")
    assert second.headers["X-Cache"] == "MISS"  # not stored with its Set-Cookie
    assert first.headers["Set-Cookie"] != second.headers["Set-Cookie"]
    await proxy.get("/stripped")
    third = await proxy.get("/stripped")
    assert third.headers["X-Cache"] == "HIT"  # stored without it
    assert "Set-Cookie" not in third.headers


async def test_concurrent_users_on_a_cold_key_never_get_each_others_page(
    make_proxy: MakeProxy, origin: Origin
):
    """Coalescing: followers must not be handed a leader's credentialed answer."""

    async def slow_personal(request: web.Request) -> web.Response:
        await asyncio.sleep(0.2)
        return await personal(request)

    origin.reply("/account", slow_personal)
    proxy = await make_proxy("defaults: {ttl: 60s}\n")
    users = [f"user{i}" for i in range(10)] + [None] * 5

    async def fetch(user: str | None) -> tuple[str | None, bytes]:
        headers = {"Cookie": f"session={user}"} if user else {}
        response = await proxy.get("/account", headers=headers)
        return user, await response.read()

    for user, body in await asyncio.gather(*(fetch(u) for u in users)):
        expected = f"account page of {user}" if user else "please log in"
        assert body == expected.encode()
