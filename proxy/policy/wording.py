"""pydantic's validation errors said in the policy's own words.

``Input should be a valid dictionary`` becomes ``expected a mapping of backend names to
settings, got a list``: what the key wants, and what the file has. Every error type the
schema can raise is mapped (tests/policy/test_policy.py has one case per type); an unmapped one
keeps pydantic's text without its "Input should be" preamble.
"""

from __future__ import annotations

from typing import Any, Final

# What a mapping or list at a given key holds, for "expected a mapping of …".
_MAPPINGS: Final = {
    "backends": "a mapping of backend names to settings",
    "statuses": "a mapping of status codes to TTLs",
    "routes": "a route (name, match, settings)",
    "match": "a mapping with path, prefix or regex, methods, host",
    "key": "a mapping with query, headers, cookies, host",
}
_LISTS: Final = {
    "routes": "a list of routes (each starting with '- name: …')",
    "methods": "a list of methods such as [GET, HEAD]",
    "statuses": "a list of status codes",
    "servers": 'a list of "host:port" strings',
    "purge_from": "a list of networks such as [127.0.0.1/32]",
}
_BACKEND_TYPES: Final = "memory, redis, memcached or tiered"


def describe_input(value: object) -> str:
    """What the file holds, as a person would name it."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"{value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _field(loc: tuple[str | int, ...]) -> str:
    names = [part for part in loc if isinstance(part, str)]
    if loc and isinstance(loc[-1], int) and names and names[-1] == "routes":
        return "routes[]"  # one item of routes
    return names[-1] if names else ""


def expected(error: Any, loc: tuple[str | int, ...]) -> str | None:
    """What the key wants, for one error type; ``None`` when the type is not a mismatch."""
    kind, ctx, field = error["type"], error.get("ctx") or {}, _field(loc)
    if kind == "dict_type":
        return _MAPPINGS.get(field, "a mapping of keys to values")
    if kind in ("model_type", "model_attributes_type"):
        if field == "routes[]":
            return _MAPPINGS["routes"]
        return _MAPPINGS.get(field, "a mapping of settings")
    if kind == "list_type":
        return _LISTS.get(field, "a list such as [a, b]")
    simple = {
        "string_type": "a string",
        "int_type": "a whole number",
        "int_parsing": "a whole number",
        "int_from_float": "a whole number",
        "float_type": "a number",
        "float_parsing": "a number",
        "bool_type": "true or false",
        "bool_parsing": "true or false",
        "ip_v4_network": "a network such as 10.0.0.0/8 or ::1/128",
        "ip_v6_network": "a network such as 10.0.0.0/8 or ::1/128",
    }
    if kind in simple:
        return simple[kind]
    if kind == "literal_error":
        return f"one of {ctx.get('expected', '')}".replace("' or '", "', '")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        words = {"gt": "more than", "ge": "at least", "lt": "less than", "le": "at most"}
        bound = next(k for k in words if k in ctx)
        return f"{words[bound]} {ctx[bound]}"
    if kind == "string_pattern_mismatch":
        return "a name of letters, digits, '_', '.', '-' (up to 63, not starting with '_.-')"
    if kind == "too_short":
        return f"at least {ctx.get('min_length', 1)} item(s)"
    if kind == "union_tag_invalid":
        return f"a backend type: {_BACKEND_TYPES}"
    return None


def plain_message(group: list[Any], loc: tuple[str | int, ...]) -> list[tuple[str, Any]]:
    """The messages for the errors pydantic gave at one place of the data: one per error,
    or one for all when they are the members of a union refusing the same value."""
    if len(group) > 1 and all(len(e["loc"]) > len(loc) for e in group):
        wants = [w for e in group if (w := expected(e, loc)) is not None]
        if len(wants) == len(group):
            unique = list(dict.fromkeys(wants))
            choice = ", ".join(unique[:-1]) + " or " + unique[-1] if len(unique) > 1 else wants[0]
            return [(f"expected {choice}, got {describe_input(group[0]['input'])}", group[0])]
    return [(_one(error, loc), error) for error in group]


def _one(error: Any, loc: tuple[str | int, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown key {str(loc[-1]) if loc else ''!r}"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_not_found":
        return f"'type' is missing: one of {_BACKEND_TYPES}"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    wants = expected(error, loc)
    if wants is not None:
        got = error.get("input")
        if kind == "union_tag_invalid":
            got = (error.get("ctx") or {}).get("tag")
        return f"expected {wants}, got {describe_input(got)}"
    return str(error["msg"]).replace("Input should be", "expected").removeprefix("Value error, ")
