"""The container image: its start command really serves and stops, and it ships the whole app.

No container engine runs here, so the image is not built. Instead the Dockerfile's own
instructions are read (ENV, WORKDIR, CMD, HEALTHCHECK, COPY) and its start command is run on
this machine with the image's environment, from the directory the image copies the code from:
once as a plain process, and once as PID 1 of a PID namespace of its own, as in a container,
where a signal without a handler is ignored.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import posixpath
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from api import runner_files
from tests.conftest import ROOT, free_port

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
# app.py passes timeout_graceful_shutdown=10 to uvicorn; the registry's own close wait is part of it.
GRACEFUL_SECONDS = 10


@dataclass
class Dockerfile:
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = "root"
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    copies: list[tuple[list[str], str]] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    exposed: list[str] = field(default_factory=list)
    base: str = ""
    name: str = ""  # the stage's, from ``FROM base AS name``
    context_copies: list[tuple[list[str], str]] = field(default_factory=list)
    # Copies from another stage (``COPY --from=stage``): (stage, sources, destination).
    stage_copies: list[tuple[str, list[str], str]] = field(default_factory=list)
    stages: dict[str, Dockerfile] = field(default_factory=dict)  # the named stages before this one


def parse_dockerfile(text: str) -> Dockerfile:
    """The instructions this test relies on, from a Dockerfile without ARGs: those of its last
    stage (the image), with the named stages before it in ``stages``, and in ``context_copies``
    what every stage copies from the build context (a copy from another stage, ``COPY --from``,
    is in ``stage_copies`` instead)."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    result = Dockerfile()
    for instruction in logical:
        keyword, _, rest = instruction.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            stages = {**result.stages, result.name: result} if result.name else result.stages
            base, *alias = rest.split()
            name = alias[1] if len(alias) == 2 and alias[0].upper() == "AS" else ""
            result = Dockerfile(base=base, name=name, context_copies=result.context_copies, stages=stages)
        elif keyword == "ENV":
            for item in shlex.split(rest):
                name, equals, value = item.partition("=")
                assert equals, f"ENV {item!r}: use the NAME=value form"
                result.env[name] = value
        elif keyword == "WORKDIR":
            result.workdir = rest
        elif keyword == "USER":
            result.user = rest
        elif keyword == "CMD":
            result.cmd = json.loads(rest)  # exec form, or this fails: shell form would hide SIGTERM
        elif keyword == "HEALTHCHECK":
            options, _, command = rest.partition("CMD ")
            assert options.split(), "HEALTHCHECK without options uses 30 s intervals; set them"
            result.healthcheck = json.loads(command)
        elif keyword == "COPY":
            *sources, destination = shlex.split(rest)
            if sources and sources[0].startswith("--from="):
                result.stage_copies.append((sources[0].removeprefix("--from="), sources[1:], destination))
                continue  # from a build stage, not the build context
            result.copies.append((sources, destination))
            result.context_copies.append((sources, destination))
        elif keyword == "VOLUME":
            result.volumes.extend(json.loads(rest) if rest.startswith("[") else rest.split())
        elif keyword == "EXPOSE":
            result.exposed.extend(rest.split())
    return result


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


def host_command(argv: list[str]) -> list[str]:
    """The image's command for this machine: its `python` is the test's interpreter."""
    assert argv, "no command"
    return [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]


# A new PID namespace, as a container has: the command is PID 1 there. --kill-child takes the
# command down with unshare, so a failing test leaves nothing behind.
PID_1 = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "--kill-child"]


def pid_namespaces_work() -> bool:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return 0 == subprocess.run([*PID_1, "true"], capture_output=True, timeout=10).returncode
    return False


def server_pid(process: subprocess.Popen[bytes], as_pid_1: bool) -> int:
    """The server's pid as seen from here: under unshare, the one child of unshare."""
    if not as_pid_1:
        return process.pid
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    assert 1 == len(children), children
    return int(children[0])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("as_pid_1", "status"),
    [
        # uvicorn re-raises the signal after its graceful shutdown, so a supervisor sees SIGTERM.
        pytest.param(False, -signal.SIGTERM, id="process"),
        # As PID 1 (in a container) the re-raised signal is ignored by the kernel: status 0.
        pytest.param(True, 0, id="pid-1"),
    ],
)
def test_start_command_serves_healthz_and_stops_cleanly_on_sigterm(
    dockerfile: Dockerfile, tmp_path: Path, as_pid_1: bool, status: int
) -> None:
    if as_pid_1 and not pid_namespaces_work():
        pytest.skip("unshare cannot make a PID namespace here (user namespaces disabled)")
    assert "/app" == dockerfile.workdir  # the code is copied there from the repository root
    port = free_port()
    data_dir = tmp_path / "data"
    environment = {
        **os.environ,
        **dockerfile.env,
        # What differs on this machine: a free loopback port and a scratch data directory.
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "DATA_DIR": str(data_dir),
    }
    command = host_command(dockerfile.cmd)
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*PID_1, *command] if as_pid_1 else command,
            cwd=ROOT,
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"exited with {process.returncode}:\n{log_path.read_text()}"
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                if response.status_code == 200:
                    break
            assert time.monotonic() < deadline, f"/healthz never answered:\n{log_path.read_text()}"
            time.sleep(0.1)
        assert {"status": "ok"} == response.json()

        # The image's own health check passes against it.
        check = subprocess.run(host_command(dockerfile.healthcheck), env=environment, capture_output=True, timeout=10)
        assert 0 == check.returncode, check.stderr.decode()

        with connect(f"ws://127.0.0.1:{port}/ws/docker-check", open_timeout=10) as client:
            client.send(json.dumps({"type": "hello", "client_id": "c1", "username": "ann", "version": None}))
            assert "welcome" == json.loads(client.recv(timeout=10))["type"]
            os.kill(server_pid(process, as_pid_1), signal.SIGTERM)  # what `docker stop` does
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    client.recv(timeout=GRACEFUL_SECONDS)
            assert closed.value.rcvd is not None and 1012 == closed.value.rcvd.code  # clients reconnect
        assert status == process.wait(timeout=GRACEFUL_SECONDS + 5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    lines = log_path.read_text().splitlines()
    # LOG_FORMAT=json from the image: every line is one JSON object, uvicorn's included.
    events = [json.loads(line)["event"] for line in lines]
    assert {"started", "Application shutdown complete.", "stopped"} <= set(events)
    # ... and the health check fails once the server is gone.
    check = subprocess.run(host_command(dockerfile.healthcheck), env=environment, capture_output=True, timeout=10)
    assert 0 != check.returncode


def test_image_copies_every_module_the_project_ships(dockerfile: Dockerfile) -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = {*setuptools["packages"], *(f"{module}.py" for module in setuptools["py-modules"])}
    copied = {source.rstrip("/") for sources, _ in dockerfile.copies for source in sources}
    # Besides the code: the shipped questions (Pyodide comes from a build stage).
    assert shipped | {"pyproject.toml", "questions"} == copied


def test_dockerignore_keeps_local_state_out_and_lets_every_copied_path_in(dockerfile: Dockerfile) -> None:
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = Path(path).parts
        # A pattern excludes a path when it matches the path or one of its parent directories.
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(fnmatch.fnmatch(prefix, pattern.strip("/")) for pattern in patterns for prefix in prefixes)

    for local in (
        ".venv",
        ".git",
        "data",
        ".nicegui",
        "tests/node/node_modules",
        "vendor/pyodide/node_modules",
        "rooms/__pycache__",
        ".env",
    ):
        assert ignored(local), f"{local} would be sent to the build"
    for sources, _ in dockerfile.context_copies:
        for source in sources:
            assert not ignored(source), f"{source} is copied by the Dockerfile but excluded by .dockerignore"
    solutions = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "questions").glob("*/solution.*"))
    assert solutions, "no reference solution found to check"
    for solution in solutions:  # for the tests, not the image
        assert ignored(solution), f"{solution} would be copied into the image"
    assert not ignored("questions/two-sum/tests.json")


def test_image_takes_pyodide_from_its_stage_to_where_the_app_serves_it_from(dockerfile: Dockerfile) -> None:
    assert "pyodide" in dockerfile.stages, f"no stage named pyodide: {sorted(dockerfile.stages)}"
    stage = dockerfile.stages["pyodide"]
    assert stage.base.startswith("node:") and "-slim" in stage.base
    copies = [(src, dst) for name, src, dst in dockerfile.stage_copies if name == "pyodide"]
    assert 1 == len(copies), f"the image copies from the pyodide stage {len(copies)} times, not once"
    [(sources, destination)] = copies
    installed = runner_files.PYODIDE_DIR.relative_to(runner_files.ROOT).as_posix()
    assert "/app" == dockerfile.workdir
    # The runtime lands where api.runner_files reads it, the image's /app being the repository root.
    assert posixpath.join(dockerfile.workdir, installed) == posixpath.normpath(
        posixpath.join(dockerfile.workdir, destination)
    )
    # ... from where the stage's `npm ci --prefix vendor/pyodide` put it.
    assert [posixpath.join(stage.workdir, installed)] == [posixpath.normpath(source) for source in sources]


def test_image_runs_as_a_non_root_user_with_its_data_in_a_volume(dockerfile: Dockerfile) -> None:
    assert dockerfile.user not in ("", "root", "0")
    assert "-slim" in dockerfile.base
    assert [dockerfile.env["DATA_DIR"]] == dockerfile.volumes
    assert [dockerfile.env["PORT"]] == dockerfile.exposed
    assert "0.0.0.0" == dockerfile.env["HOST"]
    assert "json" == dockerfile.env["LOG_FORMAT"]
    assert "/healthz" in " ".join(dockerfile.healthcheck)
