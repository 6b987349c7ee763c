"""The warm-restart snapshot: its file format, what a start-up takes from it, and every
way a file can be unusable (each one an empty cache and a WARNING naming the file)."""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path

import pytest

from proxy.ops.snapshot import (
    HEADER,
    MAGIC,
    VERSION,
    Record,
    SnapshotError,
    SnapshotOutdated,
    Snapshots,
    SnapshotTimeout,
    collect,
    read_file,
    records,
    route_of,
    worker_path,
    write_file,
)
from proxy.policy.load import LoadedPolicy, parse_policy
from proxy.stores.base import Store
from proxy.stores.factory import build_stores, close_stores
from proxy.stores.memory import MemoryStore

POLICY = """\
version: 1
origin: http://127.0.0.1:9
backends:
  local: {type: memory, max_size: 64MiB}
  l1: {type: memory, max_size: 8MiB}
  shared: {type: redis, url: "redis://127.0.0.1:1"}
  tier: {type: tiered, l1: l1, l2: shared, l1_ttl: 1h}
defaults: {backend: local}
server: {snapshot: {path: SNAPSHOT, interval: 5m}}
routes:
  - {name: products, match: {prefix: /products}}
  - {name: users, match: {prefix: /users}, backend: tier}
  - {name: cart, match: {prefix: /cart}, cache: false}
"""


def _policy(path: Path, text: str = POLICY) -> LoadedPolicy:
    return parse_policy(text.replace("SNAPSHOT", str(path)))


async def _filled(count: int = 50) -> MemoryStore:
    store = MemoryStore("local", 64 * 1024**2)
    for i in range(count):
        await store.set(f"sc:products:{i:032x}", b"v%d" % i * 10, 600, ["r:products", f"p:/{i}"])
    return store


def _write(path: Path, stores: Mapping[str, Store]) -> int:
    return write_file(str(path), records(collect(stores))).entries


async def test_round_trip_keeps_keys_values_tags_and_expiry(tmp_path: Path) -> None:
    store = await _filled()
    before = time.time()
    assert _write(tmp_path / "snap", {"local": store}) == 50
    got = read_file(str(tmp_path / "snap"))
    assert [r[2] for r in got] == store.keys()  # least recently used first
    first = got[0]
    assert first[:4] == ("local", "products", "sc:products:" + "0" * 32, b"v0" * 10)
    assert before + 590 < first[4] < time.time() + 601
    assert first[5] == ("r:products", "p:/0")


async def test_no_temp_file_is_left_and_a_rewrite_replaces(tmp_path: Path) -> None:
    store = await _filled(5)
    _write(tmp_path / "snap", {"local": store})
    await store.delete(["sc:products:" + "0" * 32])
    _write(tmp_path / "snap", {"local": store})
    assert os.listdir(tmp_path) == ["snap"]
    assert len(read_file(str(tmp_path / "snap"))) == 4


def _corrupt_cases() -> dict[str, Callable[[bytes], bytes]]:
    def flip(data: bytes) -> bytes:
        middle = HEADER.size + (len(data) - HEADER.size) // 2
        return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]

    def version(data: bytes) -> bytes:
        return data[:8] + struct.pack(">H", VERSION + 1) + data[10:]

    return {
        "truncated body": lambda d: d[: len(d) - 100],
        "truncated header": lambda d: d[:20],
        "empty": lambda d: b"",
        "flipped byte": flip,
        "wrong version": version,
        "foreign": lambda d: b"\x89PNG\r\n\x1a\n" + os.urandom(4096),
        "appended": lambda d: d + b"\x00",
    }


@pytest.mark.parametrize("case", list(_corrupt_cases()))
async def test_a_damaged_file_is_refused_with_its_reason(tmp_path: Path, case: str) -> None:
    path = tmp_path / "snap"
    _write(path, {"local": await _filled()})
    path.write_bytes(_corrupt_cases()[case](path.read_bytes()))
    with pytest.raises(SnapshotError) as caught:
        read_file(str(path))
    reason = str(caught.value)
    expected = {
        "truncated body": "truncated",
        "truncated header": "truncated",
        "empty": "truncated",
        "flipped byte": "checksum",
        "wrong version": f"format version {VERSION + 1}",
        "foreign": "not a sidecache snapshot",
        "appended": "truncated",  # the length in the header no longer matches
    }[case]
    assert expected in reason


@pytest.mark.parametrize("case", list(_corrupt_cases()))
async def test_start_on_a_damaged_file_is_an_empty_cache_and_a_warning(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "snap"
    _write(path, {"local": await _filled()})
    path.write_bytes(_corrupt_cases()[case](path.read_bytes()))
    loaded = _policy(path)
    stores = build_stores(loaded.policy.backends)
    try:
        snapshots = Snapshots(loaded.policy.server.snapshot, None, lambda: (loaded, stores))  # type: ignore[arg-type]
        with caplog.at_level(logging.INFO, logger="sidecache"):
            assert await snapshots.load() is None
        assert stores["local"].stats().entries == 0
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert str(path) in warnings[0].getMessage()
        assert "ignored" in warnings[0].getMessage()
    finally:
        await close_stores(stores)


async def test_missing_file_starts_empty_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = _policy(tmp_path / "none")
    stores = build_stores(loaded.policy.backends)
    snapshots = Snapshots(loaded.policy.server.snapshot, None, lambda: (loaded, stores))  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="sidecache"):
        assert await snapshots.load() is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    await close_stores(stores)


async def test_load_skips_expired_gone_and_moved_entries(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    now = time.time()
    items = [
        ("local", "products", "sc:products:a", b"kept", now + 600, ("r:products",)),
        ("local", "products", "sc:products:b", b"expired", now - 1, ()),
        ("local", "gone", "sc:gone:c", b"route gone", now + 600, ()),
        ("l1", "users", "sc:users:d", b"tiered l1 kept", now + 600, ()),
        ("local", "users", "sc:users:e", b"route now on tier", now + 600, ()),
        ("shared", "users", "sc:users:f", b"not a memory store", now + 600, ()),
        ("old", "products", "sc:products:g", b"backend gone", now + 600, ()),
        ("local", "cart", "sc:cart:h", b"cache: false now", now + 600, ()),
    ]
    write_file(str(path), items)
    loaded = _policy(path)
    stores = build_stores(loaded.policy.backends)
    try:
        snapshots = Snapshots(loaded.policy.server.snapshot, None, lambda: (loaded, stores))  # type: ignore[arg-type]
        result = await snapshots.load()
        assert result is not None
        assert result.entries == 2
        assert result.skipped == {
            "expired": 1,
            "route gone": 2,
            "route moved": 1,
            "backend gone": 2,
        }
        local, l1 = stores["local"], stores["l1"]
        assert isinstance(local, MemoryStore)
        assert isinstance(l1, MemoryStore)
        assert local.keys() == ["sc:products:a"]
        assert await l1.get("sc:users:d") == b"tiered l1 kept"
        assert await local.purge_tags(["r:products"]) == 1  # the tag index is rebuilt
    finally:
        await close_stores(stores)


async def test_load_respects_max_size_keeping_the_most_recent(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    big = MemoryStore("local", 64 * 1024**2)
    for i in range(100):
        await big.set(f"sc:products:{i:04d}", bytes(10_000), 600)
    _write(path, {"local": big})
    text = POLICY.replace("max_size: 64MiB", "max_size: 200KiB")
    loaded = _policy(path, text)
    stores = build_stores(loaded.policy.backends)
    try:
        snapshots = Snapshots(loaded.policy.server.snapshot, None, lambda: (loaded, stores))  # type: ignore[arg-type]
        await snapshots.load()
        local = stores["local"]
        assert isinstance(local, MemoryStore)
        held = local.keys()
        assert 0 < len(held) < 100
        assert local.stats().bytes is not None
        assert local.stats().bytes <= 200 * 1024
        assert held[-1] == "sc:products:0099"  # the most recently used survive
    finally:
        await close_stores(stores)


async def test_an_unwritable_path_is_a_logged_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "missing-dir" / "snap"
    loaded = _policy(path)
    stores: dict[str, Store] = {"local": await _filled()}
    snapshots = Snapshots(loaded.policy.server.snapshot, None, lambda: (loaded, stores))  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="sidecache"):
        assert await snapshots.write() is None
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert str(path) in errors[0].getMessage()


async def test_a_write_past_its_deadline_leaves_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    store = MemoryStore("local", 64 * 1024**2)
    for i in range(300):
        await store.set(f"sc:products:{i}", bytes(10_000), 600)
    _write(path, {"local": store})
    before = path.read_bytes()
    await store.set("sc:products:new", b"x", 600)
    with pytest.raises(SnapshotTimeout):
        write_file(str(path), records(collect({"local": store})), deadline=time.monotonic() - 1)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["snap"]


def test_names() -> None:
    assert worker_path("/var/cache/sidecache/snap", None) == "/var/cache/sidecache/snap"
    assert worker_path("/var/cache/sidecache/snap", 2) == "/var/cache/sidecache/snap.w2"
    assert route_of("sc:products:abc") == "products"
    assert route_of("sc:products:abc:v:def") == "products"
    assert route_of("other") == ""
    assert MAGIC.endswith(b"\r\n")
    assert HEADER.size == 52


async def test_a_purge_removes_the_file_so_a_crash_never_restores_it(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    loaded = _policy(path)
    stores: dict[str, Store] = {"local": await _filled()}
    snapshots = Snapshots(loaded.policy.server.snapshot, None, lambda: (loaded, stores))  # type: ignore[arg-type]
    written = await snapshots.write()
    assert written is not None
    assert path.exists()
    assert await stores["local"].purge_tags(["p:/7"]) == 1
    assert not path.exists()
    assert (await snapshots.write()) is not None  # the next write has the purge
    assert "sc:products:" + f"{7:032x}" not in [r[2] for r in read_file(str(path))]


async def test_a_purge_during_a_write_keeps_that_write_from_landing(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    loaded = _policy(path)
    stores: dict[str, Store] = {"local": await _filled()}
    snapshots = Snapshots(loaded.policy.server.snapshot, None, lambda: (loaded, stores))  # type: ignore[arg-type]
    await snapshots.write()
    before = path.read_bytes()
    removals = snapshots._removals

    def purging(items: list[Record]) -> Iterator[Record]:
        for index, item in enumerate(items):
            if index == 10:
                snapshots._removed()  # what a purge on the event loop does meanwhile
            yield item

    items = list(records(collect(stores)))
    with pytest.raises(SnapshotOutdated):
        write_file(str(path), purging(items), publish=partial(snapshots._publish, removals))
    assert not path.exists()  # the purge removed the file; the outdated write did not land
    assert os.listdir(tmp_path) == []
    assert before
