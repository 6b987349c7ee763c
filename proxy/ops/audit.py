"""``sidecache audit``: what the policy's Redis and Memcached backends hold, per route.

It walks each shared backend with the read-only scans of ``proxy/stores/scan.py``, sorts
every key into entry / index / lease / foreign by the store's key layout, and reports per
route keys, bytes, a TTL histogram and the largest keys; then the findings: keys without
a TTL, keys of routes no longer in the policy, index keys whose entries are gone. Exit 1
on a finding (a CronJob then fails visibly), 2 for a bad policy or an unreachable store.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final, TextIO
from urllib.parse import urlsplit

import orjson

from proxy.core.keys import PREFIX
from proxy.errors import PolicyError, StoreError
from proxy.policy.load import LoadedPolicy, MemcachedBackend, RedisBackend, load_policy
from proxy.stores import redis_layout as layout
from proxy.stores.scan import KeyRecord, RedisScan, metadump
from proxy.units import format_size

EXIT_FINDINGS: Final = 1
EXIT_BROKEN: Final = 2
BUCKETS: Final = (
    ("<1m", 60.0),
    ("1m-10m", 600.0),
    ("10m-1h", 3600.0),
    ("1h-1d", 86400.0),
    (">1d", float("inf")),
)
LARGEST: Final = 3  # largest keys kept per route
EXAMPLES: Final = 10  # key names kept per finding


# ---------------------------------------------------------------- key layout


def route_of(key: str) -> str | None:
    """The route of an engine key: ``sc:{route}:…`` or ``sc:route:…`` (``None``: not one)."""
    if not key.startswith(PREFIX + ":"):
        return None
    rest = key[len(PREFIX) + 1 :]
    if rest.startswith("{"):
        end = rest.find("}")
        return rest[1:end] if end > 1 else None
    route, sep, _ = rest.partition(":")
    return route if sep and route else None


def describe_redis(stored: str, prefix: str = "") -> tuple[str, str | None]:
    """What a key in a Redis backend is, and its route: ``RedisStore``'s own layout, as
    ``redis_layout.describe`` tells it: ``entry``, ``generation`` (a tag's generation: the
    index), ``lease``, ``foreign`` (another prefix, another program), and ``index`` for tag
    sets and directories of the layout before generations (until they expire)."""
    return layout.describe(stored, prefix)


def describe_memcached(stored: str, prefix: str = "") -> tuple[str, str | None]:
    """What a key in a Memcached backend is (``MemcachedStore``'s layout): ``entry``,
    ``generation`` (a tag's counter or a soft purge's link, index data), ``lease``,
    ``unattributed`` (value chunks and keys hashed for length: their route cannot be told)
    or ``foreign``."""
    if not stored.startswith(prefix):
        return "foreign", None
    rest = stored[len(prefix) :]
    if rest.startswith(("~g:", "~s:")):
        return "generation", None  # a counter, or a soft purge's link from one
    if rest.startswith(("~c:", "~h:")):
        return "unattributed", None
    kind = "entry"
    if rest.startswith("~l:"):
        kind, rest = "lease", rest[3:]
    route = route_of(rest)
    return (kind, route) if route is not None else ("foreign", None)


# ---------------------------------------------------------------- figures


@dataclass
class Figures:
    """Keys, bytes, a TTL histogram and the largest keys of one group of keys."""

    keys: int = 0
    bytes: int = 0
    ttl: Counter[str] = field(default_factory=Counter)
    no_ttl: list[str] = field(default_factory=list)
    no_ttl_count: int = 0
    largest: list[tuple[int, str]] = field(default_factory=list)  # a min-heap

    def add(self, record: KeyRecord) -> None:
        self.keys += 1
        self.bytes += record.size
        if record.ttl is None:
            self.no_ttl_count += 1
            self.ttl["none"] += 1
            if len(self.no_ttl) < EXAMPLES:
                self.no_ttl.append(record.key)
        else:
            self.ttl[next(name for name, upto in BUCKETS if record.ttl < upto)] += 1
        entry = (record.size, record.key)
        if len(self.largest) < LARGEST:
            heapq.heappush(self.largest, entry)
        elif entry > self.largest[0]:
            heapq.heapreplace(self.largest, entry)

    def as_json(self) -> dict[str, Any]:
        return {
            "keys": self.keys,
            "bytes": self.bytes,
            "ttl_histogram": {name: self.ttl[name] for name in ("none", *(b for b, _ in BUCKETS))},
            "no_ttl": self.no_ttl_count,
            "no_ttl_keys": self.no_ttl,
            "largest": [{"key": k, "bytes": b} for b, k in sorted(self.largest, reverse=True)],
        }


@dataclass
class BackendAudit:
    """One backend's scan: figures per route and per kind of key, and what went wrong."""

    name: str
    type: str
    nodes: list[str] = field(default_factory=list)
    scanned: int = 0
    sampled: bool = False
    error: str | None = None
    routes: dict[str, Figures] = field(default_factory=dict)
    kinds: dict[str, Figures] = field(default_factory=dict)
    orphan_index: list[str] = field(default_factory=list)
    orphan_index_count: int = 0

    def add(self, record: KeyRecord, kind: str, route: str | None) -> None:
        self.scanned += 1
        self.kinds.setdefault(kind, Figures()).add(record)
        if route is not None and kind in ("entry", "lease"):
            self.routes.setdefault(route, Figures()).add(record)

    def findings(self, known: set[str]) -> list[dict[str, Any]]:
        found = []
        for route, figures in sorted(self.routes.items()):
            if route not in known:
                found.append(self._finding("orphan-route", route, figures.keys, []))
            if figures.no_ttl_count:
                found.append(self._finding("no-ttl", route, figures.no_ttl_count, figures.no_ttl))
        for kind in ("generation", "index", "unattributed"):  # entries and leases: above
            held = self.kinds.get(kind)
            if held is not None and held.no_ttl_count:
                found.append(self._finding("no-ttl", None, held.no_ttl_count, held.no_ttl))
                found[-1]["kind"] = kind
        if self.orphan_index_count:
            found.append(
                self._finding("orphan-index", None, self.orphan_index_count, self.orphan_index)
            )
        return found

    def _finding(self, kind: str, route: str | None, count: int, keys: list[str]) -> dict[str, Any]:
        return {
            "backend": self.name,
            "finding": kind,
            "route": route,
            "keys": count,
            "examples": keys[:EXAMPLES],
        }

    def as_json(self, known: set[str]) -> dict[str, Any]:
        return {
            "type": self.type,
            "nodes": self.nodes,
            "scanned": self.scanned,
            "sampled": self.sampled,
            "error": self.error,
            "routes": {
                r: {**f.as_json(), "in_policy": r in known} for r, f in sorted(self.routes.items())
            },
            "kinds": {kind: f.as_json() for kind, f in sorted(self.kinds.items())},
            "orphan_index": {"keys": self.orphan_index_count, "examples": self.orphan_index},
        }


# ---------------------------------------------------------------- scanning


class Progress:
    """``backend: N keys`` on one stderr line, only when stderr is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.on = stream.isatty()

    def show(self, audit: BackendAudit) -> None:
        if self.on:
            self.stream.write(f"\raudit: {audit.name}: {audit.scanned} keys scanned")
            self.stream.flush()

    def done(self) -> None:
        if self.on:
            self.stream.write("\r\033[K")
            self.stream.flush()


async def audit_redis(
    name: str, config: RedisBackend, sample: int | None, progress: Progress
) -> BackendAudit:
    # the address is named even when Redis cannot be reached; then the masters replace it
    audit = BackendAudit(name, "redis", nodes=list(config.nodes) or [_address(config.url)])
    scan = RedisScan(
        name,
        config.url,
        cluster=config.cluster,
        nodes=config.nodes,
        connect_timeout=max(config.connect_timeout, 2.0),
    )
    named: set[str] = set()  # generation keys some entry's envelope names
    generations: list[str] = []
    try:
        audit.nodes = await scan.masters()
        for node in audit.nodes:
            left = None if sample is None else sample - audit.scanned
            if left is not None and left <= 0:
                audit.sampled = True
                break
            async for batch in scan.scan(node, left):
                entries = []
                for record in batch:
                    kind, route = describe_redis(record.key, config.key_prefix)
                    audit.add(record, kind, route)
                    if kind == "entry":
                        entries.append(record.key)
                    elif kind == "generation":
                        generations.append(record.key)
                named.update(
                    _named_generations(config.key_prefix, entries, await scan.heads(node, entries))
                )
                progress.show(audit)
        audit.sampled = audit.sampled or (sample is not None and audit.scanned >= sample)
    except StoreError as exc:
        audit.error = str(exc)
    finally:
        await scan.aclose()
    if not audit.sampled and audit.error is None:  # a partial scan cannot tell
        for key in generations:
            if layout.link_generation(key) not in named:
                audit.orphan_index_count += 1
                if len(audit.orphan_index) < EXAMPLES:
                    audit.orphan_index.append(key)
    return audit


def _named_generations(prefix: str, entries: list[str], heads: list[bytes]) -> set[str]:
    """The generation keys the envelopes of ``entries`` name (``redis_layout``: MAGIC, n,
    n x (tag digest, generation)); in a cluster they live in the entry's bucket."""
    named = set()
    for stored, marked in zip(entries, heads, strict=True):
        head = layout.envelope_head(marked)
        if len(head) < 2 or head[0] != layout.MAGIC:
            continue  # a marker that is not an envelope (hit-for-miss) names none
        rest = stored[len(prefix) :]
        bucket = rest[: rest.index("}") + 1] if rest.startswith("{") else ""
        for j in range(head[1]):
            at = 2 + layout.PAIR * j
            digest = head[at : at + layout.TAG_DIGEST].decode("ascii", "replace")
            named.add(f"{prefix}{bucket}~g:{digest}")
    return named


async def audit_memcached(
    name: str, config: MemcachedBackend, sample: int | None, progress: Progress
) -> BackendAudit:
    audit = BackendAudit(name, "memcached", nodes=list(config.servers))
    for server in config.servers:
        left = None if sample is None else sample - audit.scanned
        if left is not None and left <= 0:
            audit.sampled = True
            break
        try:
            async for batch in metadump(name, server, left):
                for record in batch:
                    kind, route = describe_memcached(record.key, config.key_prefix)
                    audit.add(record, kind, route)
                progress.show(audit)
        except StoreError as exc:
            audit.error = f"{audit.error}; {exc}" if audit.error else str(exc)
    audit.sampled = audit.sampled or (sample is not None and audit.scanned >= sample)
    return audit


async def audit_policy(
    loaded: LoadedPolicy, sample: int | None, progress: Progress
) -> list[BackendAudit]:
    """Every Redis and Memcached backend of the policy, one after the other."""
    audits = []
    for name, config in loaded.policy.backends.items():
        if isinstance(config, RedisBackend):
            audits.append(await audit_redis(name, config, sample, progress))
        elif isinstance(config, MemcachedBackend):
            audits.append(await audit_memcached(name, config, sample, progress))
    progress.done()
    return audits


def _address(url: str) -> str:
    """``host:port`` (or the socket path) of a Redis URL, without its credentials."""
    parts = urlsplit(url)
    return parts.path if parts.scheme == "unix" else parts.netloc.rpartition("@")[2] or url


# ---------------------------------------------------------------- the command


def report(loaded: LoadedPolicy, audits: list[BackendAudit]) -> dict[str, Any]:
    known = {route.name for route in loaded.routes}
    findings = [f for audit in audits for f in audit.findings(known)]
    broken = [a.name for a in audits if a.error]
    code = EXIT_BROKEN if broken else EXIT_FINDINGS if findings else 0
    return {
        "policy": loaded.path,
        "backends": {audit.name: audit.as_json(known) for audit in audits},
        "findings": findings,
        "unreachable": broken,
        "exit": code,
    }


def main(args: argparse.Namespace) -> int:
    try:
        loaded = load_policy(args.policy)
    except PolicyError as error:
        for issue in error.issues:
            print(issue, file=sys.stderr)
        return EXIT_BROKEN
    if args.sample is not None and args.sample < 1:
        print("--sample must be at least 1", file=sys.stderr)
        return EXIT_BROKEN
    audits = asyncio.run(audit_policy(loaded, args.sample, Progress(sys.stderr)))
    result = report(loaded, audits)
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render(result))
    for name in result["unreachable"]:
        print(f"audit: backend {name}: {result['backends'][name]['error']}", file=sys.stderr)
    code: int = result["exit"]
    return code


def render(result: dict[str, Any]) -> str:
    """The text form of ``report``."""
    lines = [f"sidecache audit: policy {result['policy']}"]
    if not result["backends"]:
        lines.append("no Redis or Memcached backend in the policy: nothing to audit")
    for name, backend in result["backends"].items():
        lines += ["", _headline(name, backend)]
        if backend["error"]:
            lines.append(f"  error: {backend['error']}")
        lines += _route_table(backend["routes"])
        for kind, figures in backend["kinds"].items():
            if kind != "entry":
                lines.append(_kind_line(kind, figures))
    unread = result["unreachable"]
    if result["findings"]:
        lines += ["", "findings:"]
    elif unread:  # "none" would read as a clean store
        lines += ["", f"findings: none in what was read; not scanned: {', '.join(unread)}"]
    else:
        lines += ["", "findings: none"]
    for found in result["findings"]:
        lines.append("  " + _finding_line(found))
    return "\n".join(lines) + "\n"


def _headline(name: str, backend: dict[str, Any]) -> str:
    nodes = ", ".join(backend["nodes"]) or "-"
    sampled = f" (sample: stopped at {backend['scanned']})" if backend["sampled"] else ""
    return f"backend {name} ({backend['type']}, {nodes}): {backend['scanned']} keys{sampled}"


def _route_table(routes: dict[str, Any]) -> list[str]:
    if not routes:
        return ["  no entries"]
    names = ("none", *(b for b, _ in BUCKETS))
    rows = [("route", "keys", "bytes", *(f"ttl {n}" for n in names), "largest")]
    for route, figures in routes.items():
        largest = figures["largest"][0] if figures["largest"] else None
        biggest = f"{format_size(largest['bytes'])} {largest['key']}" if largest else "-"
        label = route if figures["in_policy"] else f"{route} (not in policy)"
        hist = (str(figures["ttl_histogram"][n]) for n in names)
        rows.append((label, str(figures["keys"]), format_size(figures["bytes"]), *hist, biggest))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


_KINDS: Final = {
    "lease": "leases",
    "generation": "tag generation counters",
    "index": "tag sets of the layout before generations (they expire)",
    "unattributed": "value chunks and keys hashed for length (route unknown)",
    "foreign": "keys of other programs or prefixes (not sidecache's: never a finding)",
}


def _kind_line(kind: str, figures: dict[str, Any]) -> str:
    return (
        f"  {figures['keys']} {_KINDS.get(kind, kind)}: {format_size(figures['bytes'])}, "
        f"{figures['no_ttl']} without TTL"
    )


def _finding_line(found: dict[str, Any]) -> str:
    where = f"backend {found['backend']}"
    examples = ", ".join(found["examples"][:3])
    if found["finding"] == "no-ttl":
        what = f"route {found['route']}" if found["route"] else _KINDS[found["kind"]]
        return f"{where}: {found['keys']} keys without TTL ({what}): {examples}"
    if found["finding"] == "orphan-route":
        return f"{where}: {found['keys']} keys of route {found['route']}, no longer in the policy"
    return f"{where}: {found['keys']} index keys whose entries are gone: {examples}"
