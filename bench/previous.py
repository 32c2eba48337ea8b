"""The previous version of collab pad, taken from git, to run beside this one.

    .venv/bin/python bench/previous.py            # BENCH_BASELINE_REF, else 7e9a834
    .venv/bin/python bench/previous.py HEAD~3     # any ref: extracts it, checks it, removes it

`extracted` writes the tree of a git ref into a temporary directory with ``git archive`` (the
repository is only read: no worktree, no checkout), checks that its ``app.py`` imports its own
packages with this virtualenv's interpreter, and removes the directory afterwards. A ref that
cannot be resolved, extracted or imported is not an exception: `Previous.error` says why, so
that a benchmark run can report it and measure everything else.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENV = "BENCH_BASELINE_REF"
DEFAULT_REF = "7e9a834"
GIT_TIMEOUT_S = 120.0
# Imports the app as the server would, and names where its room code came from.
IMPORT_CHECK = "import app, rooms; print(rooms.__file__)"


@dataclass
class Previous:
    """A git ref of this repository, and what became of extracting it."""

    ref: str
    commit: str = ""  # the full hash it resolved to
    subject: str = ""  # the first line of its message
    error: str = ""  # why it cannot be run; empty when it can
    root: Path | None = None  # its source tree, while extracted

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key != "root"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Previous:
        return cls(**{key: value for key, value in data.items() if key in ("ref", "commit", "subject", "error")})


def default_ref() -> str:
    return os.environ.get(ENV, DEFAULT_REF)


def _git(*args: str) -> bytes:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, check=True, timeout=GIT_TIMEOUT_S)
    return done.stdout


def _why(error: Exception) -> str:
    if isinstance(error, subprocess.CalledProcessError):
        lines = (error.stderr or b"").decode(errors="replace").strip().splitlines()
        return f"`{' '.join(map(str, error.cmd))}` failed: {lines[-1] if lines else f'exit {error.returncode}'}"
    return f"{type(error).__name__}: {error}"


def _check(root: Path) -> None:
    """Import its app with this interpreter, as the server would, from its own tree."""
    env = {**os.environ, "DATA_DIR": str(root / "data"), "LOG_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK], cwd=root, env=env, capture_output=True, timeout=GIT_TIMEOUT_S
    )
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"its app.py does not import: {lines[-1] if lines else f'exit {done.returncode}'}")
    origin = Path(done.stdout.decode().strip().splitlines()[-1])
    if not origin.is_relative_to(root):
        raise RuntimeError(f"its app.py imported rooms from {origin.parent}, not from its own tree")


@contextlib.contextmanager
def extracted(ref: str) -> Iterator[Previous]:
    """The tree of ``ref`` in a temporary directory while in the block; removed after it."""
    previous = Previous(ref)
    with tempfile.TemporaryDirectory(prefix="bench-previous-") as tmp:
        root = Path(tmp)
        try:
            previous.commit = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").decode().strip()
            previous.subject = _git("log", "-1", "--format=%s", previous.commit).decode().strip()
            archive = _git("archive", "--format=tar", previous.commit)
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(root, filter="data")
            _check(root)
            previous.root = root
        except (subprocess.SubprocessError, OSError, tarfile.TarError, RuntimeError) as error:
            previous.error = _why(error)
            if isinstance(error, subprocess.CalledProcessError) and not previous.commit:
                previous.error = f"`{ref}` is not a commit of this repository"
        yield previous


def main() -> None:
    ref = sys.argv[1] if len(sys.argv) > 1 else default_ref()
    with extracted(ref) as previous:
        if previous.error:
            sys.exit(f"{ref}: {previous.error}")
        print(f"{ref} = {previous.commit[:12]} ({previous.subject}): imports from {previous.root}")


if __name__ == "__main__":
    main()
