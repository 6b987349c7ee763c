"""``python -m soak.probe PROBE_FILE -- <sidecache arguments>``: sidecache itself, plus a
task in the worker that appends what only the process can see to PROBE_FILE every
second: asyncio tasks, client connections, and the sizes of the engine's bounded maps.

Bench instrumentation only: it wraps ``proxy.cli.serve`` and changes nothing else.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from typing import Any

import proxy.cli
from proxy.engine.driver import Engine
from proxy.server.listener import HttpServer


async def sample(path: str) -> None:
    while True:
        await asyncio.sleep(1.0)
        servers = [o for o in gc.get_objects() if isinstance(o, HttpServer)]
        engines = [o for o in gc.get_objects() if isinstance(o, Engine)]
        row: dict[str, Any] = {
            "t": time.monotonic(),
            "tasks": len(asyncio.all_tasks()),
            "connections": sum(len(s.connections) for s in servers),
        }
        for engine in engines[:1]:
            row["decoded"] = len(engine.entries.decoded.values())
            row["recent"] = len(engine.entries.recent)
            row["flights"] = len(engine.coalescer._flights)
            row["uncacheable"] = len(engine.coalescer._uncacheable)
            row["background"] = len(engine.refresher.background)
        with open(path, "a") as out:  # noqa: ASYNC230  (a few bytes a second, in a bench)
            out.write(json.dumps(row) + "\n")


def main() -> None:
    path, sep, *argv = sys.argv[1:]
    assert sep == "--", "usage: python -m soak.probe PROBE_FILE -- run --policy ..."
    serve = proxy.cli.serve

    async def probed(*args: Any, **kwargs: Any) -> None:
        task = asyncio.ensure_future(sample(path))
        try:
            await serve(*args, **kwargs)
        finally:
            task.cancel()

    proxy.cli.serve = probed  # type: ignore[assignment]
    sys.exit(proxy.cli.main(argv))


if __name__ == "__main__":
    main()
