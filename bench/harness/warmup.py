"""Warming the realistic scenario's URLs into every cache of a server, and checking it.

A server with several workers may hold one cache per worker (sidecache's memory store is
per process) or one for all (nginx, Redis). SO_REUSEPORT hands each new connection to
some worker, so connections are first sorted into *cache groups*: a fresh probe URL is
fetched on a connection of each known group until it is a HIT there, then on the new
connection; a HIT means the same cache. Every URL is then fetched once through each
group, and a sample is asked again on every group: all of it must be ``X-Cache: HIT``.

Requests carry the same client headers as ``real.lua`` (a variant keyed on
Accept-Encoding must be the one wrk asks for) and their own X-Request-Id/traceparent.
"""

from __future__ import annotations

import http.client
import random
import secrets
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit

# What python-requests sends; real.lua sends the same (keep both in step).
CLIENT_HEADERS = {
    "User-Agent": "python-requests/2.32.3",
    "Accept": "*/*",
    "Accept-Encoding": "gzip, deflate",
    "Connection": "keep-alive",
}
CONNS_PER_GROUP = 4
MAX_CONNECTIONS = 24  # connections tried while sorting them into groups


class WarmError(Exception):
    """The URLs could not be made HITs: the message says what was seen."""


def paths(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i}.json" for i in range(count)]


@dataclass
class Answer:
    status: int
    x_cache: str

    @property
    def hit(self) -> bool:
        return self.status == 200 and self.x_cache.upper().startswith("HIT")


def get(conn: http.client.HTTPConnection, path: str) -> Answer:
    headers = {
        **CLIENT_HEADERS,
        "X-Request-Id": str(uuid.uuid4()),
        "traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01",
    }
    # skip_accept_encoding: http.client would add "Accept-Encoding: identity" otherwise.
    conn.putrequest("GET", path, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    resp = conn.getresponse()
    resp.read()
    return Answer(resp.status, resp.getheader("X-Cache") or "")


def _connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    conn.connect()
    return conn


def cache_groups(url: str, prefix: str, workers: int) -> list[list[http.client.HTTPConnection]]:
    """Open connections and sort them by the cache behind them (see the module doc).

    Raises :class:`WarmError` (having closed what it opened) when a probe never becomes a
    HIT, or more caches show up than there are workers."""
    groups: list[list[http.client.HTTPConnection]] = []
    try:
        _sort(url, prefix, workers, groups)
    except (WarmError, OSError, http.client.HTTPException):
        close(groups)
        raise
    return groups


def _sort(
    url: str, prefix: str, workers: int, groups: list[list[http.client.HTTPConnection]]
) -> None:
    token = secrets.token_hex(4)
    probes = 0
    for _ in range(MAX_CONNECTIONS):
        conn = _connect(url)
        for group in groups:
            probes += 1
            probe = f"{prefix}probe-{token}-{probes}.json"
            # Stored once it answers HIT on the group's own connection.
            if not any(get(group[0], probe).hit for _ in range(5)):
                conn.close()
                raise WarmError(f"{probe} is never a HIT on one connection")
            if get(conn, probe).hit:
                if len(group) < CONNS_PER_GROUP:
                    group.append(conn)
                else:
                    conn.close()
                break
        else:
            groups.append([conn])
            if len(groups) > workers:
                raise WarmError(f"{len(groups)} separate caches behind {workers} workers")
        if len(groups) >= workers and all(len(g) >= CONNS_PER_GROUP for g in groups):
            return


def close(groups: Sequence[Sequence[http.client.HTTPConnection]]) -> None:
    for group in groups:
        for conn in group:
            conn.close()


PIPELINE = 32  # requests written at once while warming


def _request(host: str, path: str) -> bytes:
    ids = f"X-Request-Id: {uuid.uuid4()}\r\n"
    ids += f"traceparent: 00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01\r\n"
    fixed = "".join(f"{k}: {v}\r\n" for k, v in CLIENT_HEADERS.items())
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{fixed}{ids}\r\n".encode()


def _read_answer(stream: BinaryIO) -> Answer:
    """One response off a pipelined connection: Content-Length or chunked body skipped."""
    line = stream.readline(65537)
    if not line:
        raise WarmError("connection closed while warming")
    status, length, chunked, x_cache = int(line.split()[1]), 0, False, ""
    while (field := stream.readline(65537)) not in (b"\r\n", b"\n", b""):
        name, _, value = field.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value.lower()
        elif name == "x-cache":
            x_cache = value
    if not chunked:
        stream.read(length)
        return Answer(status, x_cache)
    while size := int(stream.readline(65537).split(b";")[0], 16):
        stream.read(size + 2)
    while stream.readline(65537) not in (b"\r\n", b"\n", b""):
        pass  # trailer fields
    return Answer(status, x_cache)


def _fetch_all(conn: http.client.HTTPConnection, chunk: Sequence[str]) -> list[str]:
    """Fetch every path on one connection, pipelined; the paths that did not answer 200."""
    bad = []
    host = f"{conn.host}:{conn.port}"
    stream = conn.sock.makefile("rb")
    for i in range(0, len(chunk), PIPELINE):
        part = chunk[i : i + PIPELINE]
        conn.sock.sendall(b"".join(_request(host, path) for path in part))
        bad += [path for path in part if _read_answer(stream).status != 200]
    return bad


def warm(url: str, prefix: str, count: int, workers: int, sample: int = 64) -> tuple[int, str]:
    """Fetch every URL through each cache group; (number of groups, problem or '')."""
    groups = cache_groups(url, prefix, workers)
    try:
        every = paths(prefix, count)
        for group in groups:
            chunks = [every[i :: len(group)] for i in range(len(group))]
            with ThreadPoolExecutor(len(group)) as pool:
                bad = [p for miss in pool.map(_fetch_all, group, chunks) for p in miss]
            if bad:
                return len(groups), f"{len(bad)} URLs not 200 while warming (e.g. {bad[0]})"
        return len(groups), check_groups(groups, every, sample)
    finally:
        close(groups)


def check_groups(
    groups: Sequence[Sequence[http.client.HTTPConnection]], every: Sequence[str], sample: int
) -> str:
    """'' when a random sample of the URLs is a HIT on every group, else what was seen."""
    chosen = random.sample(list(every), min(sample, len(every)))
    misses = []
    for group in groups:
        for path in chosen:
            answer = get(group[0], path)
            if not answer.hit:
                misses.append(f"{path}: {answer.status} X-Cache {answer.x_cache or '(none)'}")
    if misses:
        return f"{len(misses)}/{len(chosen) * len(groups)} of a sample not a HIT ({misses[0]})"
    return ""


def check(url: str, prefix: str, count: int, workers: int, sample: int = 32) -> str:
    """The sample check alone, on freshly sorted connections."""
    groups = cache_groups(url, prefix, workers)
    try:
        return check_groups(groups, paths(prefix, count), sample)
    finally:
        close(groups)


def hit_share(url: str, prefix: str, count: int, sample: int = 64) -> float:
    """Share of a random sample answered HIT on a few new connections (after a run)."""
    conns = [_connect(url) for _ in range(4)]
    try:
        chosen = random.sample(paths(prefix, count), min(sample, count))
        hits = sum(get(conns[i % 4], p).hit for i, p in enumerate(chosen))
        return hits / len(chosen)
    finally:
        for conn in conns:
            conn.close()
