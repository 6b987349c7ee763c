"""The pure core: RFC 9111/9110 decisions, keys, routes, the stored envelope, rendering.

No awaits, no I/O, no event loop (an import-linter contract forbids asyncio and the I/O
libraries here, even indirectly); tested by tables without an event loop.
"""
