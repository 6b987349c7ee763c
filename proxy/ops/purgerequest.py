"""A purge request: what ``POST /purge`` and the fan-out messages carry, validated
field by field with plain-words errors, and its JSON (split into messages that fit a
datagram). ``proxy.ops.invalidation`` turns it into store operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from proxy.core.keys import normalize_path

FIELDS: Final = ("urls", "prefixes", "tags", "routes")
MAX_ITEMS: Final = 10_000  # per purge request
MAX_DATAGRAM: Final = 60_000


@dataclass(frozen=True, slots=True)
class PurgeRequest:
    """What to purge; the JSON of ``POST /purge`` and of the pub/sub messages.

    ``store_tags`` is internal (unsafe-method invalidation hands over the engine's own
    index tags); ``source`` names the replica that already purged the shared stores.
    ``soft`` makes it a soft purge: what it names is marked stale, not removed.
    """

    urls: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    store_tags: tuple[str, ...] = ()
    source: str | None = None
    soft: bool = False

    @staticmethod
    def parse(data: object, *, internal: bool = True) -> PurgeRequest:
        """Validate decoded JSON; ``ValueError`` says what is wrong in plain words. The
        admin API parses with ``internal=False``: callers name only the public fields."""
        if not isinstance(data, dict):
            raise ValueError(
                f'expected a JSON object like {{"urls": ["/path"]}}, got {_kind(data)}'
            )
        allowed = (*FIELDS, "soft", "store_tags", "source") if internal else (*FIELDS, "soft")
        unknown = sorted(name for name in data if name not in allowed)
        if unknown:
            raise ValueError(
                f"unknown field{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(repr(u) for u in unknown)}: a purge takes {', '.join(FIELDS)}"
                " (and soft: true for a soft purge)"
            )
        soft = data.get("soft", False)
        if not isinstance(soft, bool):
            raise ValueError(f"soft: expected true or false, got {_kind(soft)}")
        lists: dict[str, tuple[str, ...]] = {}
        for name in (*FIELDS, "store_tags"):
            value = data.get(name, [])
            if not isinstance(value, list):
                raise ValueError(f"{name}: expected a list of strings, got {_kind(value)}")
            for index, item in enumerate(value):
                if not isinstance(item, str) or not item:
                    what = "an empty string" if item == "" else _kind(item)
                    raise ValueError(
                        f"{name}: item {index + 1} is {what}, expected a non-empty string"
                    )
            lists[name] = tuple(value)
        for prefix in lists["prefixes"]:
            if not prefix.startswith("/"):
                raise ValueError(f"prefixes: {prefix!r} must start with /")
            _spelled("prefixes", prefix, prefix)
        for url in lists["urls"]:
            try:
                parts = urlsplit(url)
            except ValueError as exc:
                raise ValueError(f"urls: {url!r} is not a valid URL: {exc}") from None
            if parts.scheme not in ("", "http", "https") or not parts.path.startswith("/"):
                raise ValueError(f"urls: {url!r} is neither a path nor an http(s) URL")
            _spelled("urls", url, parts.path)
        if sum(len(v) for v in lists.values()) > MAX_ITEMS:
            raise ValueError(f"more than {MAX_ITEMS} items in one purge")
        source = data.get("source")
        if source is not None and not isinstance(source, str):
            raise ValueError(f"source: expected a string, got {_kind(source)}")
        return PurgeRequest(**lists, source=source, soft=soft)

    @staticmethod
    def decode(body: bytes) -> PurgeRequest:
        """The body of ``POST /purge``; ``ValueError`` says what is wrong in plain words."""
        if not body.strip():
            raise ValueError('the body is empty: send a JSON object like {"urls": ["/path"]}')
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ValueError(
                'the body is not valid JSON: send an object like {"tags": ["product:7"]}'
            ) from None
        return PurgeRequest.parse(data, internal=False)

    def is_empty(self) -> bool:
        return not (self.urls or self.prefixes or self.tags or self.routes or self.store_tags)

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {n: list(getattr(self, n)) for n in (*FIELDS, "store_tags")}
        doc = {n: v for n, v in doc.items() if v}
        if self.source is not None:
            doc["source"] = self.source
        if self.soft:
            doc["soft"] = True
        return orjson.dumps(doc)

    def chunks(self, limit: int = MAX_DATAGRAM) -> list[bytes]:
        """The request as messages of at most ``limit`` bytes (split by halving lists)."""
        payload = self.to_json()
        if len(payload) <= limit:
            return [payload]
        if len(self.urls + self.prefixes + self.tags + self.routes + self.store_tags) < 2:
            return []  # one item over the limit: nothing sane to send
        halves = [self._half(0), self._half(1)]
        return halves[0].chunks(limit) + halves[1].chunks(limit)

    def _half(self, which: int) -> PurgeRequest:
        def cut(items: tuple[str, ...]) -> tuple[str, ...]:
            middle = len(items) // 2
            return items[middle:] if which else items[:middle]

        return PurgeRequest(
            cut(self.urls),
            cut(self.prefixes),
            cut(self.tags),
            cut(self.routes),
            cut(self.store_tags),
            self.source,
            self.soft,
        )


def _spelled(name: str, item: str, path: str) -> None:
    """A path the proxy port refuses (``normalize_path``) is refused here too; the others
    are purged as the port spells them (``plan``: %-escapes of unreserved characters
    decoded, dot segments and ``//`` gone), the spelling their entries were stored under."""
    try:
        _ = normalize_path(path)
    except ValueError as exc:
        raise ValueError(f"{name}: {item!r}: {exc}") from None


def _kind(value: object) -> str:
    """What a JSON value is, for messages: "a string", "a number", "null", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"
