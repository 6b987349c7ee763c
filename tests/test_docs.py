"""What a newcomer reads first: README's links and commands, the quick bootstrap."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_links_point_at_files_in_the_repository(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor on the same page
        resolved = (doc.parent / target.partition("#")[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
        assert resolved.exists(), f"{doc.name}: {target} does not exist"
        assert not resolved.relative_to(ROOT).as_posix().startswith(".venv")
    assert "shared/" not in text, f"{doc.name} mentions a path outside the repository"


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"## {title}")
    return text[start : text.index("\n## ", start + 1)]


def test_try_it_shows_only_the_headers() -> None:
    section = _section("Try it")
    curls = [line for line in section.splitlines() if line.startswith("curl")]
    assert len(curls) == 2
    assert all(c.startswith("curl -s -o /dev/null -D - localhost:8080/") for c in curls)
    assert "grep" not in section
    assert "scripts/bootstrap" in section


def test_bootstrap_installs_only_what_running_needs() -> None:
    script = (ROOT / "scripts" / "bootstrap").read_text(encoding="utf-8")
    commands = [line for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in commands if re.match(r"\s*(sudo\s+)?apt(-get)?\s", line)]
    installs = [line for line in commands if "pip install" in line]
    assert installs == ["  .venv/bin/pip install -q --disable-pip-version-check -e ."]
    # the test toolchain comes with `make test`, which .ci/run calls
    check = (ROOT / "scripts" / "check").read_text(encoding="utf-8")
    assert "scripts/test-deps" in check
    deps = (ROOT / "scripts" / "test-deps").read_text(encoding="utf-8")
    assert "apt-get install" in deps
    assert "-e '.[test,lint]'" in deps
    assert "scripts/check" in (ROOT / "Makefile").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("setting", "documented"),
    [
        ("max_ttl", r"\| `max_ttl` \| `1d` \|"),
        ("early_refresh", r"\| `early_refresh` \| off \|"),
        ("key.host", r"`key.host: false`"),
    ],
)
def test_route_settings_are_documented(setting: str, documented: str) -> None:
    assert re.search(documented, (ROOT / "README.md").read_text(encoding="utf-8")), setting
    name = setting.rpartition(".")[2]
    assert re.search(
        rf"^\s*#.*\b{name}\b|\b{name}:", (ROOT / "policies" / "example.yaml").read_text(), re.M
    )
