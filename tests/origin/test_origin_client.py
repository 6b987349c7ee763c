"""The origin client against real servers: raw asyncio servers that send exact bytes
(framing, keep-alive, misbehaviour) and count their connections, and the aiohttp origin."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from proxy.errors import OriginTimeout, OriginUnreachable
from proxy.origin.client import OriginClient, OriginResponse
from proxy.policy.load import Timeout
from tests.conftest import Origin
from tests.raworigin import Handler, RawOrigin, Start, answer, raw_origins  # noqa: F401  (fixture)

FAST = Timeout(connect=1.0, total=2.0)


HOST = [("Host", "o")]


def get(
    client: OriginClient, path: str = "/", timeout: Timeout = FAST
) -> Awaitable[OriginResponse]:
    """A plain GET through ``client``, as the engine sends one."""
    return client.request("GET", path, HOST, None, timeout)


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., OriginClient]]:
    made: list[OriginClient] = []

    def make(url: str, pool_size: int = 16, **kwargs: object) -> OriginClient:
        client = OriginClient(url, pool_size, **kwargs)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


async def body_of(response: OriginResponse) -> bytes:
    return b"".join([chunk async for chunk in response.iter_rest()])


def keep_alive(*replies: bytes) -> Handler:
    """Answer each request on the connection with the next reply, then wait for EOF."""

    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        for reply in replies:
            await origin.read_request(reader)
            writer.write(reply)
            await writer.drain()
        await reader.read()

    return handler


async def start_keep_alive(raw: Start, *replies: bytes) -> RawOrigin:
    return await raw(keep_alive(*replies))


# ---------------------------------------------------------------- framing


async def test_chunked_body_is_reassembled(raw, clients):
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    server = await start_keep_alive(raw, chunked, answer(b"again"))
    client = clients(server.url)
    response = await get(client, "/c")
    assert (response.status, await body_of(response)) == (200, b"hello world")
    assert ("Transfer-Encoding", "chunked") in response.headers
    second = await get(client, "/c")
    assert await body_of(second) == b"again"
    assert server.connections == 1


async def test_close_delimited_body_ends_with_the_connection(raw, clients):
    async def handler(
        _: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
        await writer.drain()
        writer.write(b"the end")
        writer.close()

    server = await raw(handler)
    client = clients(server.url)
    for _ in range(2):
        response = await get(client)
        assert await body_of(response) == b"until the end"
    assert server.connections == 2


async def test_http10_answer_is_not_reused(raw, clients):
    async def handler(
        _: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await reader.read()

    server = await raw(handler)
    client = clients(server.url)
    for _ in range(2):
        response = await get(client)
        assert await body_of(response) == b"ok"
    assert server.connections == 2


async def test_head_and_304_have_no_body_and_keep_the_connection(raw, clients):
    server = await start_keep_alive(
        raw,
        b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nETag: "a"\r\n\r\n',
        b'HTTP/1.1 304 Not Modified\r\nETag: "a"\r\nContent-Length: 1000\r\n\r\n',
        b"HTTP/1.1 204 No Content\r\n\r\n",
        answer(b"body"),
    )
    client = clients(server.url)
    head = await client.request("HEAD", "/", HOST, None, FAST)
    assert head.status == 200
    assert ("Content-Length", "1000") in head.headers
    assert await body_of(head) == b""
    not_modified = await get(client)
    assert (not_modified.status, await body_of(not_modified)) == (304, b"")
    no_content = await get(client)
    assert (no_content.status, await body_of(no_content)) == (204, b"")
    last = await get(client)
    assert await body_of(last) == b"body"
    assert server.connections == 1
    assert server.requests[0].startswith(b"HEAD / HTTP/1.1\r\n")


async def test_informational_answers_go_to_the_interim_callback_in_order(raw, clients):
    server = await start_keep_alive(
        raw,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
        + answer(b"final", b"X-Final: 1"),
        b"HTTP/1.1 103 Early Hints\r\nLink: </t.css>\r\n\r\n" + answer(b"second"),
    )
    client = clients(server.url)
    seen: list[tuple[int, list[tuple[bytes, bytes]]]] = []
    response = await client.request(
        "GET",
        "/",
        HOST,
        None,
        FAST,
        interim=lambda status, fields: seen.append((status, [*fields])),
    )
    assert seen == [(100, []), (103, [(b"Link", b"</s.css>")])]
    assert response.status == 200
    assert ("X-Final", "1") in response.headers
    assert all(name != "Link" for name, _ in response.headers)
    assert await body_of(response) == b"final"
    second = await get(client)  # no callback: the 103 is dropped, the answer unchanged
    assert (second.status, await body_of(second)) == (200, b"second")
    assert server.connections == 1


async def test_header_fields_pass_as_sent(raw, clients):
    reply = answer(b"x", b"set-COOKIE: a=1", b"Set-Cookie: b=2", b"X-Latin: caf\xe9", b"X-Empty:")
    server = await start_keep_alive(raw, reply)
    client = clients(server.url)
    response = await get(client)
    assert response.headers[1:] == [
        ("set-COOKIE", "a=1"),
        ("Set-Cookie", "b=2"),
        ("X-Latin", "café"),
        ("X-Empty", ""),
    ]
    response.release()


async def test_request_head_is_sent_as_given_under_the_base_path(raw, clients):
    server = await start_keep_alive(raw, answer(b"x"))
    client = clients(server.url + "/base/")
    headers = [("Host", "api"), ("x-lower", "v"), ("X-Dup", "1"), ("X-Dup", "2")]
    (await client.request("GET", "/p/a%20b?q=1&r", headers, None, FAST)).release()
    assert server.requests == [
        b"GET /base/p/a%20b?q=1&r HTTP/1.1\r\n"
        b"Host: api\r\nx-lower: v\r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\n"
    ]


async def test_a_split_request_head_is_refused(raw, clients):
    server = await start_keep_alive(raw, answer(b"x"))
    client = clients(server.url)
    with pytest.raises(ValueError, match="CR, LF"):
        await client.request("GET", "/", [("X-A", "1\r\nX-Injected: 1")], None, FAST)
    assert server.connections == 0


async def test_malformed_answer_is_unreachable(raw, clients):
    server = await start_keep_alive(raw, b"HTTP/1.1 2xx Nope\r\n\r\n")
    client = clients(server.url)
    with pytest.raises(OriginUnreachable, match="malformed"):
        await get(client)


# ---------------------------------------------------------------- connection reuse


async def test_sequential_requests_share_one_connection(origin: Origin, clients):
    client = clients(origin.url)
    for i in range(20):
        response = await get(client, f"/r{i}")
        assert response.status == 200
        assert b'"hit": 1' in await body_of(response)
    peers = {request.transport.get_extra_info("peername") for request in origin.requests}  # type: ignore[union-attr]
    assert len(peers) == 1


async def test_connection_close_from_the_origin_is_honoured(raw, clients):
    async def handler(
        _: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer(b"bye", b"Connection: close"))
        await reader.read()  # never closes first: the client must

    server = await raw(handler)
    client = clients(server.url)
    for _ in range(3):
        response = await get(client)
        assert await body_of(response) == b"bye"
    assert server.connections == 3


async def test_idle_connection_closed_by_the_origin_is_not_reused(raw, clients):
    async def handler(
        _: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer(b"once"))  # keep-alive announced, then closed while idle
        await writer.drain()

    server = await raw(handler)
    client = clients(server.url)
    for _ in range(3):
        response = await get(client)
        assert await body_of(response) == b"once"
        await asyncio.sleep(0.05)  # the origin's FIN arrives while the connection is idle
    assert server.connections == 3


async def test_keep_alive_timeout_of_the_origin_is_respected(raw, clients):
    server = await start_keep_alive(
        raw, answer(b"a", b"Keep-Alive: timeout=1"), answer(b"b", b"Keep-Alive: timeout=1")
    )
    client = clients(server.url)
    first = await get(client)
    assert await body_of(first) == b"a"
    await asyncio.sleep(0.7)  # past the idle time we allow (timeout - 1 s, at least 0.5 s)
    second = await get(client)
    assert await body_of(second) == b"a"
    assert server.connections == 2


async def test_abandoned_response_is_not_reused(raw, clients):
    big = bytes(range(256)) * 4096  # 1 MiB

    async def handler(
        _: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            path = (await reader.readuntil(b"\r\n\r\n")).split(b" ")[1]
            writer.write(answer(big if path == b"/big" else b"small"))
            await writer.drain()

    server = await raw(handler)
    client = clients(server.url, pool_size=1)  # a leaked connection would block the next
    response = await get(client, "/big")
    stream = response.iter_rest()
    assert (await anext(stream))[:4] == b"\x00\x01\x02\x03"
    await stream.aclose()  # the consumer went away mid-body
    small = await get(client, "/small")
    assert await body_of(small) == b"small"
    assert server.connections == 2


@pytest.mark.parametrize(
    "extra",
    [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale", b"HTTP/1.1 200 OK\r\nContent-Le"],
    ids=["whole-answer", "partial"],
)
async def test_bytes_after_the_answer_spoil_the_connection(raw, clients, extra: bytes):
    async def handler(
        _: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer(b"ok") + extra)
            await writer.drain()

    server = await raw(handler)
    client = clients(server.url)
    for _ in range(2):
        response = await get(client)
        assert await body_of(response) == b"ok"
    assert server.connections == 2


async def test_pool_bounds_connections_and_serves_waiters(origin: Origin, clients):
    origin.reply("/slow", delay=0.1)
    client = clients(origin.url, pool_size=2)

    async def one() -> bytes:
        response = await get(client, "/slow")
        return await body_of(response)

    bodies = await asyncio.gather(*(one() for _ in range(8)))
    assert len(bodies) == 8
    peers = {request.transport.get_extra_info("peername") for request in origin.requests}  # type: ignore[union-attr]
    assert len(peers) == 2


# ---------------------------------------------------------------- uploads


async def test_uploads_are_framed(raw, clients):
    server = await start_keep_alive(raw, *(answer(b"ok") for _ in range(4)))
    client = clients(server.url)

    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b"one,", b"", b"two,", b"three"):
            yield piece

    async def declared() -> AsyncIterator[bytes]:
        yield b"12345"
        yield b"67890"

    calls = [
        ("POST", HOST, b"bytes body"),
        ("PUT", HOST, pieces()),
        ("POST", [("Host", "o"), ("Content-Length", "10")], declared()),
        ("DELETE", HOST, None),
    ]
    for method, headers, body in calls:
        response = await client.request(method, "/u", headers, body, FAST)
        assert await body_of(response) == b"ok"
    assert server.bodies == [b"bytes body", b"one,two,three", b"1234567890", b""]
    assert b"Content-Length: 10\r\n" in server.requests[0]
    assert b"Transfer-Encoding: chunked\r\n" in server.requests[1]
    assert b"Transfer-Encoding" not in server.requests[2]
    assert b"Content-Length: 0\r\n" in server.requests[3]
    assert server.connections == 1


async def test_large_upload_reaches_the_origin_intact(origin: Origin, clients):
    seen: list[bytes] = []

    async def echo_size(request):  # type: ignore[no-untyped-def]
        from aiohttp import web

        data = await request.read()
        seen.append(data)
        return web.Response(text=str(len(data)))

    origin.reply("/upload", echo_size)
    client = clients(origin.url)
    payload = bytes(range(256)) * 40_000  # ~10 MB

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 65536):
            yield payload[start : start + 65536]

    response = await client.request("POST", "/upload", HOST, pieces(), FAST)
    assert await body_of(response) == str(len(payload)).encode()
    assert seen == [payload]


async def test_failing_upload_fails_the_request(raw, clients):
    async def handler(
        _: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read()

    server = await raw(handler)
    client = clients(server.url)

    async def broken() -> AsyncIterator[bytes]:
        yield b"part"
        raise RuntimeError("client went away")

    with pytest.raises(OriginUnreachable, match="request body failed"):
        await client.request("POST", "/", HOST, broken(), FAST)


# ---------------------------------------------------------------- streaming


async def test_large_body_streams_with_bounded_buffering(raw, clients):
    total = 64 * 1024 * 1024
    progress = {"sent": 0}

    async def handler(
        _: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"x" * 65536
        while progress["sent"] < total:
            writer.write(block)
            await writer.drain()  # blocks while the client does not read
            progress["sent"] += len(block)

    server = await raw(handler)
    client = clients(server.url)
    response = await get(client, "/big")
    stream = response.iter_rest()
    received = len(await anext(stream))
    await asyncio.sleep(0.3)  # a slow consumer: the origin must be held back
    assert progress["sent"] < 24 * 1024 * 1024
    async for chunk in stream:
        received += len(chunk)
    assert received == total


# ---------------------------------------------------------------- failures


async def test_unreachable_origin(clients):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    client = clients(f"http://127.0.0.1:{port}")
    with pytest.raises(OriginUnreachable):
        await get(client)


async def test_origin_reset_mid_body_fails_the_stream(raw, clients):
    async def handler(
        _: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.transport.abort()

    server = await raw(handler)
    client = clients(server.url)
    response = await get(client)
    with pytest.raises(OriginUnreachable):
        await body_of(response)
    again = await get(client)
    with pytest.raises(OriginUnreachable):
        await again.read_up_to(1000)


async def test_silent_origin_times_out(raw, clients):
    async def handler(
        _: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read()

    server = await raw(handler)
    client = clients(server.url)
    with pytest.raises(OriginTimeout, match=r"did not answer within 0\.3s"):
        await get(client, timeout=Timeout(connect=1, total=0.3))


async def test_stalled_body_times_out(raw, clients):
    async def handler(
        _: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstart")
        await reader.read()

    server = await raw(handler)
    client = clients(server.url)
    timeout = Timeout(connect=1, total=0.3)
    response = await get(client, timeout=timeout)
    with pytest.raises(OriginTimeout, match="no body bytes"):
        await response.read_up_to(1000)


async def test_connect_timeout_when_the_origin_accepts_nothing(clients):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # never accepted: once the backlog is full, SYNs are dropped
    listener.setblocking(False)
    fillers = []
    try:
        loop = asyncio.get_running_loop()
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            try:
                await asyncio.wait_for(loop.sock_connect(filler, listener.getsockname()), 0.2)
            except TimeoutError:
                break
        port = listener.getsockname()[1]
        client = clients(f"http://127.0.0.1:{port}")
        with pytest.raises(OriginTimeout, match=r"no connection within 0\.2s"):
            await get(client, timeout=Timeout(connect=0.2, total=5))
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_pool_wait_counts_as_connecting(origin: Origin, clients):
    origin.reply("/slow", delay=1.0)
    client = clients(origin.url, pool_size=1)
    holder = asyncio.ensure_future(get(client, "/slow"))
    await asyncio.sleep(0.1)
    with pytest.raises(OriginTimeout, match=r"all 1 origin connections stayed busy for 0\.2s"):
        await get(client, "/slow", timeout=Timeout(connect=0.2, total=5))
    (await holder).release()


async def test_cancelled_request_does_not_leave_its_connection_in_the_pool(raw, clients):
    async def handler(
        _: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /slow"):
            await asyncio.sleep(0.3)  # the answer comes after the caller gave up
            writer.write(answer(b"late"))
            await reader.read()
            return
        writer.write(answer(b"fresh"))
        await reader.read()

    server = await raw(handler)
    client = clients(server.url)
    slow = asyncio.ensure_future(get(client, "/slow"))
    await asyncio.sleep(0.1)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    response = await get(client, "/fresh")
    assert await body_of(response) == b"fresh"
    assert server.connections == 2


async def test_closed_client_refuses_and_ends_streams(raw, clients):
    async def handler(
        _: RawOrigin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstart")
        await reader.read()

    server = await raw(handler)
    client = clients(server.url)
    response = await get(client)
    await client.aclose()
    with pytest.raises(OriginUnreachable):
        await body_of(response)
    with pytest.raises(OriginUnreachable, match="closed"):
        await get(client)


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_origin(certificate: tuple[Path, Path], clients):
    cert, key = certificate
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    server = RawOrigin(keep_alive(answer(b"secure"), answer(b"again")))
    await server.start(server_side)
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        client = clients(server.url, tls=trusting)
        for expected in (b"secure", b"again"):
            response = await get(client)
            assert await body_of(response) == expected
        assert server.connections == 1
        default = clients(server.url)  # the system's trust store does not know this cert
        with pytest.raises(OriginUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
            await get(default)
    finally:
        await server.close()
