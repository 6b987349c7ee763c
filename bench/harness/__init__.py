"""sidecache's benchmark harness: the measuring instrument, not the proxy.

It starts an origin, the reference caches (nginx ``proxy_cache``, Varnish) and sidecache
in each configuration as its own processes on loopback, drives them with wrk, and prints
markdown tables. It never touches system services and stops everything it started.
"""
