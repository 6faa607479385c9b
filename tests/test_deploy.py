"""Packaging: the systemd unit, the sample settings, the Dockerfile and its .dockerignore.

The unit is checked by ``systemd-analyze verify`` (Debian package ``systemd``; skipped
locally when missing, a failure under ``CI=true``). No image can be built here (no
registry), so the Dockerfile is checked as text: known instructions, a non-root user, the
volume, the ports, and a CMD that runs ``serve`` on the settings it copies in; the package
is built by setuptools from the build context .dockerignore lets in, as ``pip install`` in
the image does.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path, PurePosixPath

import pytest

from gateway.settings import load
from tests.conftest import ROOT
from tests.tools import missing_tool

UNIT = ROOT / "deploy" / "gatekeeper.service"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SHIPPED = ROOT / "settings.toml"
#: Where the service keeps its database and store (the unit's StateDirectory, the image's volume).
STATE = Path("/var/lib/gatekeeper")
#: How each sample differs from the shipped settings.toml (dotted key: value); nothing else may.
SAMPLES = {
    "deploy/settings.toml": {
        "database.url": "sqlite:////var/lib/gatekeeper/gatekeeper.db",
        "storage.root": "/var/lib/gatekeeper/store",
    },
    "deploy/docker-settings.toml": {
        "database.url": "sqlite:////var/lib/gatekeeper/gatekeeper.db",
        "storage.root": "/var/lib/gatekeeper/store",
        "metrics.bind_address": "0.0.0.0",
    },
}


# ------------------------------------------------------------------------- systemd


def systemd_analyze() -> str:
    """Path of systemd-analyze, or skip (fail under CI) when missing."""
    for path in ("/usr/bin/systemd-analyze", "/bin/systemd-analyze", shutil.which("systemd-analyze")):
        if path and os.access(path, os.X_OK):
            return path
    message = "systemd-analyze is not installed (Debian package systemd)"
    missing_tool(message)


def unit_entries(text: str) -> dict[str, list[str]]:
    """``Key: [values]`` of a unit file, every section together (comments and blanks skipped)."""
    entries: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        entries.setdefault(key.strip(), []).append(value.strip())
    return entries


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    """verify checks that ExecStart's program exists: the copy points at this checkout's."""
    tool = systemd_analyze()
    installed = "/opt/gatekeeper/.venv/bin/gatekeeper"
    here = Path(sys.executable).with_name("gatekeeper")
    assert here.exists(), f"{here} missing: install the project (pip install -e .)"
    text = UNIT.read_text()
    assert text.count(installed) == 1
    copy = tmp_path / "gatekeeper.service"
    copy.write_text(text.replace(installed, str(here)))
    result = subprocess.run([tool, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60)
    # Unknown keys and bad values are only warnings (exit 0): any line about the unit fails.
    about_unit = [line for line in (result.stdout + result.stderr).splitlines() if "gatekeeper" in line]
    assert result.returncode == 0 and not about_unit, result.stdout + result.stderr


def test_the_units_exposure_stays_low(tmp_path):
    """systemd-analyze security (offline, systemd 250 and later) rates the unit 2.0 or less of 10."""
    tool = systemd_analyze()
    copy = tmp_path / "gatekeeper.service"
    copy.write_text(UNIT.read_text().replace("/opt/gatekeeper/.venv/bin/gatekeeper",
                                             str(Path(sys.executable).with_name("gatekeeper"))))
    result = subprocess.run([tool, "security", "--offline=true", "--threshold=20", "--no-pager", str(copy)],
                            capture_output=True, text=True, timeout=60)
    if "--offline" in result.stderr or "unrecognized option" in result.stderr:
        pytest.skip(f"this systemd-analyze has no offline security check: {result.stderr.strip()}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def test_the_unit_runs_serve_as_its_own_user_hardened():
    e = unit_entries(UNIT.read_text())
    assert e["User"] == ["gatekeeper"] and e["Group"] == ["gatekeeper"]
    assert e["ExecStart"] == ["/opt/gatekeeper/.venv/bin/gatekeeper --config /etc/gatekeeper/settings.toml serve"]
    assert e["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert e["Restart"] == ["on-failure"]
    for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                       "NoNewPrivileges": "yes", "StateDirectory": "gatekeeper"}.items():
        assert e[key] == [value], key
    assert e["ReadWritePaths"] == [str(STATE)]
    assert e["CapabilityBoundingSet"] == [""] and "AmbientCapabilities" not in e  # port 11112 needs none
    assert int(e["LimitNOFILE"][0]) >= 4096


def test_the_unit_reads_the_sample_settings_whose_files_it_may_write():
    """The database and the store of deploy/settings.toml are inside ReadWritePaths."""
    s = load(ROOT / "deploy" / "settings.toml", environ={})
    writable = [Path(p.lstrip("-")) for p in unit_entries(UNIT.read_text())["ReadWritePaths"][0].split()]
    database = Path(s.database_url.removeprefix("sqlite:///"))
    for path in (database, s.storage_root):
        assert path.is_absolute() and any(path.is_relative_to(w) for w in writable), path
    assert s.log_file is None  # the journal keeps the log: ProtectSystem=strict forbids /var/log
    assert s.port > 1023  # no capability needed (the unit says how to allow port 104)


# ------------------------------------------------------------------------- sample settings


def flat(table: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict) and not prefix:  # sections, and [payers.X] / [peers] as wholes
            out.update(flat(value, f"{key}.") if key not in ("payers", "peers") else {key: value})
        else:
            out[prefix + key] = value
    return out


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_a_sample_is_the_shipped_settings_with_its_paths(sample):
    shipped = flat(tomllib.loads(SHIPPED.read_text()))
    ours = flat(tomllib.loads((ROOT / sample).read_text()))
    missing, unknown = sorted(set(shipped) - set(ours)), sorted(set(ours) - set(shipped))
    assert not missing and not unknown, (
        f"{sample} lacks {missing} / has {unknown} of settings.toml: copy the setting with its comment")
    differ = {k: ours[k] for k in ours if ours[k] != shipped[k]}
    assert differ == SAMPLES[sample], f"{sample} differs from settings.toml in {sorted(differ)}"
    s = load(ROOT / sample, environ={})
    assert s.database_url == f"sqlite:///{STATE / 'gatekeeper.db'}" and s.storage_root == STATE / "store"


# ------------------------------------------------------------------------- Dockerfile

#: Every Dockerfile instruction (https://docs.docker.com/reference/dockerfile/).
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: continuation lines joined, comments dropped."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # a comment inside a continued instruction is skipped too, as Docker does
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, args = pending.partition(" ")
            out.append((word.upper(), args.strip()))
            pending = ""
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def test_the_dockerfile_parses(dockerfile):
    unknown = [word for word, _ in dockerfile if word not in INSTRUCTIONS]
    assert not unknown, f"unknown instructions {unknown}"
    assert dockerfile[0] == ("FROM", "python:3.11-slim")
    assert [w for w, _ in dockerfile].count("CMD") == 1
    for word, args in dockerfile:
        if word in ("CMD", "ENTRYPOINT") or (word == "HEALTHCHECK" and "CMD [" in args):
            exec_form(args[args.index("["):])  # exec form: valid JSON, signals reach the server


def test_the_image_runs_as_a_non_root_user_it_creates(dockerfile):
    users = [args for word, args in dockerfile if word == "USER"]
    assert users, "no USER: the container would run as root"
    user, _, group = users[-1].partition(":")
    assert user not in ("root", "0") and group not in ("root", "0")
    useradd = [cmd for word, args in dockerfile if word == "RUN" for cmd in args.split("&&") if "useradd" in cmd]
    made = f"--uid {user}" if user.isdigit() else f" {user}"
    assert any(made in cmd.split("#")[0] + " " for cmd in useradd), f"USER {user} is not created by a RUN useradd"


def test_the_image_declares_the_volume_and_ports_of_its_settings(dockerfile):
    settings = image_settings(dockerfile)
    volumes = [PurePosixPath(v) for word, args in dockerfile if word == "VOLUME"
               for v in (exec_form(args) if args.startswith("[") else args.split())]
    assert PurePosixPath(STATE) in volumes
    database = PurePosixPath(settings.database_url.removeprefix("sqlite:///"))
    for path in (database, PurePosixPath(settings.storage_root)):
        assert any(path.is_relative_to(v) for v in volumes), f"{path} is not on a VOLUME: it would be lost"
    exposed = {int(p.split("/")[0]) for word, args in dockerfile if word == "EXPOSE" for p in args.split()}
    assert exposed == {11112, 9102, 2575} == {settings.port, settings.metrics_port, settings.hl7_port}
    assert settings.bind_address == settings.metrics_bind_address == "0.0.0.0"  # reachable when published
    assert settings.log_file is None  # docker logs


def test_the_cmd_serves_with_the_settings_it_copies(dockerfile):
    [cmd] = [exec_form(args) for word, args in dockerfile if word == "CMD"]
    assert cmd[0] == "gatekeeper" and cmd[-1] == "serve"
    assert cmd[cmd.index("--config") + 1] in copied(dockerfile)


def copied(dockerfile) -> dict[str, Path]:
    """Destination in the image: source in the checkout, of each single-file COPY."""
    out = {}
    for word, args in dockerfile:
        if word == "COPY":
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            if len(parts) == 2 and (ROOT / parts[0]).is_file():
                out[parts[1]] = ROOT / parts[0]
    return out


def image_settings(dockerfile):
    [cmd] = [exec_form(args) for word, args in dockerfile if word == "CMD"]
    source = copied(dockerfile)[cmd[cmd.index("--config") + 1]]
    assert included(source.relative_to(ROOT).as_posix()), f"{source} is left out by .dockerignore"
    return load(source, environ={})


# ------------------------------------------------------------------------- build context


def ignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """(exclude?, pattern) of .dockerignore, in order: the last match decides (Docker's rule)."""
    out = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        glob = line.lstrip("!").strip("/")
        rx = "".join(".*" if part == "**" else re.escape(part).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
                     for part in re.split(r"(\*\*)", glob))
        out.append((exclude, re.compile(rf"{rx.replace('.*/', '(.*/)?')}(/.*)?")))
    return out


def included(path: str) -> bool:
    keep = True
    for exclude, pattern in ignore_patterns():
        if pattern.fullmatch(path):  # a pattern that matches a folder matches what it holds
            keep = not exclude
    return keep


def test_the_build_context_holds_the_packages_and_no_local_state():
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for package in packages:
        init = package.replace(".", "/") + "/__init__.py"
        assert included(init), f"{init} is left out by .dockerignore: add !{package.split('.')[0]}"
    for needed in ("pyproject.toml", "README.md", "gateway/dicom/server.py"):
        assert included(needed), needed
    for local in (".venv/bin/python", "var/gatekeeper.db", ".git/HEAD", "tests/test_deploy.py",
                  "settings.toml", "gateway/__pycache__/app.cpython-311.pyc", "imaging_gatekeeper.egg-info/PKG-INFO"):
        assert not included(local), f"{local} gets into the image"


def test_the_package_builds_from_the_build_context(tmp_path):
    """What `COPY . /usr/src/gatekeeper` and `pip install` do in the image, minus the network:
    setuptools builds the package from the files .dockerignore lets in (an sdist: building a
    wheel offline needs the wheel package, which a fresh virtualenv lacks)."""
    context = tmp_path / "context"
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT).as_posix()
        if path.is_file() and not rel.startswith((".git/", ".venv/")) and included(rel):
            (context / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, context / rel)
    dist = tmp_path / "dist"
    build = f"from setuptools import build_meta; print(build_meta.build_sdist({str(dist)!r}))"
    result = subprocess.run([sys.executable, "-c", build], cwd=context, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    with tarfile.open(dist / result.stdout.split()[-1]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
        entry_points = sdist.extractfile(next(m for m in sdist.getmembers() if m.name.endswith("entry_points.txt")))
        assert "gatekeeper = gateway.cli.main:main" in entry_points.read().decode()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert {package.replace(".", "/") + "/__init__.py" for package in packages} <= names
    assert {"gateway/dicom/server.py", "worklist/gate.py", "store/store.py", "infra/db.py"} <= names
