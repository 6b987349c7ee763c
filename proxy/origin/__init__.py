"""The origin client: one keep-alive pool of asyncio protocols on httptools to the one
configured origin (``client`` is the only module the rest of the proxy imports).
"""
