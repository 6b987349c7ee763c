"""Driving load with wrk, and the one-off requests that warm and check a cache.

wrk reports through ``report.lua`` (a ``done()`` hook printing one JSON line), so the
percentiles are wrk's exact histogram values rather than its rounded text output.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

REPORT_LUA = Path(__file__).with_name("report.lua")


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # socket errors (connect/read/write/timeout) + non-2xx/3xx
    timeouts: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(
    url: str,
    threads: int,
    connections: int,
    duration: float,
    timeout: float = 5.0,
    cold_prefix: str | None = None,
    script: Path = REPORT_LUA,
    script_env: dict[str, str] | None = None,
) -> WrkResult:
    """One wrk run; ``script`` (default ``report.lua``) reads ``script_env`` from its
    environment (``real.lua``: the URL set and distribution)."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s"]
    argv += [f"--timeout={timeout:g}s", "-s", str(script), url]
    extra = dict(script_env or {})
    if cold_prefix:
        extra["BENCH_COLD_PREFIX"] = cold_prefix
    env = {**os.environ, "BENCH_REPORT_LUA": str(REPORT_LUA), **extra} if extra else None
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + timeout + 30, check=False, env=env
    )
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            raw = json.loads(line.removeprefix("WRKJSON "))
            break
    else:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
    errors = sum(raw[k] for k in ("connect", "read", "write", "timeout", "status"))
    return WrkResult(
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        p50_ms=raw["p50"] / 1000,
        p90_ms=raw["p90"] / 1000,
        p99_ms=raw["p99"] / 1000,
        max_ms=raw["max"] / 1000,
        errors=errors,
        timeouts=raw["timeout"],
    )


def fetch(url: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One GET on a fresh connection: status, headers (lower-cased names), body."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def warm(url: str, expect_hit: bool, attempts: int = 5) -> str:
    """Request ``url`` until it is served from cache; return an error message or ''."""
    last = ""
    for _ in range(attempts):
        try:
            status, headers, _ = fetch(url)
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
            continue
        if status != 200:
            last = f"status {status}"
            continue
        if not expect_hit or headers.get("x-cache", "").upper().startswith("HIT"):
            return ""
        last = f"X-Cache: {headers.get('x-cache', '(none)')}"
    return last
