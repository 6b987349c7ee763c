"""The wire memo: request heads seen before, byte for byte, with what they resolved to
(an engine ``Ticket``) and the bytes of their last answer.

A repeated hit is then a dict lookup, a store read and one write. This module holds
all of that state; the HTTP/1.1 server asks it through ``WireMemo`` (``lookup``,
``note``, ``keep``) and ``Memo.exact``, and the
engine makes every answer it replays (``Engine.answer_ticket``, which asks the one
freshness decision). A remembered answer is replayed only while it is exact:

- the store still holds the very bytes it was made from (a purged, evicted or replaced
  entry is not replayed);
- the engine clock is before its ``until`` (``replies.same_answer_until``: the next
  change of Age or of Cache-Status' ttl, never after the end of freshness);
- when the server wrote its own Date, the wall clock is still in that second.

Every field of the request is in its head's bytes, ``Range`` and ``If-Range`` included:
a ranged request's 206 or 416 is remembered under its own head and never replayed for
the plain request, nor the whole 200 for a ranged one.

The server also checks, before a lookup is answered, that the ticket's policy is the
engine's current one and that nothing (draining, an access log, a client that does not
read) needs the general path.
"""

from __future__ import annotations

import time
from typing import Final

from proxy.core.exchange import Ticket

MEMO_SIZE: Final = 4096  # request heads remembered with their answer
MEMO_BYTES: Final = 32 * 1024**2  # ... and the answer bytes they may hold
MEMO_HEAD_MAX: Final = 2048  # longer request heads are never remembered
MEMO_INLINE: Final = 16384  # answers below this are kept as one bytes object
NEVER: Final = float("inf")


class Memo:
    """One remembered request head: its ticket, its framing and its last answer."""

    __slots__ = (
        "date_until",
        "head",
        "http11",
        "keep_alive",
        "parts",
        "raw",
        "size",
        "ticket",
        "until",
    )

    def __init__(self, head: bytes, ticket: Ticket, keep_alive: bool, http11: bool) -> None:
        self.head = head  # the request head's bytes: the memo's key
        self.ticket = ticket
        self.keep_alive = keep_alive
        self.http11 = http11
        self.raw: bytes | None = None  # the stored bytes the answer was made from
        self.until = 0.0  # the answer is exact until then (engine clock)
        self.date_until = NEVER  # ... and until then (wall clock) when we dated it
        self.parts: tuple[bytes, ...] = ()
        self.size = 0  # the bytes it holds (its answer and the stored bytes), see MEMO_BYTES

    def exact(self, raw: bytes, now: float) -> bool:
        """Whether the remembered answer is still the answer to ``raw`` at ``now``."""
        return (
            (raw is self.raw or raw == self.raw)
            and now < self.until
            and (self.date_until == NEVER or time.time() < self.date_until)
        )


class WireMemo:
    """The remembered heads of one server, bounded in count and in bytes."""

    def __init__(self) -> None:
        self.entries: dict[bytes, Memo] = {}  # request head bytes -> its Memo
        self.size = 0  # the bytes the entries hold
        self._seen: set[int] = set()  # hashes of request heads seen lately

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, head: bytes) -> Memo | None:
        return self.entries.get(head)

    def note(self, head: bytes, ticket: Ticket | None, keep_alive: bool, http11: bool) -> None:
        """A whole request head alone in its read, and its ticket when it was a hit from
        memory or (before its answer) its store is a shared one: remembered when it
        repeats."""
        if ticket is not None and len(head) <= MEMO_HEAD_MAX and self.seen_before(head):
            self.remember(Memo(head, ticket, keep_alive, http11))

    def seen_before(self, head: bytes) -> bool:
        """Whether a request head was seen lately: only a head that repeats is worth
        remembering (real traffic, with a request id per request, never repeats one)."""
        seen = self._seen
        digest = hash(head)
        if digest in seen:
            return True
        if len(seen) >= 4 * MEMO_SIZE:
            seen.clear()
        seen.add(digest)
        return False

    def remember(self, memo: Memo) -> None:
        self.forget(memo.head)
        while len(self.entries) >= MEMO_SIZE:
            self.forget(next(iter(self.entries)))
        self.entries[memo.head] = memo
        self.size += memo.size

    def forget(self, head: bytes) -> None:
        old = self.entries.pop(head, None)
        if old is not None:
            self.size -= old.size

    def keep(
        self, memo: Memo, raw: bytes, until: float, date_until: float, parts: tuple[bytes, ...]
    ) -> None:
        """A remembered answer was (re)built from ``raw``: entries evicted from a store
        stay alive here, so what the memo holds is bounded (oldest out first; an answer
        larger than a quarter of the bound is not remembered)."""
        memo.raw, memo.until, memo.date_until, memo.parts = raw, until, date_until, parts
        size = len(raw) + sum(len(part) for part in parts)
        if self.entries.get(memo.head) is not memo:  # forgotten meanwhile
            memo.size = size
            return
        self.size += size - memo.size
        memo.size = size
        if size > MEMO_BYTES // 4:
            self.forget(memo.head)
        while self.size > MEMO_BYTES:
            self.forget(next(iter(self.entries)))
