"""The driver of the cache: it performs what ``proxy.core`` decides.

The engine dispatches on decisions; the hit path answers from process memory without an
await; forward, coalesce and entries talk to the origin client and the stores (through
the ``Store`` protocol only).
"""
