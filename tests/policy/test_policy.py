"""proxy/policy/load.py: the policy loader, its errors (FILE:LINE:COL: field: message) and the
resolution of routes against ``defaults``."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.errors import PolicyError, PolicyIssue
from proxy.policy.load import (
    DEFAULT_ROUTE,
    Coalesce,
    LoadedPolicy,
    MemoryBackend,
    QueryExclude,
    RouteConfig,
    load_policy,
    parse_policy,
)
from tests.conftest import ROOT

FILE = "policy.yaml"
HEAD = "version: 1\norigin: http://127.0.0.1:8000\n"  # lines 1 and 2 of every document


def doc(body: str) -> str:
    """A policy whose body starts on line 3."""
    return HEAD + textwrap.dedent(body)


def load(body: str) -> LoadedPolicy:
    return parse_policy(doc(body), FILE)


def issues(text: str) -> list[PolicyIssue]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, FILE)
    assert caught.value.issues, "a PolicyError must carry at least one issue"
    return caught.value.issues


def only_issue(text: str) -> PolicyIssue:
    found = issues(text)
    assert len(found) == 1, found
    return found[0]


def route(loaded: LoadedPolicy, name: str) -> RouteConfig:
    return next(r for r in loaded.routes if r.name == name)


# ---------------------------------------------------------------- one error, located

# (body from line 3, line, column, field, message pattern)
ERRORS = [
    pytest.param(
        """\
        backends:
          local: {type: memory}
        defaults:
          ttl: 5x
        """,
        6,
        8,
        "defaults.ttl",
        r"^invalid duration '5x'",
        id="bad-duration",
    ),
    pytest.param(
        """\
        defaults:
          backnd: local
        """,
        4,
        3,
        "defaults.backnd",
        r"^unknown key 'backnd' \(did you mean 'backend'\?\)$",
        id="misspelt-key",
    ),
    pytest.param(
        """\
        orgin: http://x
        """,
        3,
        1,
        "orgin",
        r"^unknown key 'orgin' \(did you mean 'origin'\?\)$",
        id="misspelt-top-level-key",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            coalesce: {timout: 1s}
        """,
        5,
        16,
        "routes[0].coalesce.timout",
        r"^unknown key 'timout' \(did you mean 'timeout'\?\)$",
        id="misspelt-nested-key",
    ),
    pytest.param(
        """\
        backends:
          r: {type: redis, tmeout: 50ms}
        """,
        4,
        20,
        "backends.r.tmeout",
        r"^unknown key 'tmeout' \(did you mean 'timeout'\?\)$",
        id="misspelt-backend-key",
    ),
    pytest.param(
        """\
        zzzzzz: 1
        """,
        3,
        1,
        "zzzzzz",
        r"^unknown key 'zzzzzz'$",
        id="unknown-key-without-suggestion",
    ),
    pytest.param(
        """\
        defaults:
          ttl: 1s
          ttl: 2s
        """,
        5,
        3,
        "defaults.ttl",
        r"^duplicate key \(first on line 4\)$",
        id="duplicate-key",
    ),
    pytest.param(
        """\
        backends:
          local: {type: memory}
          local: {type: memory}
        """,
        5,
        3,
        "backends.local",
        r"^duplicate key \(first on line 4\)$",
        id="duplicate-backend",
    ),
    pytest.param(
        """\
        origin: http://127.0.0.1:9000
        """,
        3,
        1,
        "origin",
        r"^duplicate key \(first on line 2\)$",
        id="duplicate-top-level-key",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            cache: maybe
        """,
        5,
        12,
        "routes[0].cache",
        r"^expected true or false, got 'maybe'$",
        id="wrong-type-bool",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            max_variants: many
        """,
        5,
        19,
        "routes[0].max_variants",
        r"^expected a whole number, got",
        id="wrong-type-int",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            ttl: [1]
        """,
        5,
        10,
        "routes[0].ttl",
        r"^expected a duration",
        id="wrong-type-duration",
    ),
    pytest.param(
        """\
        routes: {a: 1}
        """,
        3,
        9,
        "routes",
        r"list",
        id="wrong-type-list",
    ),
    pytest.param(
        """\
        backends:
          local: {type: memory, max_size: lots}
        """,
        4,
        35,
        "backends.local.max_size",
        r"^invalid size 'lots'",
        id="bad-size",
    ),
    pytest.param(
        """\
        backends:
          local: {type: memory, max_size: 0}
        """,
        4,
        35,
        "backends.local.max_size",
        r"^expected more than 0, got the number 0$",
        id="zero-size",
    ),
    pytest.param(
        """\
        backends:
          local: {type: disk}
        """,
        4,
        10,
        "backends.local",
        r"^expected a backend type: memory, redis, memcached or tiered, got 'disk'$",
        id="unknown-backend-type",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            backend: nope
        """,
        5,
        14,
        "routes[0].backend",
        r"^unknown backend 'nope' \(defined: local\)$",
        id="unknown-backend-reference",
    ),
    pytest.param(
        """\
        defaults:
          backend: nope
        """,
        4,
        12,
        "defaults.backend",
        r"^unknown backend 'nope' \(defined: local\)$",
        id="unknown-default-backend",
    ),
    pytest.param(
        """\
        backends:
          m: {type: memory}
          r: {type: redis}
        """,
        1,
        1,
        "defaults",
        r"^backend: required when several backends are defined$",
        id="several-backends-no-default",
    ),
    pytest.param(
        """\
        backends: {}
        """,
        3,
        11,
        "backends",
        r"^define at least one backend$",
        id="no-backends",
    ),
    pytest.param(
        """\
        backends:
          m: {type: memory}
          r: {type: redis}
        defaults: {backend: m}
        invalidation: {redis: m}
        """,
        7,
        23,
        "invalidation.redis",
        r"^'m' is not a redis backend$",
        id="invalidation-needs-redis",
    ),
    pytest.param(
        """\
        routes:
          - name: default
        """,
        4,
        11,
        "routes[0].name",
        r"^'default' is reserved for the defaults$",
        id="reserved-route-name",
    ),
    pytest.param(
        """\
        routes:
          - name: 'two words'
        """,
        4,
        11,
        "routes[0].name",
        r"^expected a name of letters, digits",
        id="bad-route-name",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            match: {path: /a, prefix: /b}
        """,
        5,
        12,
        "routes[0].match",
        r"^use one of path, prefix or regex, not path and prefix$",
        id="path-and-prefix",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            match: {prefix: /a, regex: '^/b'}
        """,
        5,
        12,
        "routes[0].match",
        r"^use one of path, prefix or regex, not prefix and regex$",
        id="prefix-and-regex",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            match: {path: /a, prefix: /b, regex: c}
        """,
        5,
        12,
        "routes[0].match",
        r"^use one of path, prefix or regex, not path and prefix and regex$",
        id="all-three-kinds",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            match: {regex: '(unclosed'}
        """,
        5,
        20,
        "routes[0].match.regex",
        r"^invalid regular expression: missing \)",
        id="bad-regex",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            match: {path: '/a/{1x}'}
        """,
        5,
        19,
        "routes[0].match.path",
        r"^bad template parameter \{1x\}$",
        id="bad-template-name",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            match: {path: '/a/{id:int}'}
        """,
        5,
        19,
        "routes[0].match.path",
        r"^bad template parameter \{id:int\}$",
        id="bad-template-converter",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            match: {path: '/a/{id}/b/{id:path}'}
        """,
        5,
        19,
        "routes[0].match.path",
        r"^template parameter \{id\} appears twice$",
        id="repeated-template-name",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            match: {path: 'api/a'}
        """,
        5,
        19,
        "routes[0].match.path",
        r"^must start with /$",
        id="relative-path",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            match: {prefix: /a, methods: ['G T']}
        """,
        5,
        34,
        "routes[0].match.methods",
        r"^'G T' is not an HTTP method$",
        id="bad-method",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            statuses: [200, 999]
        """,
        5,
        15,
        "routes[0].statuses",
        r"^999 is not an HTTP status code$",
        id="bad-status",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            statuses: {200: 5x}
        """,
        5,
        21,
        "routes[0].statuses.200",
        r"^invalid duration '5x'",
        id="bad-status-ttl",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            tag_headers: ['Bad Header']
        """,
        5,
        18,
        "routes[0].tag_headers",
        r"^'Bad Header' is not a header name$",
        id="bad-header-name",
    ),
    pytest.param(
        """\
        backends:
          r: {type: redis, url: 'http://x'}
        defaults: {backend: r}
        """,
        4,
        25,
        "backends.r.url",
        r"^must start with redis://",
        id="redis-url-scheme",
    ),
    pytest.param(
        """\
        backends:
          mc: {type: memcached, servers: [nohost]}
        defaults: {backend: mc}
        """,
        4,
        34,
        "backends.mc.servers",
        r"^'nohost' is not host:port$",
        id="memcached-server",
    ),
    pytest.param(
        """\
        backends:
          r: {type: redis, breaker: {failurs: 3}}
        defaults: {backend: r}
        """,
        4,
        30,
        "backends.r.breaker.failurs",
        r"^unknown key 'failurs' \(did you mean 'failures'\?\)$",
        id="misspelt-key-in-backend-section",
    ),
    pytest.param(
        """\
        routes:
          - name: a
            early_refresh: {bta: 2}
        """,
        5,
        21,
        "routes[0].early_refresh.bta",
        r"^unknown key 'bta' \(did you mean 'beta'\?\)$",
        id="misspelt-key-in-optional-section",
    ),
    pytest.param(
        """\
        routes:
          - 5
        """,
        4,
        5,
        "routes[0]",
        r"^expected a route \(name, match, settings\), got the number 5$",
        id="route-not-a-mapping",
    ),
]


@pytest.mark.parametrize(("body", "line", "column", "field", "message"), ERRORS)
def test_error_is_located(body: str, line: int, column: int, field: str, message: str) -> None:
    issue = only_issue(doc(body))
    assert (issue.path, issue.line, issue.column, issue.field) == (FILE, line, column, field)
    assert re.search(message, issue.message), issue.message
    assert str(issue) == f"{FILE}:{line}:{column}: {field}: {issue.message}"


def test_misspelt_key_inside_a_union_names_the_key() -> None:
    # key.query is 'all' | 'ignore' | [names] | {exclude: [...]}: only the mapping member
    # speaks about a mapping, and pydantic's member tag ("QueryExclude") is no field.
    found = issues(doc("routes:\n  - name: a\n    key: {query: {exclud: [page]}}\n"))
    assert [str(i) for i in found] == [
        f"{FILE}:5:18: routes[0].key.query.exclude: required key is missing",
        f"{FILE}:5:19: routes[0].key.query.exclud: unknown key 'exclud' (did you mean 'exclude'?)",
    ]


def test_error_string_lists_every_issue_one_per_line() -> None:
    text = doc(
        """\
        defaults:
          ttl: 5x
          backnd: local
        """
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, FILE)
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{FILE}:4:8: defaults.ttl: invalid duration '5x'")
    assert (
        lines[1] == f"{FILE}:5:3: defaults.backnd: unknown key 'backnd' (did you mean 'backend'?)"
    )


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ("version: 2\norigin: http://x\n", "version", r"^expected one of 1, got the number 2$"),
        ("version: 1\norigin: ftp://x\n", "origin", r"^must be an http:// or https:// URL"),
        ("version: 1\norigin: http://x/?a=1\n", "origin", r"^must not carry a query"),
        ("version: 1\norigin: http://u:p@x/\n", "origin", r"^must not carry user:password"),
        ("version: 1\n", "origin", r"^required key is missing$"),
        ("origin: http://x\n", "version", r"^required key is missing$"),
    ],
)
def test_top_level_field_errors(body: str, field: str, message: str) -> None:
    issue = only_issue(body)
    assert issue.field == field
    assert re.search(message, issue.message), issue.message


# ---------------------------------------------------------------- the acceptance case


def test_bad_duration_on_line_5_and_misspelt_key_both_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "version: 1\n"
        "origin: http://127.0.0.1:8000\n"
        "defaults:\n"
        "  backend: local\n"
        "  ttl: ten minutes\n"
        "  compresion: {algorithm: gzip}\n"
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    text = str(caught.value)
    assert f"{path}:5:8: defaults.ttl: invalid duration 'ten minutes'" in text
    assert (
        f"{path}:6:3: defaults.compresion: unknown key 'compresion' (did you mean 'compression'?)"
        in text
    )


def test_all_errors_are_reported_in_file_order() -> None:
    text = doc(
        """\
        backends:
          local: {type: memory, max_size: huge}
        defaults:
          ttl: 5x
          ttl: 6x
          coalesce: {enabled: perhaps}
        routes:
          - name: a
            match: {path: /a, regex: b}
            cache: sometimes
          - name: b
            mtch: {prefix: /b}
        """
    )
    found = issues(text)
    assert [(i.line, i.field) for i in found] == [
        (4, "backends.local.max_size"),
        (6, "defaults.ttl"),
        (7, "defaults.ttl"),
        (8, "defaults.coalesce.enabled"),
        (11, "routes[0].match"),
        (12, "routes[0].cache"),
        (14, "routes[1].mtch"),
    ]


def test_all_cross_reference_errors_are_reported() -> None:
    text = doc(
        """\
        backends:
          local: {type: memory}
          r: {type: redis}
          t: {type: tiered, l1: r, l2: local}
        defaults: {backend: local}
        routes:
          - name: a
            backend: nope
          - name: a
          - name: default
        """
    )
    assert [(i.line, i.field, i.message) for i in issues(text)] == [
        (6, "backends.t.l1", "'r' is not a memory backend"),
        (6, "backends.t.l2", "'local' is not a redis or memcached backend"),
        (10, "routes[0].backend", "unknown backend 'nope' (defined: local, r, t)"),
        (11, "routes[1].name", "duplicate route name (also routes[0])"),
        (12, "routes[2].name", "'default' is reserved for the defaults"),
    ]


# ---------------------------------------------------------------- tiered backends


@pytest.mark.parametrize(
    ("l1", "l2", "expected"),
    [
        ("mem", "red", []),
        ("mem", "mc", []),
        ("red", "mem", ["backends.t.l1", "backends.t.l2"]),
        ("mem", "mem", ["backends.t.l2"]),
        ("red", "red", ["backends.t.l1"]),
        ("missing", "red", ["backends.t.l1"]),
        ("mem", "missing", ["backends.t.l2"]),
        ("t", "red", ["backends.t.l1"]),
        ("mem", "t", ["backends.t.l2"]),
    ],
)
def test_tiered_layer_types(l1: str, l2: str, expected: list[str]) -> None:
    text = doc(
        f"""\
        backends:
          mem: {{type: memory}}
          red: {{type: redis}}
          mc: {{type: memcached, servers: ["127.0.0.1:11211"]}}
          t: {{type: tiered, l1: {l1}, l2: {l2}}}
        defaults: {{backend: t}}
        """
    )
    if not expected:
        loaded = parse_policy(text, FILE)
        assert route(loaded, DEFAULT_ROUTE).backend == "t"
        return
    found = issues(text)
    assert [i.field for i in found] == expected
    assert all(i.line == 7 for i in found)


# ---------------------------------------------------------------- environment


def test_env_variable_is_interpolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SC_TEST_ORIGIN", "http://origin.internal:9000")
    monkeypatch.setenv("SC_TEST_TTL", "90s")
    loaded = parse_policy(
        "version: 1\norigin: ${SC_TEST_ORIGIN}\ndefaults:\n  ttl: ${SC_TEST_TTL}\n", FILE
    )
    assert loaded.policy.origin == "http://origin.internal:9000"
    assert route(loaded, DEFAULT_ROUTE).ttl == 90.0


def test_env_variable_inside_a_longer_string(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SC_TEST_HOST", "10.0.0.7")
    loaded = load('admin: {token: "tok-${SC_TEST_HOST}-end"}\n')
    assert loaded.policy.admin.token == "tok-10.0.0.7-end"


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, "fallback"), ({"SC_TEST_TOKEN": "from-env"}, "from-env"), ({"SC_TEST_TOKEN": ""}, None)],
)
def test_env_variable_default(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str | None
) -> None:
    monkeypatch.delenv("SC_TEST_TOKEN", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    loaded = load('admin: {token: "${SC_TEST_TOKEN:-fallback}"}\n')
    # an empty token means "no token" (loopback only)
    assert loaded.policy.admin.token == expected


def test_env_variable_empty_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SC_TEST_TOKEN", raising=False)
    assert load('admin: {token: "${SC_TEST_TOKEN:-}"}\n').policy.admin.token is None


def test_missing_env_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SC_TEST_MISSING", raising=False)
    issue = only_issue(doc('admin:\n  token: "${SC_TEST_MISSING}"\n'))
    assert str(issue) == (
        f"{FILE}:4:10: admin.token: environment variable SC_TEST_MISSING is not set"
    )


def test_every_missing_env_variable_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SC_TEST_A", raising=False)
    monkeypatch.delenv("SC_TEST_B", raising=False)
    found = issues(doc('admin:\n  token: "${SC_TEST_A}/${SC_TEST_B}"\n'))
    assert [i.message for i in found] == [
        "environment variable SC_TEST_A is not set",
        "environment variable SC_TEST_B is not set",
    ]


def test_interpolation_does_not_apply_to_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SC_TEST_KEY", "ttl")
    issue = only_issue(doc("defaults:\n  ${SC_TEST_KEY}: 5s\n"))
    assert issue.field == "defaults.${SC_TEST_KEY}"


# ---------------------------------------------------------------- malformed documents


@pytest.mark.parametrize("text", ["", "\n", "   \n\n", "# only a comment\n"])
def test_empty_file(text: str) -> None:
    assert str(only_issue(text)) == f"{FILE}:1:1: (top level): the policy file is empty"


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n", "~\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    issue = only_issue(text)
    assert issue.field == "(top level)"
    assert issue.message == "the policy must be a mapping of keys"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("version: 1\norigin: http://x\nroutes: [\n", 4),
        ("version: 1\norigin: http://x\n  nested: wrong\n", 3),
        ("version: 1\norigin: http://x\ndefaults: {ttl: 1s\nroutes: []\n", 3),
        ("version: 1\norigin: http://x\nadmin:\n\ttoken: x\n", 4),
        ("version: 1\norigin: http://x\nadmin: {token: *nowhere}\n", 3),
        ("version: 1\n---\norigin: http://x\n", 2),
    ],
)
def test_yaml_syntax_error_names_its_line(text: str, line: int) -> None:
    issue = only_issue(text)
    assert issue.field == "(yaml)"
    assert issue.line == line
    assert issue.message


@pytest.mark.parametrize(
    ("body", "line", "field"),
    [
        ("admin: {token: !!int abc}\n", 3, "admin.token"),
        ("admin: {token: !!float abc}\n", 3, "admin.token"),
        ("admin: {token: !!bool maybe}\n", 3, "admin.token"),
        ("admin: {token: !!timestamp yesterday}\n", 3, "admin.token"),
        ("admin: {token: !!python/object:os.system x}\n", 3, "admin.token"),
        ("admin: {token: !custom x}\n", 3, "admin.token"),
        ("admin:\n  !!int nope: x\n", 4, "admin"),
    ],
)
def test_bad_explicit_tag_is_a_policy_error(body: str, line: int, field: str) -> None:
    found = issues(doc(body))
    assert found[0].line == line
    assert found[0].field == field


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("x: &a [*a]\n", id="recursive-sequence"),
        pytest.param("x: &a {y: *a}\n", id="recursive-mapping"),
        pytest.param("x: " + "[" * 2000 + "]" * 2000 + "\n", id="deeply-nested"),
    ],
)
def test_unbounded_nesting_is_a_policy_error(body: str) -> None:
    found = issues(doc(body))
    assert len(found) == 1
    assert found[0].line == 3
    assert found[0].field.startswith("x")
    assert re.search(r"recursive alias|nested more than", found[0].message)


def test_alias_expansion_is_bounded() -> None:
    # "billion laughs": 10**9 values from nine lines of aliases
    lines = ["l0: &l0 [" + ", ".join(["x"] * 10) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]
    found = issues(HEAD + "\n".join(lines) + "\n")
    assert len(found) == 1
    assert found[0].message == "more than 100000 values after expanding aliases"


def test_anchors_and_aliases_are_expanded() -> None:
    loaded = load(
        """\
        routes:
          - name: a
            match: {prefix: /a}
            coalesce: &fast {timeout: 1s}
          - name: b
            match: {prefix: /b}
            coalesce: *fast
        """
    )
    assert route(loaded, "a").coalesce.timeout == 1.0
    assert route(loaded, "b").coalesce.timeout == 1.0


def test_load_policy_names_an_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    with pytest.raises(PolicyError) as caught:
        load_policy(missing)
    assert str(caught.value).startswith(f"{missing}:")
    assert caught.value.issues[0].field == "(file)"


def test_load_policy_rejects_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\norigin: http://x\nadmin: {token: caf\xe9}\n")
    with pytest.raises(PolicyError, match=r"not UTF-8"):
        load_policy(path)


# ---------------------------------------------------------------- resolution


def test_minimal_policy_gets_builtin_defaults() -> None:
    loaded = parse_policy(HEAD, FILE)
    assert [r.name for r in loaded.routes] == [DEFAULT_ROUTE]
    default = loaded.routes[0]
    assert default.backend == "local"
    assert isinstance(loaded.policy.backends["local"], MemoryBackend)
    assert default.cache is True
    assert default.ttl is None
    assert default.coalesce == Coalesce()
    assert default.match.methods == ["GET", "HEAD"]


def test_routes_inherit_defaults() -> None:
    loaded = load(
        """\
        defaults:
          ttl: 60s
          max_object_size: 1MiB
          cache_authorized: true
          tags: [shop]
        routes:
          - name: a
            match: {prefix: /a}
          - name: b
            match: {prefix: /b}
            ttl: 1h
            tags: [b]
        """
    )
    a, b, default = loaded.routes
    assert (a.name, b.name, default.name) == ("a", "b", DEFAULT_ROUTE)
    assert (a.ttl, b.ttl, default.ttl) == (60.0, 3600.0, 60.0)
    assert a.max_object_size == b.max_object_size == 1024**2
    assert a.cache_authorized
    assert b.cache_authorized
    assert a.tags == ("shop",)
    assert b.tags == ("b",)


def test_nested_settings_merge_key_by_key() -> None:
    loaded = load(
        """\
        defaults:
          coalesce: {enabled: false, timeout: 5s, max_waiters: 10}
          compression: {algorithm: gzip, min_size: 2KiB, level: 3}
          timeout: {connect: 1s, total: 10s}
          key: {headers: [Accept-Language]}
        routes:
          - name: a
            match: {prefix: /a}
            coalesce: {timeout: 1s}
            compression: {level: 9}
            timeout: {total: 2s}
            key: {query: ignore}
        """
    )
    a = route(loaded, "a")
    assert a.coalesce.enabled is False
    assert a.coalesce.timeout == 1.0
    assert a.coalesce.max_waiters == 10
    assert (a.compression.min_size, a.compression.level) == (2048, 9)
    assert (a.timeout.connect, a.timeout.total) == (1.0, 2.0)
    assert a.key.query == "ignore"
    assert a.key.headers == ["Accept-Language"]
    default = route(loaded, DEFAULT_ROUTE)
    assert default.coalesce.timeout == 5.0
    assert default.compression.level == 3


def test_route_can_turn_a_default_off() -> None:
    loaded = load(
        """\
        defaults: {cache: true, cache_authorized: true}
        routes:
          - name: a
            match: {prefix: /a}
            cache: false
            cache_authorized: false
        """
    )
    a = route(loaded, "a")
    assert a.cache is False
    assert a.cache_authorized is False


@pytest.mark.parametrize(
    ("backends", "defaults", "route_backend", "expected"),
    [
        ("{only: {type: memory}}", "{}", "", "only"),
        ("{m: {type: memory}, r: {type: redis}}", "{backend: r}", "", "r"),
        ("{m: {type: memory}, r: {type: redis}}", "{backend: r}", "backend: m", "m"),
    ],
)
def test_backend_resolution(
    backends: str, defaults: str, route_backend: str, expected: str
) -> None:
    extra = f"\n    {route_backend}" if route_backend else ""
    loaded = load(
        f"backends: {backends}\ndefaults: {defaults}\n"
        f"routes:\n  - name: a\n    match: {{prefix: /a}}{extra}\n"
    )
    assert route(loaded, "a").backend == expected


def test_statuses_list_and_map() -> None:
    loaded = load(
        """\
        routes:
          - name: listed
            statuses: [404, 200]
          - name: mapped
            statuses: {200: 1h, 404: 30s}
        """
    )
    listed, mapped = route(loaded, "listed"), route(loaded, "mapped")
    assert listed.statuses == (200, 404)
    assert listed.status_ttls == {}
    assert mapped.statuses == (200, 404)
    assert mapped.status_ttls == {200: 3600.0, 404: 30.0}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", 1.0), ("false", None), ("{beta: 2.5}", 2.5)],
)
def test_early_refresh_shorthand(value: str, expected: float | None) -> None:
    loaded = load(f"routes:\n  - name: a\n    early_refresh: {value}\n")
    refresh = route(loaded, "a").early_refresh
    assert (refresh.beta if refresh else None) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("all", "all"),
        ("ignore", "ignore"),
        ("[lang, page]", ["lang", "page"]),
        ("{exclude: [utm_source]}", QueryExclude(exclude=["utm_source"])),
    ],
)
def test_key_query_forms(query: str, expected: object) -> None:
    loaded = load(f"routes:\n  - name: a\n    key: {{query: {query}}}\n")
    assert route(loaded, "a").key.query == expected


def test_methods_are_upper_cased() -> None:
    loaded = load("routes:\n  - name: a\n    match: {prefix: /a, methods: [get, Post]}\n")
    assert route(loaded, "a").match.methods == ["GET", "POST"]


def test_digest_follows_the_text() -> None:
    first, again = parse_policy(HEAD, FILE), parse_policy(HEAD, FILE)
    other = parse_policy(HEAD + "defaults: {ttl: 1s}\n", FILE)
    assert first.digest == again.digest
    assert first.digest != other.digest


def test_example_policy_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIDECACHE_ORIGIN", raising=False)
    monkeypatch.delenv("SIDECACHE_ADMIN_TOKEN", raising=False)
    loaded = load_policy(ROOT / "policies" / "example.yaml")
    assert loaded.policy.origin == "http://127.0.0.1:8000"
    assert loaded.policy.admin.token is None
    assert [r.name for r in loaded.routes] == ["products", "search", "cart", DEFAULT_ROUTE]
    products, search, cart = loaded.routes[:3]
    assert products.ttl == 3600.0
    assert products.key.query == ["lang", "page"]
    assert search.ttl == 60.0
    assert search.key.query == "ignore"
    assert cart.cache is False
    assert "products" in loaded.summary()
    # the settings the README's route table documents, shown in the example
    assert products.early_refresh is not None
    assert products.early_refresh.beta == 1.0
    assert search.early_refresh is None
    assert [r.max_ttl for r in loaded.routes if r.cache] == [86400.0] * 3
    assert all(r.key.host for r in loaded.routes)


# ---------------------------------------------------------------- fuzz

FIELDS = [
    *("version", "origin", "routes", "backends", "defaults", "name", "match", "type", "ttl"),
    *("key", "query", "path", "prefix", "regex", "l1", "l2", "statuses", "coalesce", "local"),
]

YAMLISH = st.lists(
    st.sampled_from(
        [
            *"abcdefghijklmnopqrstuvwxyz0123456789 \t\n:-[]{},'\"#&*!|>?%@`$~.",
            *("version", "origin", "routes", "backends", "defaults", "name", "match", "ttl"),
            *("${X}", "${X:-d}", "!!int ", "!!binary ", "&a ", "*a", "\n  ", "\n- ", ": "),
        ]
    ),
    max_size=80,
).map("".join)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300, deadline=None)
@given(YAMLISH)
def test_random_yamlish_text_raises_only_policy_error(text: str) -> None:
    try:
        parse_policy(text, FILE)
    except PolicyError as exc:
        found = exc.issues
    else:
        return
    assert found
    assert all(str(i).startswith(f"{FILE}:") for i in found)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4)
    ),
    max_leaves=16,
)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), JSONISH, max_size=5))
def test_random_structured_policy_raises_only_policy_error(tree: dict[str, object]) -> None:
    # JSON is YAML: random values under real field names reach pydantic and the cross-checks.
    text = json.dumps({"version": 1, "origin": "http://127.0.0.1:8000", **tree})
    try:
        parse_policy(text, FILE)
    except PolicyError as exc:
        found = exc.issues
    else:
        return
    assert found


# ---------------------------------------------------------------- plain words, one per error type

# (body from line 3, field, the whole message): one case per pydantic error type the
# wording maps (proxy/policy/wording.py), so none of pydantic's own wording reaches a user
PLAIN = [
    pytest.param("backends: [local]\n", "backends",
                 "expected a mapping of backend names to settings, got a list", id="dict_type"),
    pytest.param("defaults: {statuses: {x: 5s}}\n", "defaults.statuses.x",
                 "expected a whole number, got 'x'", id="int_parsing-key"),
    pytest.param("routes: {a: 1}\n", "routes",
                 "expected a list of routes (each starting with '- name: …'), got a mapping",
                 id="list_type"),
    pytest.param("routes: [5]\n", "routes[0]",
                 "expected a route (name, match, settings), got the number 5", id="model_type"),
    pytest.param("backends: {a: 5}\n", "backends.a",
                 "expected a mapping of settings, got the number 5", id="model_attributes_type"),
    pytest.param("admin: {token: 5}\n", "admin.token",
                 "expected a string, got the number 5", id="string_type"),
    pytest.param("defaults: {max_variants: many}\n", "defaults.max_variants",
                 "expected a whole number, got 'many'", id="int_parsing"),
    pytest.param("defaults: {max_variants: 1.5}\n", "defaults.max_variants",
                 "expected a whole number, got the number 1.5", id="int_from_float"),
    pytest.param("defaults: {early_refresh: {beta: x}}\n", "defaults.early_refresh.beta",
                 "expected a number, got 'x'", id="float_parsing"),
    pytest.param("defaults: {early_refresh: {beta: [1]}}\n", "defaults.early_refresh.beta",
                 "expected a number, got a list", id="float_type"),
    pytest.param("defaults: {cache: maybe}\n", "defaults.cache",
                 "expected true or false, got 'maybe'", id="bool_parsing"),
    pytest.param("defaults: {cache: [1]}\n", "defaults.cache",
                 "expected true or false, got a list", id="bool_type"),
    pytest.param("defaults: {max_variants: [1]}\n", "defaults.max_variants",
                 "expected a whole number, got a list", id="int_type"),
    pytest.param("defaults: {store_failure: never}\n", "defaults.store_failure",
                 "expected one of 'open', 'closed', got 'never'", id="literal_error"),
    pytest.param("defaults: {compression: {algorithm: br}}\n", "defaults.compression.algorithm",
                 "expected one of 'gzip', 'none', got 'br'", id="literal_error-words"),
    pytest.param("defaults: {max_variants: 0}\n", "defaults.max_variants",
                 "expected at least 1, got the number 0", id="greater_than_equal"),
    pytest.param("backends: {local: {type: memory, max_size: 0}}\n", "backends.local.max_size",
                 "expected more than 0, got the number 0", id="greater_than"),
    pytest.param("defaults: {compression: {level: 10}}\n", "defaults.compression.level",
                 "expected at most 9, got the number 10", id="less_than_equal"),
    pytest.param("routes: [{name: 'two words'}]\n", "routes[0].name",
                 "expected a name of letters, digits, '_', '.', '-' (up to 63, not starting "
                 "with '_.-'), got 'two words'", id="string_pattern_mismatch"),
    pytest.param("backends: {m: {type: memcached, servers: []}}\n", "backends.m.servers",
                 "expected at least 1 item(s), got a list", id="too_short"),
    pytest.param("backends: {a: {type: disk}}\n", "backends.a",
                 "expected a backend type: memory, redis, memcached or tiered, got 'disk'",
                 id="union_tag_invalid"),
    pytest.param("backends: {a: {url: 'redis://x'}}\n", "backends.a",
                 "'type' is missing: one of memory, redis, memcached or tiered",
                 id="union_tag_not_found"),
    pytest.param("admin: {purge_from: [nowhere]}\n", "admin.purge_from[0]",
                 "expected a network such as 10.0.0.0/8 or ::1/128, got 'nowhere'",
                 id="ip_network"),
    pytest.param("defaults: {key: {query: 5}}\n", "defaults.key.query",
                 "expected one of 'all', 'ignore', a list such as [a, b] or a mapping of "
                 "settings, got the number 5", id="union-of-members"),
    pytest.param("server: {access_log: often}\n", "server.access_log",
                 "expected true or false or a number, got 'often'", id="bool-or-float"),
    pytest.param("invalidation: {}\n", "invalidation.redis", "required key is missing",
                 id="missing"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "field", "message"), PLAIN)
def test_schema_errors_in_plain_words(body: str, field: str, message: str) -> None:
    issue = only_issue(doc(body))
    assert (issue.field, issue.message) == (field, message)


LIBRARY_WORDING = r"Input should|valid dictionary|instance of|Field required|Value error"


@pytest.mark.parametrize(
    "body",
    [case.values[0] for case in [*ERRORS, *PLAIN]],
    ids=[case.id for case in [*ERRORS, *PLAIN]],
)
def test_no_library_wording_reaches_the_user(body: str) -> None:
    for issue in issues(doc(body)):
        assert not re.search(LIBRARY_WORDING, str(issue)), issue


def test_an_unknown_backend_is_reported_with_the_type_errors() -> None:
    text = doc(
        """\
        backends:
          local: {type: memory, max_size: lots}
        defaults:
          backend: nosuch
          cache: maybe
        routes:
          - name: a
            backend: other
            ttl: soon
        """
    )
    assert [(i.line, i.field) for i in issues(text)] == [
        (4, "backends.local.max_size"),
        (6, "defaults.backend"),
        (7, "defaults.cache"),
        (10, "routes[0].backend"),
        (11, "routes[0].ttl"),
    ]


# ---------------------------------------------------------------- YAML mistakes, at their line

YAML_SLIPS = [
    pytest.param("defaults:\n  backend: local\n ttl: 60s\n", 5, 2,
                 "did not find expected key: check the indentation of 'ttl'", id="key-dedented"),
    pytest.param("defaults:\n  backend: local\n    ttl: 60s\n", 5, 5,
                 "mapping values are not allowed in this context: check the indentation of "
                 "'ttl'", id="key-indented"),
    pytest.param("defaults:\n coalesce:\n    enabled: true\n  ttl: 5s\n", 4, 2,
                 "did not find expected key: check the indentation of 'coalesce' (the parser "
                 "stopped on line 6)", id="slip-a-line-before"),
    pytest.param("routes:\n  - name: a\n   match: {path: /a}\n", 5, 4,
                 "did not find expected '-' indicator: check the indentation of 'match'",
                 id="route-key"),
    pytest.param("defaults\n  ttl: 60s\n", 3, 1,
                 "'defaults' is not followed by ':' (the parser stopped on line 4)",
                 id="missing-colon"),
    pytest.param("backends:\n  local: {type: memory\ndefaults: {ttl: 1s}\n", 4, 10,
                 "'{' is not closed by '}' (the parser stopped on line 5)", id="open-brace"),
    pytest.param("admin: {token: \"abc}\n", 3, 16,
                 "the quote is not closed (the parser stopped on line 4)", id="open-quote"),
    pytest.param("admin:\n\ttoken: x\n", 4, 1,
                 "a tab in the indentation: indent with spaces", id="tab"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "line", "column", "message"), YAML_SLIPS)
def test_yaml_mistakes_are_named_at_their_line(
    body: str, line: int, column: int, message: str
) -> None:
    issue = only_issue(HEAD + body)
    assert (issue.line, issue.column, issue.field, issue.message) == (
        line,
        column,
        "(yaml)",
        message,
    )


def test_four_space_files_are_judged_by_their_own_step() -> None:
    body = "defaults:\n    backend: local\n    coalesce:\n        enabled: true\n  ttl: 5s\n"
    issue = only_issue(HEAD + body)
    assert (issue.line, issue.message) == (
        7,
        "did not find expected key: check the indentation of 'ttl'",
    )


# ---------------------------------------------------------------- warnings: routes never reached


def warnings_of(routes: str) -> list[tuple[int, str, str]]:
    loaded = parse_policy(doc("routes:\n" + textwrap.indent(textwrap.dedent(routes), "  ")), FILE)
    return [(w.line, w.field, w.message) for w in loaded.warnings]


def test_a_route_without_match_is_a_warning() -> None:
    assert warnings_of(
        """\
        - name: everything
        - name: products
          match: {prefix: /api/products}
        """
    ) == [
        (
            4,
            "routes[0]",
            "routes[0] (everything) has no match (path, prefix or regex): it takes every "
            "GET, HEAD request that reaches it, and no route below it sees those",
        ),
        (
            6,
            "routes[1].match",
            "routes[1] (products) is never matched: routes[0] (everything) comes first and "
            "has no match, so it takes every request",
        ),
    ]


SHADOWS = [
    pytest.param("{prefix: /a}", "{prefix: /a/b}", "its prefix /a encloses /a/b", id="prefix"),
    pytest.param("{prefix: /a}", "{prefix: /a}", "its prefix /a encloses /a", id="same-prefix"),
    pytest.param("{prefix: /}", "{path: /x}", "its prefix / encloses /x", id="root-prefix"),
    pytest.param("{prefix: /a}", "{path: '/a/{id}'}", "its prefix /a encloses /a/{id}",
                 id="prefix-over-template"),
    pytest.param("{path: '/p/{id}'}", "{path: '/p/{pid}'}", "has the same template /p/{id}",
                 id="same-template"),
    pytest.param("{path: '/p/{id}'}", "{path: /p/new}", "its template /p/{id} matches /p/new",
                 id="template-over-path"),
    pytest.param("{regex: ^/r}", "{regex: ^/r}", "has the same regex ^/r", id="same-regex"),
    pytest.param("{path: '/f/{rest:path}'}", "{prefix: /f/x}",
                 "its template /f/{rest:path} matches everything under /f/x", id="path-param"),
    pytest.param("{path: '/f/{rest:path}'}", "{path: '/f/x/{id}'}",
                 "its template /f/{rest:path} matches everything under /f/x", id="path-param-2"),
    pytest.param("{prefix: /a, methods: [GET, HEAD, POST]}", "{prefix: /a/b, methods: [GET]}",
                 "its prefix /a encloses /a/b", id="methods-covered"),
    pytest.param("{prefix: /a}", "{prefix: /a/b, host: api.example}",
                 "its prefix /a encloses /a/b", id="any-host-covers-one"),
]  # fmt: skip


@pytest.mark.parametrize(("first", "second", "reason"), SHADOWS)
def test_a_shadowed_route_is_a_warning(first: str, second: str, reason: str) -> None:
    found = warnings_of(
        f"""\
        - name: one
          match: {first}
        - name: two
          match: {second}
        """
    )
    assert found == [
        (7, "routes[1].match", f"routes[1] (two) is never matched: routes[0] (one) comes "
         f"first and {reason}"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("{prefix: /a}", "{prefix: /ab}"),
        ("{prefix: /a/b}", "{prefix: /a}"),
        ("{path: '/p/{id}'}", "{path: '/p/{id}/x'}"),
        ("{path: '/p/{id}'}", "{prefix: /p}"),
        ("{regex: ^/r}", "{regex: ^/r/x}"),
        ("{path: '/f/{rest:path}'}", "{prefix: /f}"),
        ("{path: '/f/{rest:path}'}", "{prefix: /f/}"),
        ("{path: '/f/{a}/{rest:path}'}", "{prefix: /f/x}"),
        ("{prefix: /a, methods: [GET]}", "{prefix: /a/b, methods: [GET, HEAD]}"),
        ("{prefix: /a, host: api.example}", "{prefix: /a/b}"),
        ("{prefix: /a, host: api.example}", "{prefix: /a/b, host: www.example}"),
        ("{prefix: /a, methods: [POST]}", "{prefix: /a/b}"),
    ],
)
def test_routes_that_leave_the_next_one_requests_are_not_warned(first: str, second: str) -> None:
    assert (
        warnings_of(
            f"""\
            - name: one
              match: {first}
            - name: two
              match: {second}
            """
        )
        == []
    )


def test_the_example_policy_has_no_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECACHE_ADMIN_TOKEN", "t")
    assert load_policy(ROOT / "policies" / "example.yaml").warnings == ()


# ---------------------------------------------------------------- max_ttl


def test_max_ttl_defaults_to_one_day() -> None:
    loaded = load("routes: [{name: a, match: {prefix: /a}}]\n")
    assert route(loaded, "a").max_ttl == 86400
    assert route(loaded, DEFAULT_ROUTE).max_ttl == 86400


@pytest.mark.parametrize(
    ("settings", "ceiling"),
    [
        ("max_ttl: none", None),
        ("max_ttl: None", None),
        ("max_ttl: 2h", 7200),
        ("ttl: 7d", 7 * 86400),  # the route's own ttl is its choice: the default rises to it
        ("ttl: 1h", 86400),
        ("statuses: {200: 3d}", 3 * 86400),
        ("ttl: 30d, max_ttl: none", None),
    ],
)
def test_max_ttl_resolution(settings: str, ceiling: float | None) -> None:
    loaded = load(f"routes: [{{name: a, match: {{prefix: /a}}, {settings}}}]\n")
    assert route(loaded, "a").max_ttl == ceiling


def test_max_ttl_set_in_defaults_is_inherited_and_none_lifts_it() -> None:
    loaded = load(
        """\
        defaults: {max_ttl: 1h}
        routes:
          - {name: a, match: {prefix: /a}}
          - {name: b, match: {prefix: /b}, max_ttl: none}
        """
    )
    assert route(loaded, "a").max_ttl == 3600
    assert route(loaded, "b").max_ttl is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "routes:\n  - {name: a, match: {prefix: /a}, ttl: 2h, max_ttl: 1h}\n",
            [(4, "routes[0].ttl", "2h is longer than max_ttl 1h (routes[0].max_ttl): raise "
              "max_ttl or shorten ttl")],
        ),
        (
            "defaults: {ttl: 2d, max_ttl: 1d}\n",
            [(3, "defaults.ttl", "2d is longer than max_ttl 1d (defaults.max_ttl): raise "
              "max_ttl or shorten ttl")],
        ),
        (
            "defaults: {max_ttl: 10m}\nroutes:\n  - name: a\n    ttl: 1h\n",
            [(6, "routes[0].ttl", "1h is longer than max_ttl 10m (defaults.max_ttl): raise "
              "max_ttl or shorten ttl")],
        ),
        (
            "defaults: {ttl: 1h}\nroutes:\n  - name: a\n    max_ttl: 30m\n",
            [(6, "routes[0].max_ttl", "30m is shorter than ttl 1h (defaults.ttl): raise "
              "max_ttl or shorten ttl")],
        ),
        (
            "routes:\n  - name: a\n    max_ttl: 1h\n    statuses: {200: 1h, 404: 2h}\n",
            [(6, "routes[0].statuses.404", "2h is longer than max_ttl 1h (routes[0].max_ttl): "
              "raise max_ttl or shorten statuses.404")],
        ),
    ],
)  # fmt: skip
def test_an_explicit_max_ttl_below_a_ttl_is_an_error_naming_both(
    body: str, expected: list[tuple[int, str, str]]
) -> None:
    assert [(i.line, i.field, i.message) for i in issues(doc(body))] == expected


def test_a_max_ttl_that_is_no_duration_names_none_too() -> None:
    assert [(i.field, i.message) for i in issues(doc("defaults: {max_ttl: nonee}\n"))] == [
        (
            "defaults.max_ttl",
            "invalid duration 'nonee': use 250ms, 30s, 5m, 1h, 1d, seconds, or none (no ceiling)",
        )
    ]


def test_max_ttl_none_and_a_long_ttl_load() -> None:
    loaded = load("defaults: {ttl: 30d, max_ttl: none}\n")
    assert route(loaded, DEFAULT_ROUTE).max_ttl is None
    assert route(loaded, DEFAULT_ROUTE).ttl == 30 * 86400


# ---------------------------------------------------------------- key.host


def test_key_host_defaults_to_true_and_can_be_turned_off() -> None:
    loaded = load(
        """\
        routes:
          - {name: a, match: {prefix: /a}}
          - {name: b, match: {prefix: /b}, key: {host: false, query: ignore}}
        """
    )
    assert route(loaded, "a").key.host is True
    assert route(loaded, "b").key.host is False
    assert route(loaded, "b").key.query == "ignore"


# ---------------------------------------------------------------- invalidates and tags


def test_invalidates_names_routes_or_path_prefixes() -> None:
    found = issues(
        doc(
            """\
            routes:
              - name: products
                match: {path: "/api/products/{id}"}
              - name: orders
                match: {prefix: /api/orders, methods: [POST]}
                invalidates: [products, default, /api/lists, prodcuts, api/search]
            """
        )
    )
    assert [(i.line, i.field, i.message) for i in found] == [
        (
            8,
            "routes[1].invalidates[3]",
            "no route named 'prodcuts' (routes: products, orders, default); "
            "a path prefix starts with /",
        ),
        (
            8,
            "routes[1].invalidates[4]",
            "no route named 'api/search' (routes: products, orders, default); "
            "a path prefix starts with /",
        ),
    ]


def test_tag_templates_use_the_route_parameters() -> None:
    found = issues(
        doc(
            """\
            routes:
              - name: products
                match: {path: "/api/products/{id}/{rest:path}"}
                tags: ["product:{id}", "file:{rest}", "sku:{sku}", "x:{id"]
              - name: lists
                match: {prefix: /api/lists}
                tags: ["list:{name}", "lists"]
              - name: users
                match: {regex: "^/users/(?P<user>[^/]+)"}
                tags: ["user:{user}", "{}"]
            """
        )
    )
    assert [(i.field, i.message) for i in found] == [
        ("routes[0].tags[2]", "{sku} is not a parameter of this route's match (it has id, rest)"),
        ("routes[0].tags[3]", "not a template: expected '}' before end of string"),
        ("routes[1].tags[0]", "{name} is not a parameter of this route's match (it has none)"),
        ("routes[2].tags[1]", "{} is not a parameter of this route's match (it has user)"),
    ]
