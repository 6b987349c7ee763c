"""The upstream client: one keep-alive pool to the configured origin, bytes untouched.

The wire work is ``proxy/origin/upstream.py`` (HTTP/1.1 on llhttp); this module is its face to
the engine and the one place its errors become ``OriginTimeout``/``OriginUnreachable``.
It never retries: a request whose connection fails is answered 502/504, because RFC 9110
§9.2.2 leaves a retry to the client, which knows whether the origin may have seen the
request (aiohttp's client, used before, re-sent idempotent requests once; it was switched
off). It never follows redirects, never decompresses, and only connects to the one origin.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from urllib.parse import urlsplit

from proxy.errors import OriginTimeout, OriginUnreachable
from proxy.origin.pool import Pool
from proxy.origin.upstream import Stream
from proxy.policy.load import Timeout
from proxy.wire.codec import Interim

_TLS: ssl.SSLContext | None = None


def _default_tls() -> ssl.SSLContext:
    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()  # verifies the origin's certificate and name
    return _TLS


class OriginResponse:
    """Status and headers of an origin answer, with its body still on the wire."""

    __slots__ = ("_stream", "status")

    def __init__(self, stream: Stream) -> None:
        self.status = stream.status
        self._stream = stream

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The answer's fields (decoded on first use)."""
        return self._stream.headers

    @property
    def raw(self) -> list[tuple[bytes, bytes]]:
        """The answer's fields as the origin sent them."""
        return self._stream.raw

    def complete_body(self) -> bytes | None:
        """The whole body when it has already arrived (the connection is back in the
        pool), else ``None``: the caller can then answer in one write, without a stream."""
        return self._stream.complete_body()

    async def read_up_to(self, limit: int) -> tuple[bytes, bool]:
        """Read at most ``limit`` bytes; answer them and whether the body ended."""
        stream = self._stream
        body = stream.complete_body()
        if body is not None and len(body) <= limit:
            return body, True
        chunks = [body] if body else []
        size = len(body) if body else 0
        try:
            while size <= limit:
                chunk = await stream.read()
                if not chunk:
                    return b"".join(chunks), True
                chunks.append(chunk)
                size += len(chunk)
        except TimeoutError as exc:
            self.release()
            raise OriginTimeout(f"origin body timed out: {exc}") from exc
        except OSError as exc:
            self.release()
            raise OriginUnreachable(f"origin body failed: {exc!r}") from exc
        return b"".join(chunks), False

    async def iter_rest(self, head: bytes = b"") -> AsyncIterator[bytes]:
        """Yield ``head``, then the rest of the body as it arrives; release at the end."""
        stream = self._stream
        try:
            rest = stream.complete_body()
            if rest is not None:  # all here already: one piece, so one write downstream
                if head or rest:
                    yield head + rest
                return
            if head:
                yield head
            while True:
                chunk = await stream.read()
                if not chunk:
                    break
                yield chunk
        except OSError as exc:  # TimeoutError included: the answer is already under way
            raise OriginUnreachable(f"origin body failed: {exc!r}") from exc
        finally:
            self.release()

    def release(self) -> None:
        """Done with the answer; a connection whose body was not read to the end closes."""
        self._stream.release()

    def close(self) -> None:
        self._stream.release()


class OriginClient:
    """A pooled HTTP/1.1 client bound to one origin base URL."""

    def __init__(
        self, base_url: str, pool_size: int = 256, *, tls: ssl.SSLContext | None = None
    ) -> None:
        parts = urlsplit(base_url)
        self.base_url = base_url.rstrip("/")
        self.scheme = parts.scheme
        self.host = parts.netloc
        self.base_path = parts.path.rstrip("/")
        secure = parts.scheme == "https"
        if secure and tls is None:
            tls = _default_tls()
        port = parts.port or (443 if secure else 80)
        address = (parts.hostname or "", port)
        self._pool = Pool(address, pool_size, tls if secure else None)

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]] | bytes,
        body: bytes | AsyncIterable[bytes] | None,
        timeout: Timeout,
        *,
        interim: Interim | None = None,
    ) -> OriginResponse:
        """Send one request (``target`` is path plus query, already encoded); the
        origin's interim (1xx) answers to it go to ``interim`` as they arrive.
        ``headers`` as bytes: the field lines of a request without a body, relayed."""
        path = self.base_path + target
        try:
            stream = await self._pool.request(
                method, path, headers, body, timeout.connect, timeout.total, interim
            )
        except TimeoutError as exc:
            raise OriginTimeout(str(exc) or "origin timed out") from exc
        except OSError as exc:  # refused, reset, TLS, a malformed answer (BadResponse)
            raise OriginUnreachable(f"origin unreachable: {exc!r}") from exc
        return OriginResponse(stream)

    async def aclose(self) -> None:
        await self._pool.aclose()
