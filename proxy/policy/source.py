"""Policy YAML: text to plain data that remembers the line and column of every value.

``yaml.compose`` keeps marks; building the data ourselves rejects duplicate keys,
bounds aliases, interpolates ``${VAR}``/``${VAR:-default}`` and records each problem as a
``PolicyIssue``. A syntax error is reported at the line of the mistake with a hint,
not at the line where the parser gave up.
"""

from __future__ import annotations

import itertools
import os
import re
from collections import Counter
from typing import Any, Final

import yaml

from proxy.errors import PolicyError, PolicyIssue

_ENV: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MAX_DEPTH: Final = 64
_MAX_VALUES: Final = 100_000
_INVALID: Final = object()


class Abandoned(Exception):
    """The node tree cannot be built; the issue saying why is already recorded."""


class Located:
    """A YAML node tree turned into plain data, remembering where each value was."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.marks: dict[tuple[str | int, ...], tuple[int, int]] = {}
        self.key_marks: dict[tuple[str | int, ...], tuple[int, int]] = {}
        self.issues: list[PolicyIssue] = []
        self._scalars = yaml.constructor.SafeConstructor()
        self._budget = _MAX_VALUES
        self._open: list[yaml.Node] = []  # the collections being built, outermost first

    def build(self, node: yaml.Node, loc: tuple[str | int, ...] = ()) -> Any:
        self.marks[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
        # Aliases are expanded here: a recursive one (``&a [*a]``) is a cycle and nested
        # ones multiply ("billion laughs"), so bound depth, cycles and total size.
        self._budget -= 1
        if node in self._open or len(loc) > MAX_DEPTH or self._budget < 0:
            problem = (
                "recursive alias"
                if node in self._open
                else f"nested more than {MAX_DEPTH} levels deep"
                if len(loc) > MAX_DEPTH
                else f"more than {_MAX_VALUES} values after expanding aliases"
            )
            self._issue(node, loc if node in self._open else loc[:2], problem)
            raise Abandoned
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            self._open.append(node)
            try:
                if isinstance(node, yaml.MappingNode):
                    return self._mapping(node, loc)
                return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
            finally:
                self._open.pop()
        value = self._construct(node, loc)
        if isinstance(value, str):
            return self._interpolate(value, loc)
        return None if value is _INVALID else value

    def _construct(self, node: yaml.Node, loc: tuple[str | int, ...]) -> Any:
        try:
            return self._scalars.construct_object(node)
        except Exception as exc:
            # An explicit tag (``!!int abc``, ``!!bool maybe``, ``!custom``) fails in
            # PyYAML's constructors with ConstructorError, ValueError, KeyError or even
            # AttributeError: whichever, it is a mistake in the file, not a crash.
            problem = getattr(exc, "problem", None) or f"not a valid {node.tag}: {exc}"
            self._issue(node, loc, str(problem))
            return _INVALID

    def _issue(self, node: yaml.Node, loc: tuple[str | int, ...], message: str) -> None:
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        self.issues.append(PolicyIssue(self.path, line, col, dotted(loc), message))

    def _mapping(self, node: yaml.MappingNode, loc: tuple[str | int, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self._construct(key_node, loc)
            if key is _INVALID:
                continue
            if not isinstance(key, str):
                key = str(key)
            here = (*loc, key)
            mark = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in out:
                first = self.key_marks[here]
                self.issues.append(
                    PolicyIssue(
                        self.path, *mark, dotted(here), f"duplicate key (first on line {first[0]})"
                    )
                )
                continue
            self.key_marks[here] = mark
            out[key] = self.build(value_node, here)
        return out

    def _interpolate(self, value: str, loc: tuple[str | int, ...]) -> str:
        def substitute(found: re.Match[str]) -> str:
            name, default = found.group(1), found.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            line, col = self.marks[loc]
            self.issues.append(
                PolicyIssue(
                    self.path, line, col, dotted(loc), f"environment variable {name} is not set"
                )
            )
            return ""

        return _ENV.sub(substitute, value) if "${" in value else value

    def locate(self, loc: tuple[str | int, ...], *, key: bool = False) -> tuple[int, int]:
        """The mark of the deepest known node along ``loc``."""
        for end in range(len(loc), -1, -1):
            here = loc[:end]
            if key and here in self.key_marks:
                return self.key_marks[here]
            if here in self.marks:
                return self.marks[here]
        return (1, 1)


def dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


# ---------------------------------------------------------------- syntax errors

# parser problems that mean "this line is not where the structure says it should be"
_INDENT_PROBLEMS: Final = (
    "expected key",
    "expected '-' indicator",
    "mapping values are not allowed",
    "expected <block end>",
)
# something opened (at the context mark) and never closed: the mistake is where it opened
_UNCLOSED: Final = {
    "while scanning a simple key": "{key!r} is not followed by ':'",
    "while parsing a flow mapping": "'{{' is not closed by '}}'",
    "while parsing a flow sequence": "'[' is not closed by ']'",
    "while scanning a quoted scalar": "the quote is not closed",
}


def compose(text: str, path: str) -> yaml.Node | None:
    """The node tree of ``text``; a syntax error raises ``PolicyError`` at the mistake."""
    try:
        node: yaml.Node | None = yaml.compose(
            text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        )
    except yaml.YAMLError as exc:
        raise PolicyError([syntax_issue(text, path, exc)]) from None
    return node


def syntax_issue(text: str, path: str, exc: yaml.YAMLError) -> PolicyIssue:
    """A YAML syntax error in plain words, at the line of the mistake."""
    mark = getattr(exc, "problem_mark", None)
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = str(getattr(exc, "problem", None) or exc)
    context = str(getattr(exc, "context", None) or "")
    lines = text.splitlines()
    if "nesting depth" in problem:
        # PyYAML ≥ 6.0.4's scanner stops deep flow nesting before our own depth check
        # sees it: say it the same way, naming the key the nesting starts at
        key = _key_of(lines, line)
        field = key if key and key[0] not in "[{" else "(yaml)"
        return PolicyIssue(path, line, col, field, f"nested more than {MAX_DEPTH} levels deep")
    opened = getattr(exc, "context_mark", None)
    if context in _UNCLOSED and opened is not None:
        at = opened.line + 1
        what = _UNCLOSED[context].format(key=_key_of(lines, at))
        where = "" if at == line else f" (the parser stopped on line {line})"
        return PolicyIssue(path, at, opened.column + 1, "(yaml)", what + where)
    if line <= len(lines) and "\t" in _indent_text(lines[line - 1]):
        return PolicyIssue(path, line, 1, "(yaml)", "a tab in the indentation: indent with spaces")
    if any(kind in problem for kind in _INDENT_PROBLEMS):
        at = misindented_line(lines, line)
        indent = len(_indent_text(lines[at - 1])) if at <= len(lines) else 0
        hint = f"check the indentation of {_key_of(lines, at)!r}"
        if at != line:
            hint += f" (the parser stopped on line {line})"
        return PolicyIssue(path, at, indent + 1, "(yaml)", f"{problem}: {hint}")
    return PolicyIssue(path, line, col, "(yaml)", problem)


def misindented_line(lines: list[str], upto: int) -> int:
    """The line (1-based, at most ``upto``) whose indentation is off: the last one not on
    the file's indentation step, else ``upto`` itself (PyYAML often gives up a line late)."""
    depths = [
        (number, len(_indent_text(text)))
        for number, text in enumerate(lines[:upto], start=1)
        if text.strip() and not text.lstrip().startswith("#")
    ]
    # the file's step: 4 if it indents by 4 more often than by 2, else 2 (odd steps are
    # the slips we are looking for, never the style)
    steps = Counter(b - a for (_, a), (_, b) in itertools.pairwise(depths) if b > a)
    step = 4 if steps[4] > steps[2] else 2
    off = [number for number, depth in depths if depth % step]
    return off[-1] if off else upto


def _indent_text(text: str) -> str:
    return text[: len(text) - len(text.lstrip(" \t"))]


def _key_of(lines: list[str], line: int) -> str:
    text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    text = text.removeprefix("- ")
    key = text.partition(":")[0].strip() if ":" in text else text
    return key[:40]
