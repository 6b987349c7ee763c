"""The one exception hierarchy of sidecache.

Foreign exceptions (redis, aiomcache, the origin connection's OS errors) are translated
into these in exactly two places: ``proxy/origin/client.py`` and ``proxy/stores/*``.
Nothing above them ever sees a library's exception type::

    SidecacheError
    ├── PolicyError                 a policy file is invalid (carries every issue found)
    ├── StoreError                  a cache backend failed; the engine treats it as a miss
    │   ├── StoreUnavailable        (also ConnectionError) refused, reset, breaker open
    │   ├── StoreTimeout            (also TimeoutError) no answer within the deadline
    │   └── StoreFull               the backend refused a write for lack of memory (OOM)
    └── OriginError                 the upstream API could not be reached or answered badly
        ├── OriginTimeout           (also TimeoutError) → 504
        └── OriginUnreachable       (also ConnectionError) → 502
"""

from __future__ import annotations

from dataclasses import dataclass


class SidecacheError(Exception):
    """Base of every error sidecache raises on purpose."""


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    """One problem in a policy file, located as precisely as the YAML allows."""

    path: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.field}: {self.message}"


class PolicyError(SidecacheError):
    """A policy file could not be loaded; ``issues`` lists every problem found, and
    ``warnings`` what ``validate`` would also warn of, when it got that far."""

    def __init__(self, issues: list[PolicyIssue], warnings: tuple[PolicyIssue, ...] = ()) -> None:
        self.issues = issues
        self.warnings = warnings
        super().__init__("\n".join(str(issue) for issue in issues))


class StoreError(SidecacheError):
    """A cache backend operation failed."""

    def __init__(self, backend: str, message: str) -> None:
        self.backend = backend
        super().__init__(f"store {backend!r}: {message}")


class StoreUnavailable(StoreError, ConnectionError):
    """The backend refused or dropped the connection, or its breaker is open."""


class StoreTimeout(StoreError, TimeoutError):
    """The backend did not answer within the operation deadline."""


class StoreFull(StoreError):
    """The backend refused a write for lack of memory (Redis ``OOM``, Memcached
    ``SERVER_ERROR out of memory``): the store is healthy but full, and says so loudly."""


class OriginError(SidecacheError):
    """The origin could not be reached or did not answer in time."""


class OriginTimeout(OriginError, TimeoutError):
    """The origin did not answer within the route's timeout (answered 504)."""


class OriginUnreachable(OriginError, ConnectionError):
    """The origin refused or dropped the connection (answered 502)."""
