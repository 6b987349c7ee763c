"""Property-based attacks on the policy loader: mutations of a real policy file, hostile
YAML (aliases, tags, deep nesting, huge numbers) and random values at every field of the
example. The loader must answer a ``LoadedPolicy`` or a ``PolicyError`` whose issues name
the file and a line, quickly, and never any other exception (a traceback at start-up or
on a hot reload).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.cli import main
from proxy.errors import PolicyError, PolicyIssue
from proxy.policy.load import LoadedPolicy, parse_policy
from tests.conftest import ROOT

FILE = "fuzz.yaml"
EXAMPLE = (ROOT / "policies" / "example.yaml").read_text()
EXAMPLE_DATA: dict[str, Any] = yaml.safe_load(EXAMPLE)
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(text: str) -> LoadedPolicy | None:
    """Load ``text``; only a clean outcome is allowed, in bounded time (an alias bomb
    or a quadratic path would take minutes; the bound is loose for a loaded machine)."""
    began = time.monotonic()
    loaded: LoadedPolicy | None = None
    issues: list[PolicyIssue] = []
    try:
        loaded = parse_policy(text, FILE)
    except PolicyError as exc:
        issues = exc.issues
        assert issues, "a PolicyError carries its issues"
    for issue in issues:
        assert issue.path == FILE
        assert issue.line >= 1
        assert issue.column >= 1
        assert issue.field
        assert issue.message
        assert "Traceback" not in issue.message
    assert time.monotonic() - began < 5.0
    return loaded


def test_the_example_loads() -> None:
    assert check(EXAMPLE) is not None


# ---------------------------------------------------------------- text mutations

LINES = EXAMPLE.splitlines(keepends=True)
NOISE = st.sampled_from(
    [
        "",
        " ",
        "  ",
        "\t",
        ":",
        "- ",
        "{",
        "}",
        "[",
        "]",
        ",",
        "#",
        "&x ",
        "*x",
        "!!str ",
        "!!python/object:os.system ",
        "? ",
        "|",
        ">",
        "'",
        '"',
        "\\",
        "%",
        "@",
        "`",
        "\x00",
        "\ufeff",
        "\u2028",
        "${HOME}",
        "${NOPE:-}",
        "${",
        "1e999",
        "-1",
        "0x10",
        "nan",
        ".inf",
        "~",
        "null",
        "yes",
        "on",
        "2026-01-01",
        "<<: *x",
        "\n",
        "\r\n",
        "é",
        "🙂",
    ]
)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    lines = list(LINES)
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["insert", "delete", "duplicate", "indent", "splice"]))
        if action == "insert":
            col = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:col] + draw(NOISE) + lines[i][col:]
        elif action == "delete" and len(lines) > 1:
            del lines[i]
        elif action == "duplicate":
            lines.insert(i, lines[i])
        elif action == "indent":
            lines[i] = draw(st.sampled_from(["", " ", "    ", "\t"])) + lines[i].lstrip(" ")
        else:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i] = lines[j]
    return "".join(lines)


@FAST
@given(mutated())
def test_mutated_example_loads_or_fails_cleanly(text: str) -> None:
    check(text)


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_decoded_any_way_fail_cleanly(data: bytes) -> None:
    check(data.decode("utf-8", "replace"))
    check(data.decode("latin-1"))


# ---------------------------------------------------------------- values at real paths


def paths(node: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += paths(value, (*prefix, i))
    return found


FIELD_PATHS = paths(EXAMPLE_DATA)
HOSTILE_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["30s", "-5s", "1e400s", "64MiB", "0", "", "${X}", "{}", "[]", "*"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)


def replace_at(data: Any, path: tuple[Any, ...], value: object) -> Any:
    copy = json.loads(json.dumps(data))
    node = copy
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return copy


@FAST
@given(st.sampled_from(FIELD_PATHS), HOSTILE_VALUES)
def test_any_value_at_any_field_fails_cleanly(path: tuple[Any, ...], value: object) -> None:
    try:
        text = json.dumps(replace_at(EXAMPLE_DATA, path, value), allow_nan=True)
    except (ValueError, OverflowError):
        return
    check(text)


# ---------------------------------------------------------------- hostile YAML


def _laughs(levels: int) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "version: 1\norigin: http://127.0.0.1:8000\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(_laughs(9), id="billion-laughs"),
        pytest.param("version: 1\norigin: http://x\nroutes: " + "[" * 5000 + "]" * 5000, id="deep"),
        pytest.param("version: 1\norigin: http://x\ndefaults: " + "{a: " * 3000, id="unclosed"),
        pytest.param("version: 1\norigin: http://x\nroutes: &r [*r]\n", id="alias-cycle"),
        pytest.param("version: !!python/object/apply:os.system [id]\n", id="python-tag"),
        pytest.param(
            "version: 1\norigin: http://x\ndefaults: {ttl: " + "9" * 5000 + "}\n", id="huge-int"
        ),
        pytest.param("version: 1\norigin: http://x\n" + "x: 1\n" * 20000, id="many-keys"),
        pytest.param("version: 1\nversion: 1\norigin: http://x\n", id="duplicate-key"),
        pytest.param("\ufeffversion: 1\norigin: http://x\n", id="bom"),
        pytest.param("version: 1\norigin: http://x\n---\nversion: 1\n", id="two-documents"),
        pytest.param("version: 1\x00\norigin: http://x\n", id="nul"),
        pytest.param("version: 1\norigin: ${SIDECACHE_FUZZ_UNSET}\n", id="unset-env"),
        pytest.param(
            "version: 1\norigin: http://x\nbackends: {a: {type: tiered, l1: a, l2: a}}\n",
            id="tiered-self",
        ),
    ],
)
def test_hostile_yaml_fails_cleanly_and_fast(text: str) -> None:
    check(text)


@settings(max_examples=25, deadline=None)
@given(mutated())
def test_validate_command_exits_0_or_2_without_traceback(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "policy.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    assert main(["validate", str(path)]) in (0, 2)
