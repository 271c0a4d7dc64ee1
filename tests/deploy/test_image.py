"""The container image: the Dockerfile passes hadolint, has the shape the deployment relies on
(multi-stage, pinned base, non-root, no build tools at run time, `img2dataset serve` as the
entrypoint), and its build context carries everything `pip install .` needs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from i2d_cli.serve import SETTINGS
from tests.deploy.helpers import DOCKERFILE, ROOT

HADOLINT = Path(sys.executable).parent / "hadolint"
BUILD_TOOLS = ("gcc", "g++", "make", "build-essential", "python3-dev", "libc6-dev", "git")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def test_hadolint_finds_nothing() -> None:
    run = subprocess.run(
        [str(HADOLINT), "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    findings = json.loads(run.stdout or "[]")
    assert run.returncode == 0 and findings == [], findings or run.stderr


def test_multi_stage_with_one_pinned_slim_base() -> None:
    froms = [args.split()[0] for ins in stages() for word, args in ins if word == "FROM"]
    assert len(froms) >= 2, "a build stage and a runtime stage"
    # The runtime stage copies the build stage's venv, whose interpreter links to the base.
    assert len(set(froms)) == 1, froms
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim(-\w+)?", froms[-1]), froms[-1]


def test_runtime_stage_is_non_root_without_build_tools() -> None:
    final = stages()[-1]
    users = [args for word, args in final if word == "USER"]
    assert users, "the runtime stage sets a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    runs = " ".join(args for word, args in final if word == "RUN")
    assert "apt-get install" not in runs and "pip install" not in runs
    assert not [t for t in BUILD_TOOLS if re.search(rf"\b{re.escape(t)}\b", runs)]
    copies = [args for word, args in final if word == "COPY"]
    assert any(c.startswith("--from=") for c in copies), "the runtime stage copies the venv"


def test_entrypoint_is_img2dataset_serve_and_default_service_exists() -> None:
    final = dict((word, args) for word, args in stages()[-1])
    assert json.loads(final["ENTRYPOINT"]) == ["img2dataset", "serve"]
    (service,) = json.loads(final["CMD"])
    assert service in SETTINGS


def test_healthcheck_runs_the_script_the_image_ships() -> None:
    final = stages()[-1]
    health = next(args for word, args in final if word == "HEALTHCHECK")
    command = json.loads(health.split("CMD", 1)[1])
    copied = [args.split()[-2:] for word, args in final if word == "COPY"]
    assert [str(Path("deploy/docker/healthcheck.py")), f"/usr/local/bin/{command[0]}"] in copied


def docker_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins, `!` re-includes, and a
    pattern matching a directory covers everything below it."""
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        regex = "".join(
            ".*"
            if part == "**"
            else "[^/]*"
            if part == "*"
            else "[^/]"
            if part == "?"
            else re.escape(part)
            for part in re.split(r"(\*\*|\*|\?)", pattern)
        )
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, p) for p in prefixes):
            ignored = not negate
    return ignored


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def path_of(folder: Path, name: str) -> str:
    return name if folder == Path(".") else f"{folder}/{name}"


def copy_build_context(dst: Path) -> None:
    """Copy what `docker build .` would send: every file .dockerignore lets through."""
    patterns = dockerignore()
    reincluded = [p[1:].strip("/") for p in patterns if p.startswith("!")]
    for folder, dirs, files in os.walk(ROOT):
        rel = Path(folder).relative_to(ROOT)
        # Skip a whole ignored folder unless a `!` pattern re-includes something inside it.
        dirs[:] = [
            d
            for d in dirs
            if not docker_ignored(str(rel / d), patterns)
            or any(r.startswith(f"{path_of(rel, d)}/") for r in reincluded)
        ]
        for name in files:
            path = path_of(rel, name)
            if not docker_ignored(path, patterns):
                (dst / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / path, dst / path)


def test_build_context_holds_the_project_and_nothing_local() -> None:
    patterns = dockerignore()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    roots = project["tool"]["setuptools"]["packages"]["find"]["where"]
    needed = ["pyproject.toml", "deploy/docker/healthcheck.py"]
    for where in roots:
        needed += [str(p.relative_to(ROOT)) for p in (ROOT / where).rglob("*.py")]
        needed += [str(p.relative_to(ROOT)) for p in (ROOT / where).rglob("*.sql")]
    missing = [p for p in needed if docker_ignored(p, patterns)]
    assert not missing, f"excluded from the image's build context: {missing[:10]}"
    for local in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "out/index.sqlite"):
        assert docker_ignored(local, patterns), f"{local} would be sent to the image build"
    assert docker_ignored("libs/segments/i2d_segments/__pycache__/x.pyc", patterns)


def test_pip_install_of_the_build_context_has_every_service(tmp_path: Path) -> None:
    """What the image's `pip install .` builds from the build context: a wheel with every
    import root `serve` needs, the index migrations and the `img2dataset` console script.
    (The venv's setuptools builds it, offline; the image's build fetches the same range.)"""
    context = tmp_path / "context"
    copy_build_context(context)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "wheels"),
            str(context),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    tops = {n.split("/")[0] for n in names}
    for model in SETTINGS.values():
        assert model.__module__.split(".")[0] in tops, model.__module__
    assert {"i2d_segments", "i2d_cli"} <= tops
    assert [n for n in names if n.endswith(".postgres.sql")]
    assert "img2dataset = i2d_cli.main:main" in scripts
