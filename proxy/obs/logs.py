"""Logs as JSON lines on stdout (orjson): start-up, reloads, breaker changes, purges, errors.

One line per event, written with a single ``os.write`` so the lines of several workers
sharing stdout never interleave. The access log is off by default; when a policy turns it
on (``server.access_log: true`` or a sample ratio) the proxy handler calls ``AccessLog``.
Nothing here runs on the request path while the access log is off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import time
from datetime import UTC, datetime
from typing import Any, Final

import orjson

LOGGER: Final = "sidecache"
_FORMATTER: Final = logging.Formatter()
_RESERVED: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

log = logging.getLogger(LOGGER)


def _now(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


def write_line(doc: dict[str, Any], fd: int = 1) -> None:
    """One JSON document as one line, in one write (short lines are atomic on pipes)."""
    if "time" not in doc:
        doc = {"time": _now(time.time()), **doc}
    line = orjson.dumps(doc, default=str) + b"\n"
    # stdout closed (the supervisor went away): nobody is left to tell
    with contextlib.suppress(OSError):
        os.write(fd, line)


class JsonLines(logging.Handler):
    """A logging handler writing each record as a JSON line; ``extra=`` fields are kept."""

    def __init__(self, fd: int = 1) -> None:
        super().__init__()
        self.fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        doc: dict[str, Any] = {
            "time": _now(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _RESERVED and not name.startswith("_"):
                doc[name] = value
        if record.exc_info:
            doc["exc"] = _FORMATTER.formatException(record.exc_info)
        write_line(doc, self.fd)


def configure(level: int = logging.INFO) -> None:
    """Route every logger (ours, aiohttp's, redis's) to JSON lines on stdout."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(JsonLines(sys.stdout.fileno()))
    root.setLevel(level)


def event(name: str, msg: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """A structured event: ``{"event": name, "msg": msg, ...fields}``."""
    log.log(level, msg, extra={"event": name, **fields})


class AccessLog:
    """One line per request (or per sampled request); built only when the policy asks."""

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio

    @staticmethod
    def from_setting(setting: bool | float) -> AccessLog | None:
        if setting is True:
            return AccessLog(1.0)
        if setting is False or setting <= 0:
            return None
        return AccessLog(min(float(setting), 1.0))

    def record(
        self,
        *,
        method: str,
        target: str,
        status: int,
        cache: str,
        route: str,
        seconds: float,
        client: str,
    ) -> None:
        if self.ratio < 1.0 and random.random() >= self.ratio:
            return
        write_line(
            {
                "time": _now(time.time()),
                "event": "access",
                "method": method,
                "target": target,
                "status": status,
                "cache": cache,
                "route": route,
                "ms": round(seconds * 1000, 3),
                "client": client,
            }
        )
