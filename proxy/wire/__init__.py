"""What the proxy port and the origin client share: HTTP/1.1 framing (``codec``, pure) and
the flow-controlled byte queue of a body (``bytequeue``).
"""
