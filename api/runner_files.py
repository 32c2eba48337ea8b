"""``/runner/...``: what a page needs to run code in the browser, served by the app itself.

Nothing is fetched from anywhere else: Pyodide (``make pyodide`` installs the npm package
pinned in ``vendor/pyodide/package.json``) and the two workers come from this origin.

- ``/runner/pyodide/<PYODIDE_VERSION>/<name>``: the Pyodide runtime, exactly `PYODIDE_FILES`.
  The version is in the path, so a file never changes under its URL: cached for a year,
  ``immutable`` (a new Pyodide is a new URL).
- ``/runner/<name>``: the workers, the modules they import (sandbox.js, python_runner.js) and
  the case harness, `RUNNER_FILES`, from ``ui/runner/``.
  They change with the app, so the browser asks again every time (``no-cache``) and gets a
  304 while its copy's ETag still matches. Each worker has its own Content-Security-Policy
  (a worker obeys the policy of its own script, not the page's): the Python worker may load
  its runtime from this server's /runner/ folder and compile WebAssembly; the JavaScript
  worker may evaluate code and load the harness from there, and connect nowhere. The page's
  policy (`api.edge`) is added only to responses that set none.

Pyodide's files are large (12.9 MiB as installed). The ones that compress (`GZIPPED`: the
WebAssembly, the JavaScript modules, the lock file) go gzip-compressed to a client whose
Accept-Encoding takes gzip (with ``Vary: Accept-Encoding``, and an ETag of their own): a page
loads 6.1 MiB to run Python instead of 12.9 MiB. Each is compressed once, on its first such
request, in a worker thread, and kept in memory (`GzipCache`: 3.7 MiB for the four);
python_stdlib.zip is sent as it is (already compressed: gzip would save 1.7 % of it, for 2.4 MiB
more memory).

Every file answers GET and HEAD, and a conditional request (If-None-Match, else
If-Modified-Since) whose copy is current gets a 304 (RFC 9110 section 13).

Any other name is a 404, whatever it looks like: names are looked up, never joined to a path.
A 404 is never cached (``no-store``): a file installed later is served at once.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import re
import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, PlainTextResponse

log = structlog.get_logger("collab.runner_files")

ROOT = Path(__file__).resolve().parent.parent
PYODIDE_VERSION = "314.0.8"  # the npm package pinned in vendor/pyodide/package.json
PYODIDE_DIR = ROOT / "vendor" / "pyodide" / "node_modules" / "pyodide"
RUNNER_DIR = ROOT / "ui" / "runner"
RUNNER_PATH = "/runner/"
PYODIDE_PATH = f"{RUNNER_PATH}pyodide/{PYODIDE_VERSION}/"

JAVASCRIPT = "text/javascript; charset=utf-8"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

# `{runner}` is this server's /runner/ folder as an absolute source (`worker_policy`): a worker
# may load scripts, and the Python worker fetch its runtime, from there and nowhere else. Not
# 'self': the code a worker runs must not reach the rest of this origin either (the rooms API
# answers with the cookies of whoever pressed Run), not even through `import()`.
PYTHON_WORKER_CSP = "default-src 'none'; script-src {runner} 'wasm-unsafe-eval'; connect-src {runner}"
JS_WORKER_CSP = "default-src 'none'; script-src {runner} 'unsafe-eval'"
# What a Host header may hold to be written into a policy (HostCheck has checked it is ours).
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def worker_policy(template: str, scheme: str, host: str) -> str:
    """A worker's policy for a request to ``scheme://host``: its sources are that server's
    /runner/ folder (a path-scoped source; an ``http`` one also matches the same URL in
    ``https``, behind a proxy that terminates TLS). A host that cannot be written into a
    policy gets 'none' for sources: the worker cannot start, rather than reach further."""
    if scheme not in ("http", "https") or not _HOST.fullmatch(host):
        return template.format(runner="'none'")
    return template.format(runner=f"{scheme}://{host}{RUNNER_PATH}")


# The runtime files a page loads (pyodide.js, the source maps and the npm extras are not served).
PYODIDE_FILES: dict[str, str] = {
    "pyodide.mjs": JAVASCRIPT,
    "pyodide.asm.mjs": JAVASCRIPT,
    "pyodide.asm.wasm": "application/wasm",  # WebAssembly.instantiateStreaming needs exactly this
    "python_stdlib.zip": "application/zip",
    "pyodide-lock.json": "application/json",
}


# The runtime files worth compressing, as measured with Pyodide 314.0.8 (bytes as installed, then
# gzipped at GZIP_LEVEL): pyodide.asm.wasm 9,597,892 -> 3,546,144; pyodide.asm.mjs 1,250,259 ->
# 260,094; pyodide-lock.json 119,077 -> 26,595; pyodide.mjs 17,758 -> 7,082. Not
# python_stdlib.zip: 2,545,550 -> 2,503,171 (its members are deflated already).
GZIPPED = frozenset({"pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "pyodide-lock.json"})
# zlib's default level: 9 makes the WebAssembly only 0.5 % smaller, for twice the time (about
# 1.3 s instead of 0.8 s on an idle core), which its first request waits for.
GZIP_LEVEL = 6
# The ETag of a compressed copy: another representation, so another strong validator.
GZIP_ETAG_SUFFIX = "-gzip"
VARY = "Accept-Encoding"


@dataclass(frozen=True)
class RunnerFile:
    media_type: str
    policy: str | None = None  # the worker's own Content-Security-Policy


RUNNER_FILES: dict[str, RunnerFile] = {
    "worker_python.js": RunnerFile(JAVASCRIPT, PYTHON_WORKER_CSP),
    "worker_js.js": RunnerFile(JAVASCRIPT, JS_WORKER_CSP),
    # Modules the workers import: a module obeys the policy of the worker that imports it.
    "sandbox.js": RunnerFile(JAVASCRIPT),
    "python_runner.js": RunnerFile(JAVASCRIPT),
    "harness.js": RunnerFile(JAVASCRIPT),
    "harness.py": RunnerFile("text/x-python; charset=utf-8"),
}


@dataclass(frozen=True)
class Stamp:
    """A file's version as its validators see it: its size and modification time."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, result: os.stat_result) -> Stamp:
        return cls(result.st_size, result.st_mtime_ns)

    def etag(self, suffix: str = "") -> str:
        """A strong validator (no read of the file)."""
        digest = hashlib.sha256(f"{self.size}-{self.mtime_ns}".encode()).hexdigest()[:20]
        return f'"{digest}{suffix}"'

    @property
    def last_modified(self) -> str:
        return formatdate(self.mtime_ns // 1_000_000_000, usegmt=True)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding value takes gzip (RFC 9110 section 12.5.3): ``gzip`` (or
    ``x-gzip``) listed with a q-value above 0, or else ``*`` with one."""
    star = False
    for item in accept_encoding.split(","):
        coding, *parameters = (part.strip() for part in item.split(";"))
        quality = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        coding = coding.lower()
        if coding in ("gzip", "x-gzip"):
            return quality > 0
        if coding == "*":
            star = quality > 0
    return star


def not_found() -> Response:
    """The answer for a name not served, or a file missing: never cached, so a file installed
    later is served at once."""
    return PlainTextResponse("not found", status_code=404, headers={"cache-control": "no-store"})


def not_modified(request: Request, stamp: Stamp, etag: str) -> bool:
    """Whether the client's copy is current: If-None-Match when sent (weak comparison, section
    13.1.2), else If-Modified-Since (section 13.1.3)."""
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or etag in tags
    since = request.headers.get("if-modified-since")
    if since is None:
        return False
    try:
        date = parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False  # not a date: the condition is ignored
    return stamp.mtime_ns // 1_000_000_000 <= date.timestamp()


class GzipCache:
    """Gzip-compressed copies of a folder's files, each made once and kept in memory.

    A file is compressed on its first request that takes gzip, in a worker thread: the
    WebAssembly takes about a second, which the event loop must not wait for. Concurrent first
    requests wait for that one compression (a lock per file, taken in the thread). A file that
    changed on disk (another size or modification time) is compressed again, replacing its copy.
    """

    def __init__(self, folder: Path, names: Iterable[str], level: int = GZIP_LEVEL) -> None:
        self.folder = folder
        self.level = level
        self._locks = {name: threading.Lock() for name in names}
        self._copies: dict[str, tuple[Stamp, bytes]] = {}
        self.compressions = 0  # files compressed so far

    @property
    def size(self) -> int:
        """Bytes kept."""
        return sum(len(body) for _, body in self._copies.values())

    async def get(self, name: str, stamp: Stamp) -> tuple[Stamp, bytes]:
        """The compressed copy of the file ``name`` as it is at ``stamp`` (or later: the stamp
        returned is that of the bytes compressed)."""
        copy = self._copies.get(name)
        if copy is not None and copy[0] == stamp:
            return copy
        return await asyncio.to_thread(self._compress, name, stamp)

    def _compress(self, name: str, stamp: Stamp) -> tuple[Stamp, bytes]:
        with self._locks[name]:
            copy = self._copies.get(name)
            if copy is not None and copy[0] == stamp:
                return copy  # made while this request waited for the lock
            with (self.folder / name).open("rb") as file:
                read = Stamp.of(os.fstat(file.fileno()))  # what is read, even if the file just changed
                data = file.read()
            copy = (read, gzip.compress(data, self.level, mtime=0))
            self._copies[name] = copy
            self.compressions += 1
            log.info("runner_file_compressed", name=name, size=len(data), compressed=len(copy[1]))
            return copy


def make_router(
    pyodide_dir: Path = PYODIDE_DIR, runner_dir: Path = RUNNER_DIR, cache: GzipCache | None = None
) -> APIRouter:
    """The routes, serving from these folders, with compressed copies kept in ``cache`` (tests
    pass others)."""
    router = APIRouter()
    reported: set[Path] = set()  # a missing file is logged once, not on every request
    if cache is None:
        cache = GzipCache(pyodide_dir, GZIPPED)

    def missing(path: Path, hint: str) -> Response:
        if path not in reported:
            reported.add(path)
            log.error("runner_file_missing", path=str(path), hint=hint)
        return not_found()

    def regular(path: Path) -> os.stat_result | None:
        try:
            result = path.stat()
        except OSError:
            return None
        return result if stat.S_ISREG(result.st_mode) else None

    def as_is(
        request: Request, path: Path, result: os.stat_result, media_type: str, headers: dict[str, str]
    ) -> Response:
        """The file uncompressed, with ``headers`` and its validators; a 304 when the client's
        copy is current."""
        stamp = Stamp.of(result)
        headers = {**headers, "etag": stamp.etag(), "last-modified": stamp.last_modified}
        if not_modified(request, stamp, headers["etag"]):
            return Response(status_code=304, headers=headers)
        return FileResponse(path, media_type=media_type, headers=headers, stat_result=result)

    @router.api_route("/runner/pyodide/{version}/{name}", methods=["GET", "HEAD"], include_in_schema=False)
    async def pyodide_file(version: str, name: str, request: Request) -> Response:
        media_type = PYODIDE_FILES.get(name)
        if version != PYODIDE_VERSION or media_type is None:
            return not_found()
        path = pyodide_dir / name
        result = regular(path)
        if result is None:
            return missing(path, "Pyodide is not installed: run `make pyodide` (npm ci --prefix vendor/pyodide)")
        stamp = Stamp.of(result)
        headers = {"cache-control": IMMUTABLE}
        if name in GZIPPED:
            headers["vary"] = VARY
            # A range is of the file as it is (FileResponse serves it); a whole copy may be gzipped.
            if "range" not in request.headers and accepts_gzip(request.headers.get("accept-encoding", "")):
                tag = stamp.etag(GZIP_ETAG_SUFFIX)
                if not_modified(request, stamp, tag):  # before compressing: a 304 needs no bytes
                    return Response(status_code=304, headers={**headers, "etag": tag})
                stamp, body = await cache.get(name, stamp)
                headers |= {
                    "etag": stamp.etag(GZIP_ETAG_SUFFIX),
                    "last-modified": stamp.last_modified,
                    "content-encoding": "gzip",
                    "content-length": str(len(body)),
                }
                return Response(b"" if request.method == "HEAD" else body, media_type=media_type, headers=headers)
        return as_is(request, path, result, media_type, headers)

    @router.api_route("/runner/{name}", methods=["GET", "HEAD"], include_in_schema=False)
    async def runner_file(name: str, request: Request) -> Response:
        spec = RUNNER_FILES.get(name)
        if spec is None:
            return not_found()
        path = runner_dir / name
        result = regular(path)
        if result is None:
            return missing(path, "the app's ui/runner folder is incomplete")
        headers = {"cache-control": REVALIDATE}
        if spec.policy is not None:
            host = request.headers.get("host", "")
            headers["content-security-policy"] = worker_policy(spec.policy, request.url.scheme, host)
        return as_is(request, path, result, spec.media_type, headers)

    return router


router = make_router()
