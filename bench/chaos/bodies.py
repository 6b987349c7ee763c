"""What the chaos origin answers for a path, so that any client can byte-compare.

Paths are ``/<route>/<kind>/<id>``: ``kind`` is ``hot`` (max-age 1 h), ``short``
(max-age 2 s: stale within minutes, for stale-if-error), ``cold`` (max-age 60 s, each
id asked once) or anything else; route ``p`` is never stored. Bodies are deterministic
JSON: 1 KiB, every tenth id 16 KiB.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

MAX_AGE = {"hot": 3600, "short": 2, "cold": 60}


@lru_cache(maxsize=8192)
def body_for(path: str) -> bytes:
    digest = hashlib.sha256(path.encode()).hexdigest()
    size = 16384 if path.endswith("0") else 1024
    head = f'{{"path":"{path}","pad":"'.encode()
    pad = (digest * (size // 64 + 2)).encode()[: size - len(head) - 3]
    return head + pad + b'"}\n'


def cache_control(path: str) -> str:
    parts = path.split("/")
    if len(parts) < 3 or parts[1] == "p":
        return "no-store"
    return f"max-age={MAX_AGE.get(parts[2], 60)}"
