"""The upstream client: one keep-alive pool to the configured origin, bytes untouched.

Only this module talks aiohttp's client API, and it translates every client
exception into ``OriginTimeout`` or ``OriginUnreachable``. It never retries, never
follows redirects, never decompresses, and only ever connects to the one origin.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from proxy.errors import OriginTimeout, OriginUnreachable
from proxy.policy import Timeout

CHUNK = 64 * 1024


@dataclass(slots=True)
class OriginResponse:
    """Status and headers of an origin answer, with its body still on the wire."""

    status: int
    headers: list[tuple[str, str]]
    _response: aiohttp.ClientResponse
    _deadline: float | None

    async def read_up_to(self, limit: int) -> tuple[bytes, bool]:
        """Read at most ``limit`` bytes; answer them and whether the body ended."""
        chunks: list[bytes] = []
        size = 0
        try:
            while size <= limit:
                chunk = await self._response.content.readany()
                if not chunk:
                    return b"".join(chunks), True
                chunks.append(chunk)
                size += len(chunk)
        except (aiohttp.ClientError, OSError) as exc:
            self.release()
            raise OriginUnreachable(f"origin body failed: {exc!r}") from exc
        except TimeoutError as exc:
            self.release()
            raise OriginTimeout("origin body timed out") from exc
        return b"".join(chunks), False

    async def iter_rest(self, head: bytes = b"") -> AsyncIterator[bytes]:
        """Yield ``head``, then the rest of the body as it arrives; release at the end."""
        try:
            if head:
                yield head
            while True:
                chunk = await self._response.content.readany()
                if not chunk:
                    break
                yield chunk
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise OriginUnreachable(f"origin body failed: {exc!r}") from exc
        finally:
            self.release()

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()


class OriginClient:
    """A pooled HTTP/1.1 client bound to one origin base URL."""

    def __init__(self, base_url: str, pool_size: int = 256) -> None:
        parts = urlsplit(base_url)
        self.base_url = base_url.rstrip("/")
        self.scheme = parts.scheme
        self.host = parts.netloc
        self.base_path = parts.path.rstrip("/")
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._pool_size, keepalive_timeout=30, ttl_dns_cache=60
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None),
                read_bufsize=CHUNK,
                requote_redirect_url=False,
            )
            # aiohttp re-sends an idempotent request (GET, PUT, DELETE...) once when the
            # connection drops before the answer; a proxy must not (RFC 9110 §9.2.2 leaves
            # retries to the client, which knows whether the origin saw the request). The
            # same switch its own test client turns off; there is no public one.
            self._session._retry_connection = False
        return self._session

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | AsyncIterable[bytes] | None,
        timeout: Timeout,
    ) -> OriginResponse:
        """Send one request (``target`` is path plus query, already encoded)."""
        url = URL(self.base_url + target, encoded=True)
        loop = asyncio.get_running_loop()
        client_timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout.connect, sock_read=timeout.total
        )
        try:
            async with asyncio.timeout(timeout.total):
                response = await self._client().request(
                    method,
                    url,
                    headers=list(headers),
                    data=body,
                    allow_redirects=False,
                    timeout=client_timeout,
                    compress=None,
                    chunked=None,
                )
        except TimeoutError as exc:
            raise OriginTimeout(f"origin did not answer within {timeout.total:g}s") from exc
        except aiohttp.ServerTimeoutError as exc:
            raise OriginTimeout(f"origin timed out: {exc}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise OriginUnreachable(f"origin unreachable: {exc!r}") from exc
        raw = response.raw_headers
        pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
        return OriginResponse(response.status, pairs, response, loop.time() + timeout.total)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
