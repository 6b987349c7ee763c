"""Raw HTTP/1.1 over a socket: send hostile bytes, parse exactly what came back.

The parser is strict on purpose: a keep-alive desync shows up as bytes that do not
parse as a response, or as more or fewer responses than requests.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


async def exchange(
    url: str, raw: bytes, *, expect: int = 1, read_for: float = 2.0, grace: float = 0.1
) -> tuple[bytes, bool]:
    """Send ``raw``; read until the server closes, or until ``expect`` whole responses
    have come and nothing more follows for ``grace`` seconds (``read_for`` at most).

    Answers the bytes received and whether the server closed the connection.
    """
    reader, writer = await asyncio.open_connection(*_host_port(url))
    writer.write(raw)
    await writer.drain()
    data = b""
    closed = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + read_for
    try:
        while (left := deadline - loop.time()) > 0:
            wait = min(left, grace) if _complete(data, expect) else left
            try:
                chunk = await asyncio.wait_for(reader.read(65536), wait)
            except TimeoutError:
                if _complete(data, expect):
                    break
                continue
            if not chunk:
                closed = True
                break
            data += chunk
    except ConnectionResetError:
        closed = True
    writer.close()
    return data, closed


def _complete(data: bytes, expect: int) -> bool:
    try:
        return len(parse(data)) >= expect
    except (ValueError, IndexError):
        return False


def parse(data: bytes, *, head_requests: int = 0) -> list[Answer]:
    """Every response in ``data``; raises ``ValueError`` on bytes that are not one."""
    answers: list[Answer] = []
    rest = data
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError(f"truncated response head: {head[:80]!r}")
        lines = head.decode("latin-1").split("\r\n")
        version, _, status_text = lines[0].partition(" ")
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise ValueError(f"not a status line: {lines[0]!r}")
        answer = Answer(int(status_text[:3]))
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise ValueError(f"bad header line {line!r}")
            answer.headers.append((name, value.strip()))
        length = answer.header("Content-Length")
        if answer.header("Transfer-Encoding") == "chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                body += rest[:size]
                rest = rest[size + 2 :]
                if size == 0:
                    break
            answer.body = body
        elif len(answers) < head_requests or answer.status in (204, 304) or answer.status < 200:
            pass
        elif length is not None:
            answer.body = rest[: int(length)]
            if len(answer.body) != int(length):
                raise ValueError("body shorter than Content-Length")
            rest = rest[int(length) :]
        else:
            answer.body, rest = rest, b""
        answers.append(answer)
    return answers


async def talk(
    url: str, raw: bytes, *, expect: int = 1, read_for: float = 2.0
) -> tuple[list[Answer], bool]:
    data, closed = await exchange(url, raw, expect=expect, read_for=read_for)
    return parse(data), closed


def get(path: str, host: str = "a", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode("latin-1")
