"""Faults under load, on loopback, bounded in time: ``bench/chaos/run --help``.

Every process it starts (Redis, Memcached, relays, the origin, sidecache, the load
generator) runs in its own session and is stopped by its process group when the run
ends, however it ends. Results go to ``bench/chaos/results/chaos-*.{json,md}``.
"""
