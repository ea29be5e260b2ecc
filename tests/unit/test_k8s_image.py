"""The image (``Dockerfile``), as far as it can be checked without building it here: its base and user, that the
build context holds the files it copies and nothing else of note, that the package built from those files alone
has its data files, console script and the extras the image installs, and that the commands the manifests run in
it work against the installed package.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from schema_tools import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped) as (INSTRUCTION, arguments)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as Docker reads it: (excludes, pattern), in order; the last pattern that matches decides."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        patterns.append((not negated, re.compile(regex)))
    return patterns


def _in_context(path: str) -> bool:
    """Whether a path (relative to the repository) reaches the build: a pattern matching a parent counts."""
    parts = path.split("/")
    excluded = False
    for excludes, pattern in _ignore_patterns():
        if any(pattern.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = excludes
    return not excluded


def _files(source: str) -> list[str]:
    """The files of a path in the checkout, relative to it (byte code aside)."""
    path = REPO / source
    found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [p.relative_to(REPO).as_posix() for p in found if "__pycache__" not in p.parts]


def test_the_image_is_python_slim_unless_given_another_base_and_run_by_the_manifests_user() -> None:
    instructions = _instructions()
    assert instructions[0] == ("ARG", "BASE=python:3.11-slim"), "users build on python:3.11-slim by default"
    froms = [args for name, args in instructions if name == "FROM"]
    assert froms == ["${BASE} AS build", "${BASE}"], "a build stage, then the image on the same base"
    last = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    final = instructions[last:]
    assert not any(name == "RUN" and "pip" in args for name, args in final), "pip runs in the build stage only"
    assert ("COPY", "--from=build /opt/locust-xmpp /opt/locust-xmpp") in final
    [path] = [args for name, args in final if name == "ENV" and "PATH=" in args]
    assert "PATH=/opt/locust-xmpp/bin:" in path
    [user] = [args for name, args in instructions if name == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit(), "numeric, so that runAsNonRoot can check it"
    for manifest in ("base/master.yaml", "base/worker.yaml", "prosody/prosody.yaml"):
        for doc in yaml.safe_load_all((REPO / "k8s" / manifest).read_text()):
            if doc["kind"] == "Deployment":
                security = doc["spec"]["template"]["spec"]["securityContext"]
                assert (security["runAsUser"], security["runAsGroup"]) == (int(uid), int(gid)), manifest
    [expose] = [args for name, args in instructions if name == "EXPOSE"]
    assert expose.split() == ["5557", "8089", "9646", "9647"]


def test_the_build_context_holds_what_the_dockerfile_copies_and_not_the_rest() -> None:
    copied = [args.split()[:-1] for name, args in _instructions() if name == "COPY" and "--from=" not in args]
    sources = [source for sources in copied for source in sources]
    assert sources == ["pyproject.toml", "README.md", "xmpp_user", "locustfiles"]
    for source in sources:
        files = _files(source)
        assert files, f"{source} is in the repository"
        for path in files:
            assert _in_context(path), f"{path} is left out of the build context"
    for path in (".venv/bin/python", ".git/HEAD", "tests/unit/test_k8s_image.py", "results/k8s/run_stats.csv",
                 "k8s/base/master.yaml", "xmpp_user/__pycache__/cli.cpython-311.pyc", ".lab/prosody.pid"):  # fmt: skip
        assert not _in_context(path), f"{path} reaches the build context"


def test_the_package_built_from_the_copied_files_alone_is_complete(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for source in ("pyproject.toml", "README.md", "xmpp_user"):
        for path in _files(source):
            (context / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / path, context / path)
    built = tmp_path / "built"
    # setuptools' build_py and egg_info, offline: what pip's wheel of this context would hold.
    result = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py", "-d",
                             str(built), "egg_info", "-e", str(built)], cwd=context, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    for data in ("xmpp_user/lab/prosody.cfg.lua.in", "xmpp_user/lab/ejabberd.yml.in", "xmpp_user/deploy/master.py",
                 "xmpp_user/observe/server.py"):  # fmt: skip
        assert (built / data).is_file(), data
    [egg_info] = built.glob("*.egg-info")
    assert "locust-xmpp = xmpp_user.cli:main" in (egg_info / "entry_points.txt").read_text()
    requires = (egg_info / "requires.txt").read_text()
    [install] = [args for name, args in _instructions() if name == "RUN" and "pip install" in args]
    # What only builds or tests leaves the virtualenv: pytest (Locust's, for pytest-style locustfiles) and pip.
    assert re.search(r"pip uninstall -y -q pytest iniconfig pluggy pygments setuptools pip\b", install), install
    extras = re.search(r'"\.\[([a-z0-9,]+)\]"', install)
    assert extras is not None, install
    assert extras[1].split(",") == ["metrics", "k8s"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for extra in extras[1].split(","):
        assert extra in project["optional-dependencies"] and f"[{extra}]" in requires, extra


@pytest.mark.parametrize(("locustfile", "users"), [("livechat.py", ["ArchiveSeeder", "Viewer"]),
                                                   ("jitsi.py", ["Participant"]),
                                                   ("quickstart.py", ["QuickstartUser"])])  # fmt: skip
def test_the_images_locustfiles_load_with_the_installed_package(locustfile: str, users: list[str]) -> None:
    locust = Path(sys.executable).with_name("locust")
    # As the image runs them from /locustfiles, away from the checkout (the package comes from its installation);
    # --list loads the locustfile, where --help would not.
    result = subprocess.run([str(locust), "-f", str(REPO / "locustfiles" / locustfile), "--list"], cwd="/",
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[2:] == users


def test_the_commands_the_manifests_run_are_installed() -> None:
    bin_dir = Path(sys.executable).parent
    for command in (["locust-xmpp", "k8s", "master", "--help"], ["locust-xmpp", "exporter", "--help"],
                    ["locust", "--worker", "--help"], ["locust", "--help"]):  # fmt: skip
        result = subprocess.run([str(bin_dir / command[0]), *command[1:]], cwd="/", capture_output=True, text=True,
                                timeout=60)  # fmt: skip
        assert result.returncode == 0, (command, result.stderr)
    [cmd] = [args for name, args in _instructions() if name == "CMD"]
    assert cmd == '["locust", "--help"]'
