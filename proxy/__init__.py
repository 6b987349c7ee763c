"""sidecache: an asyncio caching reverse proxy that runs beside a service."""

from __future__ import annotations

__version__ = "0.1.0"
