"""Where ``RedisStore`` keeps things in Redis, how an entry is enveloped, and its scripts.

This module is the one description of the key layout (``describe`` classifies any key the
proxy writes; ``docs/reliability.md`` says the same in prose). ``P`` is the backend's
``key_prefix`` (no braces); ``K`` an engine key (``sc:<route>:<digest>``, see
``proxy/core/keys.py``); ``D`` the first 12 hex digits of a tag's blake2b digest::

    single node                 cluster (B = {b} is one of 64 bucket hash tags)
    P K                         P{b}K            entry: envelope + payload, PX ttl
    P~g:D                       P{b}~g:D         a tag's generation (12 digits), PX >= entries
    P~s:D:G                     P{b}~s:D:G       soft purge link: G stale since <time>, now <G'>
    P~l:K                       P{b}~l:K         lease: SET NX PX <random token>

**Purges never depend on index data surviving.** An entry's envelope names the digest and
generation of each of its tags; the read script (``READ``) serves it only while every one
of those generation keys still holds that value, in the same call as the entry (one round
trip; in a cluster the generations live in the entry's bucket, so in its slot). A purge
deletes the tags' generation keys (``P~g:D``, or ``P{b}~g:D`` in every bucket): a missing
generation reads as "changed", so eviction, a restart or a hand-deleted key can only cause
misses, never a stale hit. The next write of a tag starts a new random generation.

**A soft purge degrades to a purge, never to nothing.** It replaces a tag's generation G
by a new one G' and leaves a link ``P~s:D:G`` (the purge's Redis ``TIME`` and G'): READ
follows links from an entry's generation to the current one and answers the entry marked
stale since the first link's time (``proxy.core.entry.soften``). A lost link or generation
breaks the chain: a miss, as after a purge. A purge deletes the generation, so the chain
of any entry softened before leads nowhere either. Entries softened by key carry their
mark in front of the envelope (``SOFTENED``, then the time).

**Every key has a TTL, and the index is bounded.** Entries and leases expire; a generation
key lives as long as the longest entry written under it (``WRITE`` extends it, never
shortens it) and exists once per tag (per bucket in a cluster), however often entries are
rewritten. No sets, no member lists.

**Spread.** In a cluster an entry's bucket comes from a digest of its key, not its route:
one route's entries cover 64 hash tags whose slots are evenly spaced over 0-16383, so every
master of any even split holds its share.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from typing import Final, Literal

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

BUCKETS: Final = 64  # cluster buckets (hash tags); a single node has one, unnamed
MAGIC: Final = 0xC5  # first byte of an envelope
TAG_DIGEST: Final = 12  # hex digits naming a tag in a generation key
GEN: Final = 12  # hex digits of a generation
PAIR: Final = TAG_DIGEST + GEN
MAX_TAGS: Final = 255  # an envelope counts its tags in one byte
SOFTENED: Final = 0xC6  # first byte of an entry a soft purge marked by key (then its time)
SOFT_MARK: Final = 18  # SOFTENED and the 17 characters of the time, before the envelope
MAX_LINKS: Final = 8  # soft purges of one tag an entry outlives (then: a miss)


def _bucket_tags() -> tuple[str, ...]:
    """64 short hash tags, the i-th hashing into the i-th 64th of the slot range."""
    width = REDIS_CLUSTER_HASH_SLOTS // BUCKETS
    found: dict[int, str] = {}
    n = 0
    while len(found) < BUCKETS:
        name = f"{n:x}"
        found.setdefault(key_slot(name.encode()) // width, name)
        n += 1
    return tuple(found[i] for i in range(BUCKETS))


BUCKET_TAGS: Final = _bucket_tags()


def bucket_of(key: str) -> str:
    """The hash tag (with braces) of a cluster entry's bucket."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=1).digest()
    return "{" + BUCKET_TAGS[digest[0] % BUCKETS] + "}"


def fresh_generation() -> str:
    """A new generation: 12 random decimal digits, the first not 0, so that Redis keeps
    it as an integer (16 bytes less per generation key than a 12-character string)."""
    return str(10**11 + secrets.randbelow(9 * 10**11))


def tag_digest(tag: str) -> str:
    return hashlib.blake2b(tag.encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()


def envelope_head(value: bytes) -> bytes:
    """``value`` (or the first bytes of it) without a soft purge's mark in front."""
    return value[SOFT_MARK:] if value[:1] == bytes((SOFTENED,)) else value


def link_generation(key: str) -> str:
    """The generation key a soft purge's link ``P{b}~s:D:G`` was made from: ``P{b}~g:D``
    (a generation key as it is)."""
    at = key.rfind("~s:")
    if at < 0 or key.rfind("~g:") > at:
        return key
    return f"{key[:at]}~g:{key[at + 3 : at + 3 + TAG_DIGEST]}"


Kind = Literal["entry", "generation", "index", "lease", "foreign"]


def describe(stored: str, prefix: str = "") -> tuple[Kind, str | None]:
    """What a key in Redis is, and the route of an entry or lease (``None`` otherwise).

    For ``sidecache audit`` and tests: ``("entry", "products")`` for
    ``P{1f}sc:products:<digest>`` (or ``Psc:products:…`` on a single node), ``("generation",
    None)``, ``("lease", route)``, or ``("foreign", None)`` for a key this proxy never
    writes (another prefix, another program). Keys of the layout before generations are
    still told apart until they expire: ``("index", route)`` for a tag set
    ``P~t:{route}:tag``, ``("index", None)`` for a tag directory ``P~td:tag``, leases
    ``P~l:{route}:K`` and entries ``Psc:{route}:…``.
    """
    if not stored.startswith(prefix):
        return "foreign", None
    rest = stored[len(prefix) :]
    if rest.startswith("~td:"):
        return "index", None
    if rest.startswith(("~t:{", "~l:{")):
        end = rest.find("}")
        kind: Kind = "index" if rest[1] == "t" else "lease"
        return (kind, rest[4:end]) if end > 4 else ("foreign", None)
    if rest.startswith("{") and (end := rest.find("}")) > 1:
        rest = rest[end + 1 :]  # a bucket (or, before, a digest group for a tagless key)
    if rest.startswith(("~g:", "~s:")):
        return "generation", None  # a generation, or a soft purge's link from one
    kind = "entry"
    if rest.startswith("~l:"):
        kind, rest = "lease", rest[3:]
    parts = rest.split(":")
    if len(parts) < 3 or parts[0] != "sc" or not parts[1]:
        return "foreign", None  # not an engine key (tests write such keys)
    return kind, parts[1].removeprefix("{").removesuffix("}")


# KEYS = entries; ARGV[1] = the generation keys' base on a single node ("" in a cluster:
# the entry's own "P{b}" then). An envelope: MAGIC, n, n x (tag digest, generation), payload;
# the answer is the payload alone (cut here, in Redis: a big body is never copied twice in
# the proxy), or, for an entry a soft purge marked, that frame (proxy.core.entry.soften) around
# it, with the earliest mark: its own (SOFTENED) or a tag's. A tag's generation that is not
# the entry's is followed through the soft purges' links (at most MAX_LINKS) to the
# current one; a missing link or generation means purged.
# An entry whose generations changed (purged) or vanished (evicted, restarted, deleted by
# hand) is a miss, and deleted on the way. A key of another type is a miss, not an error.
READ: Final = """
local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local v = redis.pcall('GET', key)
  local soft = false
  out[i] = false
  if type(v) == 'string' and string.byte(v, 1) == 198 and #v > 18 then
    soft = string.sub(v, 2, 18)
    v = string.sub(v, 19)
  end
  if type(v) == 'string' and string.byte(v, 1) == 197 then
    local n = string.byte(v, 2)
    local ok = #v >= 2 + 24 * n
    if ok and n > 0 then
      local base = ARGV[1]
      if base == '' then base = string.match(key, '^[^{]*{[^}]*}') .. '~g:' end
      local gkeys = {}
      for j = 0, n - 1 do gkeys[j + 1] = base .. string.sub(v, 3 + 24 * j, 14 + 24 * j) end
      local gens = redis.call('MGET', unpack(gkeys))
      for j = 0, n - 1 do
        local g, cur, at = string.sub(v, 15 + 24 * j, 26 + 24 * j), gens[j + 1], false
        if cur ~= g and type(cur) == 'string' then
          local link = string.sub(gkeys[j + 1], 1, -16) .. '~s:'
          link = link .. string.sub(v, 3 + 24 * j, 14 + 24 * j) .. ':'
          for _ = 1, MAX_LINKS do
            local l = redis.pcall('GET', link .. g)
            if type(l) ~= 'string' or #l ~= 29 then break end
            at = at or string.sub(l, 1, 17)
            g = string.sub(l, 18)
            if g == cur then break end
          end
          if g == cur and (not soft or at < soft) then soft = at end
        end
        if g ~= cur then ok = false break end
      end
    end
    if not ok then redis.call('DEL', key)
    elseif soft then out[i] = '\\198' .. soft .. string.sub(v, 3 + 24 * n)
    else out[i] = string.sub(v, 3 + 24 * n) end
  end
end
return out
""".replace("MAX_LINKS", str(MAX_LINKS))

# KEYS[1] = the entry, KEYS[2..] = its tags' generation keys (in its slot); ARGV[1] = the
# payload, ARGV[2] = ttl ms, ARGV[3] = the tag digests, ARGV[4] = a fresh generation for
# each (both concatenated, 12 hex digits each). A missing generation starts at the fresh
# one; every generation lives at least as long as this entry. The entry is written first:
# Redis refuses a script's writes under OOM only until its first write succeeds. Untagged
# entries are written here too: the envelope is put together in Redis, not in the proxy.
# (A cluster's write; a single node's is GENERATIONS, then a plain SET.)
WRITE: Final = """
local ms = tonumber(ARGV[2])
local head, fresh, older = {}, {}, {}
for i = 2, #KEYS do
  local g = redis.pcall('GET', KEYS[i])
  if type(g) ~= 'string' or #g ~= 12 then
    g = string.sub(ARGV[4], 12 * i - 23, 12 * i - 12)
    fresh[#fresh + 1] = i
  else
    older[#older + 1] = i
  end
  head[i - 1] = string.sub(ARGV[3], 12 * i - 23, 12 * i - 12) .. g
end
redis.call('SET', KEYS[1], string.char(197, #KEYS - 1) .. table.concat(head), 'PX', ms)
redis.call('APPEND', KEYS[1], ARGV[1])
for _, i in ipairs(fresh) do
  redis.call('SET', KEYS[i], string.sub(head[i - 1], 13), 'PX', ms)
end
for _, i in ipairs(older) do
  if redis.call('PTTL', KEYS[i]) < ms then redis.call('PEXPIRE', KEYS[i], ms) end
end
return 1
"""

# A single node's write, first half: KEYS = the tags' generation keys; ARGV[1] = ttl ms,
# ARGV[2] = a fresh generation for each (concatenated). Answers every generation,
# concatenated; the entry is then written with a plain SET (a big body is never copied
# through Lua), and read back only while these still hold. Fresh ones are written first:
# Redis refuses a script's writes under OOM only until its first write succeeds.
GENERATIONS: Final = """
local ms = tonumber(ARGV[1])
local gens, older = {}, {}
for i = 1, #KEYS do
  local g = redis.pcall('GET', KEYS[i])
  if type(g) ~= 'string' or #g ~= 12 then
    g = string.sub(ARGV[2], 12 * i - 11, 12 * i)
    redis.call('SET', KEYS[i], g, 'PX', ms)
  else
    older[#older + 1] = i
  end
  gens[i] = g
end
for _, i in ipairs(older) do
  if redis.call('PTTL', KEYS[i]) < ms then redis.call('PEXPIRE', KEYS[i], ms) end
end
return table.concat(gens)
"""

# A soft purge's time, as every replica sees it: Redis TIME, "%010d.%06d" (17 characters,
# as proxy.core.entry.soften frames it)
_NOW: Final = """
local t = redis.call('TIME')
local at = string.format('%010d.%06d', tonumber(t[1]), tonumber(t[2]))
"""

# A soft purge of tags: KEYS = their generation keys (in one slot); ARGV[1] = a fresh
# generation for each (concatenated). Each generation G is replaced by its fresh one G',
# and a link P{b}~s:D:G = <time><G'> (_NOW) tells READ that entries of G are stale since
# then. Both live as long as G did. The link is written first: a READ between the two
# finds G current, unmarked, as before.
SOFTEN: Final = (
    _NOW
    + """
local n = 0
for i = 1, #KEYS do
  local g = redis.pcall('GET', KEYS[i])
  local ms = redis.call('PTTL', KEYS[i])
  if type(g) == 'string' and #g == 12 and ms > 0 then
    local new = string.sub(ARGV[1], 12 * i - 11, 12 * i)
    local link = string.sub(KEYS[i], 1, -16) .. '~s:' .. string.sub(KEYS[i], -12) .. ':' .. g
    redis.call('SET', link, at .. new, 'PX', ms)
    redis.call('SET', KEYS[i], new, 'PX', ms)
    n = n + 1
  end
end
return n
"""
)

# A soft purge of entries: KEYS = entries (in one slot). Each envelope of ours gets the
# SOFTENED byte and Redis TIME in front, keeping its TTL; one marked already keeps its
# earlier mark. Answers how many are marked.
SOFTEN_KEYS: Final = (
    _NOW
    + """
local n = 0
for i = 1, #KEYS do
  local v = redis.pcall('GET', KEYS[i])
  if type(v) == 'string' and string.byte(v, 1) == 197 then
    redis.call('SET', KEYS[i], '\\198' .. at .. v, 'KEEPTTL')
    n = n + 1
  elseif type(v) == 'string' and string.byte(v, 1) == 198 then
    n = n + 1
  end
end
return n
"""
)

UNLOCK: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@functools.cache
def sha1(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # Redis names scripts by SHA1


READ_SHA: Final = sha1(READ)
WRITE_SHA: Final = sha1(WRITE)
