"""The Dockerfile: hadolint, its shape, and the build step it relies on (``pip wheel .``).

No Docker engine here: the wheel is built from exactly what the build stage copies out of
the context that .dockerignore lets through, the way ``docker build`` would see it.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Final

import pytest

from .chart import REPO

DOCKERFILE: Final = REPO / "Dockerfile"
BIN: Final = Path(sys.executable).parent


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, args))
    return found


def args_of(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in stage if kw == keyword]


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


def test_hadolint_clean(dockerfile: str) -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (REPO / ".hadolint.yaml").exists()
    # Inline ignores must say why on the line above.
    lines = dockerfile.splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert i > 0
            assert lines[i - 1].startswith("#")
            assert "hadolint" not in lines[i - 1]


def test_base_image_is_pinned_slim_python(dockerfile: str) -> None:
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.M))
    bases = [args.split()[0] for args in args_of(instructions(dockerfile), "FROM")]
    assert len(bases) >= 2, "multi-stage: wheels are built in a stage of their own"
    for base in bases:
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], base)
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", image), image


def test_final_stage(dockerfile: str) -> None:
    build, final = stages(dockerfile)[0], stages(dockerfile)[-1]
    assert any("pip wheel" in run for run in args_of(build, "RUN"))
    runs = " ".join(args_of(final, "RUN"))
    for compiler in ("apt-get install", "gcc", "build-essential", "python3-dev"):
        assert compiler not in runs
    installs = [run for run in args_of(final, "RUN") if "pip install" in run]
    assert len(installs) == 1
    assert "--no-cache-dir" in installs[0]
    assert "--no-index" in installs[0]
    env = " ".join(args_of(final, "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PIP_NO_CACHE_DIR=1" in env
    (user,) = args_of(final, "USER")
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), "a numeric, non-root user"
    assert args_of(final, "ENTRYPOINT") == ['["sidecache"]']
    (cmd,) = args_of(final, "CMD")
    assert json.loads(cmd) == ["run", "--policy", "/etc/sidecache/policy.yaml"]
    exposed = {port for args in args_of(final, "EXPOSE") for port in args.split()}
    assert {"8080", "9090"} <= exposed
    # The default policy sits where the chart mounts its ConfigMap.
    assert "policies/example.yaml /etc/sidecache/policy.yaml" in args_of(final, "COPY")


def _pattern(text: str) -> re.Pattern[str]:
    """A .dockerignore pattern: ``*`` and ``?`` stay within one path segment, ``**`` not."""
    out, i = "", 0
    while i < len(text):
        if text.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif text.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(text[i], re.escape(text[i]))
            i += 1
    return re.compile(out + "$")


def dockerignore_excludes(path: str) -> bool:
    """.dockerignore semantics: the last matching pattern wins; a directory covers its files."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern = _pattern(line.removeprefix("!").strip("/"))
        if any(pattern.match(prefix) for prefix in prefixes):
            excluded = not line.startswith("!")
    return excluded


def build_context(dest: Path, dockerfile: str) -> None:
    """Copy what the build stage's COPY lines take from the context into ``dest``."""
    for args in args_of(stages(dockerfile)[0], "COPY"):
        *sources, target = args.split()
        assert not any(s.startswith("--") for s in sources), "plain context copies only"
        for source in sources:
            src = REPO / source
            if src.is_dir():  # a directory's contents go into the target
                files = [(p, dest / target / p.relative_to(src)) for p in src.rglob("*")]
            else:
                files = [(src, dest / target / (src.name if target.endswith("/") else ""))]
            for path, out in files:
                if path.is_file() and not dockerignore_excludes(path.relative_to(REPO).as_posix()):
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, out)


def test_dockerignore_keeps_what_the_build_needs() -> None:
    for needed in ("pyproject.toml", "README.md", "proxy/__init__.py", "policies/example.yaml"):
        assert not dockerignore_excludes(needed), needed
    for unwanted in (".venv/bin/python", ".git/HEAD", "tests/k8s/conftest.py", "helm/x"):
        assert dockerignore_excludes(unwanted), unwanted
    assert dockerignore_excludes("proxy/__pycache__/cli.cpython-311.pyc")


@pytest.mark.timeout(300)
def test_pip_wheel_yields_the_package_and_console_script(dockerfile: str, tmp_path) -> None:
    context = tmp_path / "src"
    build_context(context, dockerfile)
    assert (context / "pyproject.toml").is_file()
    assert (context / "proxy" / "__init__.py").is_file()
    assert not list(context.rglob("__pycache__"))
    wheels = tmp_path / "wheels"
    assert importlib.util.find_spec("hatchling"), "the test extra must install hatchling"
    # As the build stage runs it, offline: hatchling comes from the test environment.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            ".",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(wheels),
        ],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = wheels.glob("sidecache-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    assert "proxy/__init__.py" in names
    assert "proxy/cli.py" in names
    assert "proxy/policy/load.py" in names
    assert not [n for n in names if n.startswith(("tests/", "helm/"))]
    assert re.search(r"^\[console_scripts\]\nsidecache = proxy\.cli:main$", scripts, re.M)


def _docker_runs(text: str) -> list[str]:
    """Every ``docker run`` command in a text, continuation lines joined."""
    joined = re.sub(r"\\\n\s*#?\s*", " ", text)
    return [m.group(0) for m in re.finditer(r"docker run [^\n]*", joined)]


@pytest.mark.parametrize("where", ["Dockerfile", "README.md"])
def test_docs_say_buildkit_and_run_an_origin_the_container_can_reach(where: str) -> None:
    text = (REPO / where).read_text(encoding="utf-8")
    # RUN --mount needs BuildKit: the docs say so, and build with it
    assert "RUN --mount" in DOCKERFILE.read_text(encoding="utf-8")
    assert "BuildKit" in text
    assert "DOCKER_BUILDKIT=1 docker build" in text
    runs = _docker_runs(text)
    assert runs, f"{where} shows no docker run"
    for run in runs:
        # the example policy's origin is 127.0.0.1:8000: inside a bridged container that is
        # the container itself, so a run must share the host's network or name the host
        reaches_host = "--network host" in run or (
            "--add-host host.docker.internal:host-gateway" in run
            and "SIDECACHE_ORIGIN=http://host.docker.internal:" in run
        )
        assert reaches_host, run
