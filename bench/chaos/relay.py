"""A TCP relay that can hold every reply of the server behind it back by a delay.

It stands between sidecache and Redis or Memcached for the whole run (delay 0), so a
fault can make the store slow without touching it: ``delay <seconds>`` sent as a line
to the control port sets the delay of each server→client read from then on.

Run: ``python -m chaos.relay --listen 7001 --target 127.0.0.1:6379 --control 7002``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import uvloop


class Relay:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.delay = 0.0

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()  # the server is down: so is this connection
            return
        await asyncio.gather(
            self.pipe(reader, up_writer, delayed=False),
            self.pipe(up_reader, writer, delayed=True),
        )

    async def pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if delayed and self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode().split()
        if len(line) == 2 and line[0] == "delay":
            self.delay = float(line[1])
        writer.write(f"delay {self.delay}\n".encode())
        await writer.drain()
        writer.close()


async def serve(listen: int, target: tuple[str, int], control: int) -> None:
    relay = Relay(target)
    await asyncio.start_server(relay.accept, "127.0.0.1", listen, backlog=1024)
    await asyncio.start_server(relay.control, "127.0.0.1", control)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--control", type=int, required=True)
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    uvloop.run(serve(args.listen, (host, int(port)), args.control))


if __name__ == "__main__":
    main()
