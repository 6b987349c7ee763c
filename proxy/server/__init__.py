"""The proxy port: the listener, one asyncio protocol per connection on httptools, the
request and answer heads, and the worker that wires stores, origin, engine and listeners.
"""
