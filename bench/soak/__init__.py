"""Soak: ``bench/soak/run --help``. Ten minutes at ~80% of the measured maximum over a
key space larger than the memory store, sampling the worker's RSS, file descriptors,
sockets, asyncio tasks, connections and the memory store's bytes."""
