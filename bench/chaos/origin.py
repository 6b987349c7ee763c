"""The chaos origin: deterministic bodies (``bodies.py``) and a control endpoint.

``POST /__control?delay=S&status=N`` sets an added delay and a forced status for every
later request (``status=0`` clears it); ``GET /__stats`` answers the request count.

Run: ``python -m chaos.origin --port 8000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import uvloop
from aiohttp import web

from chaos.bodies import body_for, cache_control


class Origin:
    def __init__(self) -> None:
        self.delay = 0.0
        self.status = 0
        self.requests = 0

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == "/__control":
            self.delay = float(request.query.get("delay", self.delay))
            self.status = int(request.query.get("status", self.status))
            return web.Response(text="ok")
        if path == "/__stats":
            return web.Response(text=json.dumps({"requests": self.requests}))
        self.requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status:
            return web.Response(
                status=self.status, text="origin failure\n", headers={"Cache-Control": "no-store"}
            )
        return web.Response(
            body=body_for(path),
            headers={"Content-Type": "application/json", "Cache-Control": cache_control(path)},
        )


async def serve(port: int) -> None:
    origin = Origin()
    server = web.Server(origin.handle, access_log=None)
    runner = web.ServerRunner(server, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
