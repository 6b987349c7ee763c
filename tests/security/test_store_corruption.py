"""Corrupted and foreign values under sidecache keys, in the memory store, a real Redis
and a real Memcached: each is a miss that the next fill overwrites, never a 5xx, never
a garbled body, never a header the origin did not send."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from proxy.core.entry import VERSION
from proxy.core.keys import derive_key
from tests.conftest import MakeProxy, Origin, RunningProxy
from tests.stores.conftest import memcached_keys

BODY = os.urandom(3000)
CHUNKED_BODY = os.urandom(64 * 1024)  # > the 16 KiB items below: stored as chunks


def _reshape(change: Callable[[list[Any]], object]) -> Callable[[bytes], bytes]:
    def corrupt(good: bytes) -> bytes:
        envelope = msgpack.unpackb(good, raw=False)
        changed = change(envelope)
        return msgpack.packb(envelope if changed is None else changed, use_bin_type=True)

    return corrupt


def _set(index: int, value: object) -> Callable[[list[Any]], None]:
    def change(envelope: list[Any]) -> None:
        envelope[index] = value

    return change


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "truncated msgpack": lambda good: good[: len(good) // 2],
    "one byte short": lambda good: good[:-1],
    "trailing garbage": lambda good: good + b"\xc1garbage",
    "empty": lambda good: b"",
    "foreign text": lambda good: b"<html>not ours</html>",
    "foreign json": lambda good: b'{"status": 200, "body": "x"}',
    "pickle": lambda good: b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.",
    "huge declared array": lambda good: b"\xdd\xff\xff\xff\xff\x01",
    "huge declared bin": lambda good: b"\xc6\xff\xff\xff\xff\x00",
    "deep nesting": lambda good: b"\x91" * 100_000,
    "wrong version": _reshape(_set(0, VERSION + 1)),
    "older version": _reshape(_set(0, 0)),
    "unknown kind": _reshape(_set(1, 7)),
    "too few fields": _reshape(lambda e: e[:5]),
    "too many fields": _reshape(lambda e: [*e, "extra"]),
    "status out of range": _reshape(_set(2, 999)),
    "status 1xx": _reshape(_set(2, 101)),
    "status not int": _reshape(_set(2, "200")),
    "odd header list": _reshape(lambda e: e[3].append("X-Orphan")),
    "header not str": _reshape(lambda e: e[3].extend(["X-Int", 5])),
    "body not bytes": _reshape(_set(4, "text")),
    "unknown encoding": _reshape(_set(5, "br")),
    "gzip flag on plain body": _reshape(_set(5, "gzip")),
    "damaged gzip body": _reshape(
        lambda e: e.__setitem__(5, "gzip") or e.__setitem__(4, b"\x1f\x8b" + e[4][:50])
    ),
    "times not numbers": _reshape(_set(6, "yesterday")),
    "tags not strings": _reshape(_set(13, [1, 2])),
    "vary marker naming a missing variant": lambda good: msgpack.packb(
        [VERSION, 1, ["x-foreign"], ["sc:nowhere:v:0"]], use_bin_type=True
    ),
    "vary marker not a list": lambda good: msgpack.packb([VERSION, 1, "x"], use_bin_type=True),
}
# Well-formed envelopes whose fields cannot be written as HTTP: served without them.
UNWRITABLE: dict[str, Callable[[bytes], bytes]] = {
    "header outside latin-1": _reshape(lambda e: e[3].extend(["X-Split", "5 \u20ac"])),
    "response splitting in a header": _reshape(
        lambda e: e[3].extend(["X-Split", "a\r\nSet-Cookie: stolen=1\r\n\r\nHTTP/1.1 200 OK"])
    ),
    "CR in a header name": _reshape(lambda e: e[3].extend(["X-Split\rSet-Cookie", "stolen=1"])),
    "NUL in a header": _reshape(lambda e: e[3].extend(["X-Split", "a\0b"])),
}


def _policy(backend: str) -> str:
    return f"""
        backends: {{{backend}}}
        defaults: {{backend: store, ttl: 60s, compression: {{algorithm: none}}}}
    """


@pytest.fixture(params=["memory", "redis", "memcached"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "store: {type: memory, max_size: 16MiB}"
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return f"store: {{type: redis, url: '{url}', timeout: 1s}}"
    addr = request.getfixturevalue("memcached_addr")
    return f"store: {{type: memcached, servers: ['{addr}'], timeout: 1s, item_size_max: 16KiB}}"


def _key(proxy: RunningProxy, path: str) -> str:
    cfg = proxy.engine.router.default.config
    host = proxy.url.removeprefix("http://")
    return derive_key(cfg.name, host, path, "", cfg.key, {})


async def _cycle(proxy: RunningProxy, origin: Origin, path: str, body: bytes) -> None:
    """After a corruption: a clean miss with the origin's bytes, then a hit (overwritten)."""
    before = origin.hits[path]
    for accept in ("identity", "gzip"):
        miss_or_hit = await proxy.get(path, headers={"Accept-Encoding": accept})
        assert miss_or_hit.status == 200
        assert await miss_or_hit.read() == body
        assert "X-Split" not in miss_or_hit.headers
        assert "stolen=1" not in miss_or_hit.headers.getall("Set-Cookie", [])
    assert origin.hits[path] == before + 1  # one miss, and the refill was a hit
    hit = await proxy.get(path)
    assert hit.headers["X-Cache"] == "HIT"
    assert await hit.read() == body


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
async def test_corrupt_entry_is_a_miss_and_is_overwritten(
    make_proxy: MakeProxy, origin: Origin, backend: str, corrupt: Callable[[bytes], bytes]
):
    origin.reply("/doc", body=BODY, headers={"Content-Type": "application/octet-stream"})
    proxy = await make_proxy(_policy(backend))
    first = await proxy.get("/doc")
    assert first.headers["X-Cache"] == "MISS"
    store, key = proxy.stores["store"], _key(proxy, "/doc")
    good = await store.get(key)
    assert good is not None
    await store.set(key, corrupt(good), 60)
    await _cycle(proxy, origin, "/doc", BODY)


@pytest.mark.parametrize("corrupt", UNWRITABLE.values(), ids=UNWRITABLE.keys())
async def test_unwritable_field_is_dropped_never_split(
    make_proxy: MakeProxy, origin: Origin, backend: str, corrupt: Callable[[bytes], bytes]
):
    origin.reply("/doc", body=BODY, headers={"Content-Type": "application/octet-stream"})
    proxy = await make_proxy(_policy(backend))
    await proxy.get("/doc")
    store, key = proxy.stores["store"], _key(proxy, "/doc")
    good = await store.get(key)
    assert good is not None
    await store.set(key, corrupt(good), 60)
    for _ in range(2):  # the same connection goes on: nothing was injected into it
        served = await proxy.get("/doc")
        assert served.status == 200
        assert await served.read() == BODY
        assert not [k for k in served.headers if k.startswith("X-Split")]
        assert "stolen=1" not in served.headers.getall("Set-Cookie", [])
        assert served.headers["Content-Type"] == "application/octet-stream"


async def test_corrupt_variant_is_a_miss_and_is_overwritten(
    make_proxy: MakeProxy, origin: Origin, backend: str
):
    headers = {"Vary": "Accept-Language", "Content-Type": "application/octet-stream"}
    origin.reply("/v", body=BODY, headers=headers)
    proxy = await make_proxy(_policy(backend))
    await proxy.get("/v", headers={"Accept-Language": "en"})
    store, primary = proxy.stores["store"], _key(proxy, "/v")
    marker = msgpack.unpackb(await store.get(primary), raw=False)
    (variant,) = marker[3]
    await store.set(variant, b"\x93\x01\x00garbage", 60)
    response = await proxy.get("/v", headers={"Accept-Language": "en"})
    assert response.status == 200
    assert await response.read() == BODY
    again = await proxy.get("/v", headers={"Accept-Language": "en"})
    assert again.headers["X-Cache"] == "HIT"


# ---------------------------------------------------------------- memcached, raw


def _mc(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(command)
        return sock.recv(65536)


def _mc_get(port: int, key: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"get %s\r\n" % key)
        data = b""
        while not data.endswith(b"END\r\n"):
            data += sock.recv(65536)
    header, _, rest = data.partition(b"\r\n")
    return rest[: int(header.split()[3])]


def _mc_set(port: int, key: bytes, value: bytes) -> None:
    reply = _mc(port, b"set %s 0 60 %d\r\n%s\r\n" % (key, len(value), value))
    assert reply == b"STORED\r\n"


MC_POLICY = """
backends:
  store: {type: memcached, servers: ['%s'], timeout: 1s, item_size_max: 16KiB}
defaults: {backend: store, ttl: 60s, compression: {algorithm: none}}
"""


async def test_memcached_envelope_garbage_is_a_miss(
    make_proxy: MakeProxy, origin: Origin, memcached_addr: str
):
    origin.reply("/doc", body=BODY)
    proxy = await make_proxy(MC_POLICY % memcached_addr)
    await proxy.get("/doc")
    port = int(memcached_addr.rsplit(":", 1)[1])
    key = _key(proxy, "/doc").encode()
    for garbage in (b"\x00", b"\x93\x00\x90", b"\x93\x01\x90\x94\xa1x\x05\x01\x00", b"\xff" * 10):
        _mc_set(port, key, garbage)
        await _cycle(proxy, origin, "/doc", BODY)


@pytest.mark.parametrize("damage", ["delete", "truncate", "swap"])
async def test_memcached_chunk_damage_is_a_miss_never_a_short_body(
    make_proxy: MakeProxy, origin: Origin, memcached_addr: str, damage: str
):
    origin.reply("/big", body=CHUNKED_BODY, headers={"Content-Type": "application/octet-stream"})
    proxy = await make_proxy(MC_POLICY % memcached_addr)
    await proxy.get("/big")
    port = int(memcached_addr.rsplit(":", 1)[1])
    chunks = sorted(k for k in memcached_keys(port) if k.startswith(b"~c:"))
    assert len(chunks) >= 4
    victim = chunks[len(chunks) // 2]
    if damage == "delete":
        assert _mc(port, b"delete %s\r\n" % victim) == b"DELETED\r\n"
    elif damage == "truncate":
        _mc_set(port, victim, b"short")
    else:  # same length, other bytes: only the digest can tell
        _mc_set(port, victim, os.urandom(len(_mc_get(port, victim))))
    await _cycle(proxy, origin, "/big", CHUNKED_BODY)
