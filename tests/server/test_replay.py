"""The wire memo: a request head seen before, byte for byte, is answered from the bytes
of its last answer. What a client sees must not change: Age and Cache-Status move with
time, freshness ends on time, a replaced or purged entry and a new policy take effect,
HEAD, 304 and Connection: close keep their framing."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import replace
from email.utils import parsedate_to_datetime

import orjson
import pytest

from proxy.clock import FakeClock
from proxy.core.entry import CachedResponse, decode, encode
from proxy.engine.decoded import DECODED_BYTES
from proxy.engine.memo import MEMO_BYTES
from proxy.obs.logs import AccessLog
from proxy.policy.load import parse_policy
from tests.conftest import MakeProxy, Origin, Reply, RunningProxy, policy_text
from tests.server.rawclient import Conn

POLICY = """
defaults: {ttl: 10s}
"""


GET = b"GET /r/1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"


def _memo_size(proxy: RunningProxy) -> int:
    assert proxy.http is not None
    return len(proxy.http.memo)


async def test_age_and_freshness_stay_exact(make_proxy: MakeProxy, origin: Origin):
    # a whole second, so the origin's Date (one-second resolution) adds no initial age
    clock = FakeClock(start=float(int(time.time())))
    origin.clock = clock
    proxy = await make_proxy(POLICY, clock=clock)
    conn = await Conn.open(proxy)
    status, headers, first = await conn.ask(GET)
    assert (status, headers["x-cache"]) == (200, "MISS")
    ages, ttls = [], []
    for step in (0.0, 0.0, 0.4, 0.7, 0.0, 3.2, 5.0):
        clock.advance(step)
        status, headers, body = await conn.ask(GET)
        assert (status, headers["x-cache"], body) == (200, "HIT", first)
        ages.append(int(headers["age"]))
        ttls.append(int(headers["cache-status"].partition("ttl=")[2]))
    assert _memo_size(proxy) == 1  # the hits above were replays
    assert ages == [0, 0, 0, 1, 1, 4, 9]
    assert ttls == [10, 10, 9, 8, 8, 5, 0]
    clock.advance(0.75)  # age 10.05 of 10 s: no longer fresh
    _, headers, _ = await conn.ask(GET)
    assert headers["x-cache"] != "HIT"
    assert origin.hits["/r/1"] == 2
    # the refreshed entry replaces the remembered answer: its body, its Age
    _, headers, body = await conn.ask(GET)
    assert (headers["x-cache"], headers["age"]) == ("HIT", "0")
    assert b'"hit": 2' in body
    conn.close()


async def test_a_purged_entry_is_not_replayed(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    conn = await Conn.open(proxy)
    for _ in range(3):
        await conn.ask(GET)
    assert _memo_size(proxy) == 1
    assert proxy.http is not None
    ticket = proxy.http.memo.entries[GET].ticket
    store = proxy.engine.stores[ticket.route.config.backend]
    assert await store.delete([ticket.key]) == 1
    _, headers, _ = await conn.ask(GET)
    assert headers["x-cache"] == "MISS"
    assert origin.hits["/r/1"] == 2
    conn.close()


async def test_a_replaced_entry_is_not_replayed(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    conn = await Conn.open(proxy)
    for _ in range(4):  # remembered on its repeat, then replayed
        _, headers, first = await conn.ask(GET)
        assert headers["x-cache"] in ("MISS", "HIT")
    assert proxy.http is not None
    ticket = proxy.http.memo.entries[GET].ticket
    store = proxy.engine.stores[ticket.route.config.backend]
    stored = decode(await store.get(ticket.key) or b"")
    assert isinstance(stored, CachedResponse)
    await store.set(ticket.key, encode(replace(stored, body=b"replaced")), 60)
    _, headers, body = await conn.ask(GET)
    assert (headers["x-cache"], body) == ("HIT", b"replaced")
    assert first != body
    assert origin.hits["/r/1"] == 1
    conn.close()


async def test_a_date_we_added_moves_with_the_wall_clock(make_proxy: MakeProxy, origin: Origin):
    # A stored response without Date is answered with ours (RFC 9110 §6.6.1), written
    # once a second: a replay must not repeat last second's Date, even while the engine
    # clock (frozen here, mid-second) says Age and Cache-Status are unchanged.
    clock = FakeClock(start=int(time.time()) + 0.5)
    origin.clock = clock
    proxy = await make_proxy(POLICY, clock=clock)
    conn = await Conn.open(proxy)
    for _ in range(3):  # a miss, a hit, a repeated hit: remembered
        await conn.ask(GET)
    assert proxy.http is not None
    ticket = proxy.http.memo.entries[GET].ticket
    store = proxy.engine.stores[ticket.route.config.backend]
    stored = decode(await store.get(ticket.key) or b"")
    assert isinstance(stored, CachedResponse)
    undated = tuple((k, v) for k, v in stored.headers if k.lower() != "date")
    await store.set(ticket.key, encode(replace(stored, headers=undated)), 60)
    dates = []
    for _ in range(3):  # the new entry's answer, built once, then replayed
        _, headers, _ = await conn.ask(GET)
        assert headers["x-cache"] == "HIT"
        dates.append(parsedate_to_datetime(headers["date"]).timestamp())
    assert _memo_size(proxy) == 1
    await asyncio.sleep(max(0.0, dates[-1] + 1 - time.time()))  # the next second, no more
    _, headers, _ = await conn.ask(GET)
    assert (headers["x-cache"], headers["age"]) == ("HIT", "0")
    assert parsedate_to_datetime(headers["date"]).timestamp() > dates[-1]
    assert origin.hits["/r/1"] == 1
    conn.close()


async def test_a_new_policy_is_applied_to_remembered_requests(
    make_proxy: MakeProxy, origin: Origin
):
    proxy = await make_proxy(POLICY)
    conn = await Conn.open(proxy)
    for _ in range(3):
        assert (await conn.ask(GET))[0] == 200
    assert origin.hits["/r/1"] == 1
    loaded = parse_policy(policy_text(origin.url, "defaults: {cache: false}"), "p.yaml")
    proxy.engine.reconfigure(loaded, proxy.engine.stores)
    for _ in range(2):
        _, headers, _ = await conn.ask(GET)
        assert headers["x-cache"] == "BYPASS"
    assert origin.hits["/r/1"] == 3
    conn.close()


async def test_with_an_access_log_every_request_has_its_line(
    make_proxy: MakeProxy, origin: Origin, capfd: pytest.CaptureFixture[str]
):
    proxy = await make_proxy(POLICY)
    proxy.engine.access_log = AccessLog.from_setting(True)  # as a reload turning it on does
    conn = await Conn.open(proxy)
    for _ in range(6):  # remembered on its repeat: a replay would write no line
        assert (await conn.ask(GET))[0] == 200
    conn.close()
    lines = [orjson.loads(line) for line in capfd.readouterr().out.splitlines()]
    access = [line["cache"] for line in lines if line.get("event") == "access"]
    assert access == ["MISS"] + ["HIT"] * 5
    assert _memo_size(proxy) == 1


async def test_a_draining_server_closes_after_a_remembered_request(
    make_proxy: MakeProxy, origin: Origin
):
    proxy = await make_proxy(POLICY)
    assert proxy.http is not None
    conn = await Conn.open(proxy)
    for _ in range(4):  # remembered, then replayed
        _, headers, _ = await conn.ask(GET)
        assert "connection" not in headers
    assert _memo_size(proxy) == 1
    stopping = asyncio.ensure_future(proxy.http.stop(5.0))
    await asyncio.sleep(0)  # the stop has begun: draining
    _, headers, _ = await conn.ask(GET)
    assert (headers["x-cache"], headers["connection"]) == ("HIT", "close")
    assert await conn.closed()
    conn.close()
    await stopping


async def test_range_and_whole_answers_are_remembered_apart(make_proxy: MakeProxy, origin: Origin):
    """A Range request's head is not the plain one's: each is replayed as its own answer
    (206 with its part, 200 with the whole, 416), never the other's."""
    origin.reply("/r/1", Reply(body=b"0123456789"))
    proxy = await make_proxy(POLICY)
    conn = await Conn.open(proxy)
    part = b"GET /r/1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nRange: bytes=2-4\r\n\r\n"
    past = b"GET /r/1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nRange: bytes=10-\r\n\r\n"
    for i in range(4):
        status, headers, body = await conn.ask(GET)
        assert (status, body, headers["x-cache"]) == (200, b"0123456789", "HIT" if i else "MISS")
        status, headers, body = await conn.ask(part)
        assert (status, body, headers["content-range"]) == (206, b"234", "bytes 2-4/10")
        status, headers, body = await conn.ask(past)
        assert (status, body, headers["content-range"]) == (416, b"", "bytes */10")
    assert _memo_size(proxy) == 3  # all three heads replayed from the memo
    assert origin.hits["/r/1"] == 1
    conn.close()


async def test_head_304_and_connection_close_keep_their_framing(
    make_proxy: MakeProxy, origin: Origin
):
    origin.reply("/r/1", Reply(headers={"ETag": '"v1"'}))
    proxy = await make_proxy(POLICY)
    conn = await Conn.open(proxy)
    _, _, body = await conn.ask(GET)
    head = b"HEAD /r/1 HTTP/1.1\r\nHost: a\r\n\r\n"
    revalidate = b'GET /r/1 HTTP/1.1\r\nHost: a\r\nIf-None-Match: "v1"\r\n\r\n'
    for _ in range(3):
        status, headers, _ = await conn.ask(head, head=True)
        assert (status, headers["x-cache"]) == (200, "HIT")
        assert headers["content-length"] == str(len(body))
        status, headers, _ = await conn.ask(revalidate)
        assert (status, headers["etag"], headers["x-cache"]) == (304, '"v1"', "HIT")
        assert "content-length" not in headers
        status, headers, again = await conn.ask(GET)  # framing intact after both
        assert (status, again) == (200, body)
    conn.close()
    closing = b"GET /r/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    for _ in range(3):
        conn = await Conn.open(proxy)
        status, headers, again = await conn.ask(closing)
        assert (status, headers["connection"], again) == (200, "close", body)
        assert await conn.closed()
        conn.close()
    assert origin.hits["/r/1"] == 1
    assert _memo_size(proxy) == 4


async def test_a_pipelined_burst_is_answered_in_order(make_proxy: MakeProxy, origin: Origin):
    proxy = await make_proxy(POLICY)
    conn = await Conn.open(proxy)
    paths = [f"/r/{i}".encode() for i in range(3)]
    for path in paths:  # each one alone first: cached and remembered
        for _ in range(2):
            await conn.ask(b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    conn.writer.write(b"".join(b"GET " + p + b" HTTP/1.1\r\nHost: a\r\n\r\n" for p in paths * 2))
    for path in paths * 2:
        block = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 5)
        length = int(block.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await conn.reader.readexactly(length)
        assert b'"path": "' + path + b'"' in body
    conn.close()


async def test_a_remembered_request_behind_one_in_flight_waits_its_turn(
    make_proxy: MakeProxy, origin: Origin
):
    origin.reply("/slow", delay=0.5, body=b"slow")
    proxy = await make_proxy(POLICY)
    conn = await Conn.open(proxy)
    for _ in range(4):  # remembered, then replayed
        await conn.ask(GET)
    assert _memo_size(proxy) == 1
    conn.writer.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    for _ in range(100):  # until the origin has it: the first request is in flight
        if origin.hits["/slow"]:
            break
        await asyncio.sleep(0.02)
    conn.writer.write(GET)  # alone in its own read, byte for byte the remembered head
    _, _, body = await conn.ask(b"")  # nothing more to send: read the next answer
    assert body == b"slow"
    _, headers, body = await conn.ask(b"")
    assert (headers["x-cache"], b'"path": "/r/1"' in body) == ("HIT", True)
    conn.close()


async def test_what_the_hit_path_keeps_outside_the_store_is_bounded(
    make_proxy: MakeProxy, origin: Origin
):
    # entries the store evicted would live on in the memo and the decoded-entry cache
    bodies = [random.Random(i).randbytes(100_000) for i in range(400)]  # incompressible
    for i, body in enumerate(bodies):
        origin.reply(f"/big/{i}", Reply(body=body))
    proxy = await make_proxy("defaults: {ttl: 60s}\n")
    conn = await Conn.open(proxy)
    for i in range(400):
        raw = f"GET /big/{i} HTTP/1.1\r\nHost: a\r\n\r\n".encode()
        for label in ("MISS", "HIT", "HIT", "HIT"):  # remembered on a repeat, then replayed
            _, headers, body = await conn.ask(raw)
            assert (headers["x-cache"], body) == (label, bodies[i])
    conn.close()
    assert proxy.http is not None
    memo = proxy.http.memo.entries.values()
    held = sum(len(m.raw or b"") + sum(len(p) for p in m.parts) for m in memo)
    assert 10 < len(memo) < 400
    assert held <= MEMO_BYTES
    decoded = proxy.engine.entries.decoded.values()
    assert 10 < len(decoded) < 400
    assert sum(len(raw) + len(entry.body) for raw, entry in decoded) <= DECODED_BYTES
