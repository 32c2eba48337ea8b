"""``/runner/...`` (api/runner_files.py): Pyodide and the workers, served by the app itself with
the right types, cache headers and the workers' own Content-Security-Policy; nothing else. The
large runtime files go gzipped to clients that take it, compressed once."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from structlog.testing import capture_logs

from api import runner_files
from api.edge import CONTENT_SECURITY_POLICY
from api.runner_files import (
    GZIP_LEVEL,
    GZIPPED,
    IMMUTABLE,
    JS_WORKER_CSP,
    PYODIDE_DIR,
    PYODIDE_FILES,
    PYODIDE_PATH,
    PYODIDE_VERSION,
    PYTHON_WORKER_CSP,
    RUNNER_FILES,
    GzipCache,
    Stamp,
    accepts_gzip,
    worker_policy,
)
from app import app

LOCAL = "http://127.0.0.1"  # the default Host rule answers loopback names only


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    if not (PYODIDE_DIR / "pyodide.asm.wasm").is_file():
        pytest.fail(f"{PYODIDE_DIR} is missing: run `make pyodide`")
    with TestClient(app, base_url=LOCAL) as test_client:
        yield test_client


def test_the_version_in_the_path_is_the_installed_package() -> None:
    installed = json.loads((PYODIDE_DIR / "package.json").read_text())["version"]
    pinned = json.loads((Path(runner_files.ROOT) / "vendor/pyodide/package.json").read_text())
    assert PYODIDE_VERSION == installed == pinned["dependencies"]["pyodide"]
    assert f"/runner/pyodide/{PYODIDE_VERSION}/" == PYODIDE_PATH


@pytest.mark.parametrize("name", sorted(PYODIDE_FILES))
def test_each_pyodide_file_is_served_whole_cached_for_a_year_with_its_type(client: TestClient, name: str) -> None:
    response = client.get(f"{PYODIDE_PATH}{name}")
    assert 200 == response.status_code
    assert (PYODIDE_DIR / name).read_bytes() == response.content
    assert IMMUTABLE == response.headers["cache-control"]
    assert PYODIDE_FILES[name] == response.headers["content-type"]
    assert "nosniff" == response.headers["x-content-type-options"]


def test_the_webassembly_is_application_wasm_for_streaming_compilation(client: TestClient) -> None:
    assert "application/wasm" == client.get(f"{PYODIDE_PATH}pyodide.asm.wasm").headers["content-type"]


@pytest.mark.parametrize(
    ("name", "policy"),
    [("worker_python.js", PYTHON_WORKER_CSP), ("worker_js.js", JS_WORKER_CSP)],
)
def test_each_worker_has_its_own_strict_policy_and_a_short_cache(client: TestClient, name: str, policy: str) -> None:
    response = client.get(f"/runner/{name}")
    policy = worker_policy(policy, "http", httpx.URL(LOCAL).netloc.decode())
    # Sources scoped to the runner's folder: not 'self', which is the whole origin (the API).
    assert "'self'" not in policy and f"{LOCAL.rstrip('/')}/runner/" in policy
    assert 200 == response.status_code
    assert response.headers["content-type"].startswith("text/javascript")
    # The page's policy (added by the edge to responses without one) does not replace it.
    assert policy == response.headers["content-security-policy"]
    assert "connect-src 'self'" not in JS_WORKER_CSP and "'unsafe-eval'" not in PYTHON_WORKER_CSP
    assert "no-cache" == response.headers["cache-control"]
    again = client.get(f"/runner/{name}", headers={"if-none-match": response.headers["etag"]})
    assert (304, b"") == (again.status_code, again.content)
    assert policy == again.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("harness.js", "text/javascript"),
        ("harness.py", "text/x-python"),
        ("sandbox.js", "text/javascript"),
        ("python_runner.js", "text/javascript"),
    ],
)
def test_the_harness_and_the_workers_modules_are_served_under_the_pages_policy(
    client: TestClient, name: str, kind: str
) -> None:
    response = client.get(f"/runner/{name}")
    assert 200 == response.status_code
    assert response.headers["content-type"].startswith(kind)
    assert CONTENT_SECURITY_POLICY == response.headers["content-security-policy"]
    assert "no-cache" == response.headers["cache-control"]


@pytest.mark.parametrize(
    "path",
    [
        f"{PYODIDE_PATH}pyodide.js",  # in the package, not a runtime file
        f"{PYODIDE_PATH}pyodide.mjs.map",
        f"{PYODIDE_PATH}package.json",
        f"{PYODIDE_PATH}console.html",
        "/runner/pyodide/0.27.0/pyodide.mjs",  # another version
        "/runner/pyodide/latest/pyodide.asm.wasm",
        "/runner/collab_runs.js",
        "/runner/__init__.py",
        "/runner/worker_python.js.map",
    ],
)
def test_nothing_outside_the_list_is_served_and_the_404_is_not_cached(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert (404, "no-store") == (response.status_code, response.headers.get("cache-control"))


@pytest.mark.parametrize(
    ("path", "secret"),
    [
        (f"{PYODIDE_PATH}..%2F..%2Fpackage.json", b'"name": "collab-pad-pyodide"'),
        (f"{PYODIDE_PATH}..%2Fpackage.json", b'"name": "pyodide"'),
        (f"{PYODIDE_PATH}%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2Fapp.py", b"def create_app"),
        ("/runner/..%2F..%2Fapp.py", b"def create_app"),
        ("/runner/%2E%2E%2Fapi%2Frunner_files.py", b"def make_router"),
        ("/runner/..%5Capi%5Crunner_files.py", b"def make_router"),
        ("/runner/pyodide/..%2F..%2F..%2Fpyproject.toml/pyodide.mjs", b"[project]"),
        ("/runner/pyodide/314.0.8%2F..%2F..%2F..%2F..%2F..%2F..%2Fapp.py/pyodide.mjs", b"def create_app"),
    ],
)
def test_path_traversal_is_refused(client: TestClient, path: str, secret: bytes) -> None:
    response = client.get(path)
    assert response.status_code in (400, 404)
    assert secret not in response.content


def test_a_missing_pyodide_folder_is_a_404_with_a_clear_log_once(tmp_path: Path) -> None:
    application = FastAPI()
    application.include_router(runner_files.make_router(tmp_path / "missing", runner_files.RUNNER_DIR))
    with TestClient(application) as test_client, capture_logs() as logs:
        first = test_client.get(f"{PYODIDE_PATH}pyodide.asm.wasm")
        second = test_client.get(f"{PYODIDE_PATH}pyodide.asm.wasm")
    assert (404, 404) == (first.status_code, second.status_code)
    assert "no-store" == first.headers["cache-control"]  # served once installed, without a stale 404
    missing = [entry for entry in logs if entry["event"] == "runner_file_missing"]
    assert 1 == len(missing)
    assert "make pyodide" in missing[0]["hint"] and "missing" in missing[0]["path"]
    assert "error" == missing[0]["log_level"]


def test_every_listed_runner_file_exists() -> None:
    for name in RUNNER_FILES:
        assert (runner_files.RUNNER_DIR / name).is_file(), name


def test_every_module_a_worker_imports_is_served() -> None:
    imported = set()
    for name in ("worker_python.js", "worker_js.js"):
        source = (runner_files.RUNNER_DIR / name).read_text()
        imported |= set(re.findall(r'^import .* from "\./([\w.]+)";$', source, re.MULTILINE))
    assert {"sandbox.js", "python_runner.js"} == imported
    assert imported <= set(RUNNER_FILES)


# Compression


def raw(client: TestClient, path: str, **headers: str) -> tuple[httpx.Response, bytes]:
    """The response and its body as sent (httpx would undo the gzip)."""
    with client.stream("GET", path, headers=headers) as response:
        return response, b"".join(response.iter_raw())


@pytest.mark.parametrize("name", sorted(GZIPPED))
def test_a_compressible_file_is_sent_gzipped_to_a_client_that_takes_gzip(client: TestClient, name: str) -> None:
    response, body = raw(client, f"{PYODIDE_PATH}{name}", **{"accept-encoding": "gzip, deflate, br"})
    plain = client.get(f"{PYODIDE_PATH}{name}", headers={"accept-encoding": "identity"})
    assert (200, "gzip", "Accept-Encoding") == (
        response.status_code,
        response.headers["content-encoding"],
        response.headers["vary"],
    )
    assert (PYODIDE_DIR / name).read_bytes() == gzip.decompress(body)
    assert str(len(body)) == response.headers["content-length"]
    assert (IMMUTABLE, PYODIDE_FILES[name]) == (response.headers["cache-control"], response.headers["content-type"])
    assert response.headers["etag"] != plain.headers["etag"]  # another representation, another validator
    assert response.headers["last-modified"] == plain.headers["last-modified"]


@pytest.mark.parametrize("accept_encoding", ["identity", "", "deflate, br", "gzip;q=0", "*;q=0", "gzip;q=0, *"])
def test_a_client_that_does_not_take_gzip_gets_the_file_as_it_is(client: TestClient, accept_encoding: str) -> None:
    name = "pyodide.asm.mjs"
    response, body = raw(client, f"{PYODIDE_PATH}{name}", **{"accept-encoding": accept_encoding})
    assert (PYODIDE_DIR / name).read_bytes() == body
    assert (None, "Accept-Encoding", str(len(body))) == (
        response.headers.get("content-encoding"),
        response.headers["vary"],
        response.headers["content-length"],
    )


def test_the_standard_library_zip_is_sent_as_it_is_it_is_compressed_already(client: TestClient) -> None:
    response, body = raw(client, f"{PYODIDE_PATH}python_stdlib.zip", **{"accept-encoding": "gzip"})
    assert ((PYODIDE_DIR / "python_stdlib.zip").read_bytes(), None, None) == (
        body,
        response.headers.get("content-encoding"),
        response.headers.get("vary"),
    )


def test_what_a_page_loads_to_run_python_is_less_than_half_as_big_gzipped(client: TestClient) -> None:
    sizes = {
        encoding: sum(
            len(raw(client, f"{PYODIDE_PATH}{name}", **{"accept-encoding": encoding})[1]) for name in PYODIDE_FILES
        )
        for encoding in ("identity", "gzip")
    }
    assert sizes["gzip"] < sizes["identity"] / 2, sizes


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
def test_a_current_copy_gets_a_304_by_etag_or_date_in_either_encoding(client: TestClient, encoding: str) -> None:
    path = f"{PYODIDE_PATH}pyodide.mjs"
    first = client.get(path, headers={"accept-encoding": encoding})
    for condition in ({"if-none-match": first.headers["etag"]}, {"if-modified-since": first.headers["last-modified"]}):
        again = client.get(path, headers={"accept-encoding": encoding, **condition})
        assert (304, b"", first.headers["etag"], "Accept-Encoding") == (
            again.status_code,
            again.content,
            again.headers["etag"],
            again.headers["vary"],
        )
    other = "identity" if encoding == "gzip" else "gzip"
    stale = client.get(path, headers={"accept-encoding": other, "if-none-match": first.headers["etag"]})
    assert 200 == stale.status_code  # the other encoding's validator does not match
    older = client.get(
        path, headers={"accept-encoding": encoding, "if-modified-since": "Thu, 01 Jan 1970 00:00:00 GMT"}
    )
    assert 200 == older.status_code


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
def test_head_gets_the_headers_of_get_and_no_body(client: TestClient, encoding: str) -> None:
    path = f"{PYODIDE_PATH}pyodide.asm.mjs"
    get, body = raw(client, path, **{"accept-encoding": encoding})
    head = client.head(path, headers={"accept-encoding": encoding})
    assert (200, b"") == (head.status_code, head.content)
    for header in ("content-length", "content-type", "etag", "last-modified", "vary", "cache-control"):
        assert get.headers.get(header) == head.headers.get(header), header
    assert get.headers.get("content-encoding") == head.headers.get("content-encoding")
    assert str(len(body)) == head.headers["content-length"]


def test_a_range_is_of_the_file_as_it_is(client: TestClient) -> None:
    response, body = raw(client, f"{PYODIDE_PATH}pyodide.mjs", **{"accept-encoding": "gzip", "range": "bytes=0-9"})
    assert (206, (PYODIDE_DIR / "pyodide.mjs").read_bytes()[:10], None, "Accept-Encoding") == (
        response.status_code,
        body,
        response.headers.get("content-encoding"),
        response.headers["vary"],
    )


@pytest.mark.parametrize(
    ("header", "takes"),
    [
        ("gzip", True),
        ("GZip", True),
        ("deflate, gzip;q=0.5", True),
        ("x-gzip", True),
        ("*", True),
        ("br;q=1, *;q=0.1", True),
        ("", False),
        ("identity", False),
        ("gzip;q=0", False),
        ("gzip; q=0.0", False),
        ("gzip;q=zero", False),
        ("gzip;q=0, *", False),  # named with 0: the star does not bring it back
        ("*;q=0", False),
        ("gzipped", False),
    ],
)
def test_accept_encoding_is_read_as_rfc_9110_says(header: str, takes: bool) -> None:
    assert takes == accepts_gzip(header)


class GatedCache(GzipCache):
    """Compresses only once ``expected`` requests have asked for a copy, each in its thread."""

    def __init__(self, folder: Path, expected: int) -> None:
        super().__init__(folder, GZIPPED)
        self.expected = expected
        self.asked = 0
        self.everyone_asked = threading.Event()
        self.threads: set[int] = set()

    async def get(self, name: str, stamp: Stamp) -> tuple[Stamp, bytes]:
        self.asked += 1
        if self.asked == self.expected:
            self.everyone_asked.set()
        return await super().get(name, stamp)

    def _compress(self, name: str, stamp: Stamp) -> tuple[Stamp, bytes]:
        self.threads.add(threading.get_ident())
        assert self.everyone_asked.wait(10)
        return super()._compress(name, stamp)


def pyodide_app(folder: Path, cache: GzipCache) -> FastAPI:
    application = FastAPI()
    application.include_router(runner_files.make_router(folder, runner_files.RUNNER_DIR, cache))
    return application


async def test_concurrent_first_requests_compress_the_file_once_off_the_event_loop(tmp_path: Path) -> None:
    content = b"print('hello')\n" * 50_000
    (tmp_path / "pyodide.asm.wasm").write_bytes(content)
    cache = GatedCache(tmp_path, expected=6)
    transport = httpx.ASGITransport(app=pyodide_app(tmp_path, cache))
    async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as http:
        url = f"{PYODIDE_PATH}pyodide.asm.wasm"
        responses = await asyncio.gather(*(http.get(url, headers={"accept-encoding": "gzip"}) for _ in range(6)))
        assert [content] * 6 == [response.content for response in responses]
        assert (1, 6) == (cache.compressions, cache.asked)
        assert threading.get_ident() not in cache.threads
        await http.get(url, headers={"accept-encoding": "gzip"})  # from memory now
        assert (1, len(gzip.compress(content, GZIP_LEVEL, mtime=0))) == (cache.compressions, cache.size)


async def test_a_file_changed_on_disk_is_compressed_again(tmp_path: Path) -> None:
    path = tmp_path / "pyodide-lock.json"
    path.write_text('{"version": 1}')
    cache = GzipCache(tmp_path, GZIPPED)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=pyodide_app(tmp_path, cache)), base_url=LOCAL
    ) as http:
        url = f"{PYODIDE_PATH}pyodide-lock.json"
        first = await http.get(url, headers={"accept-encoding": "gzip"})
        path.write_text('{"version": 22}')
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
        second = await http.get(url, headers={"accept-encoding": "gzip"})
    assert ('{"version": 1}', '{"version": 22}', 2) == (first.text, second.text, cache.compressions)
    assert first.headers["etag"] != second.headers["etag"]


def test_the_workers_answer_head_and_a_304_by_date(client: TestClient) -> None:
    first = client.get("/runner/worker_python.js")
    head = client.head("/runner/worker_python.js")
    again = client.get("/runner/worker_python.js", headers={"if-modified-since": first.headers["last-modified"]})
    assert (200, b"", first.headers["content-length"]) == (
        head.status_code,
        head.content,
        head.headers["content-length"],
    )
    policy = worker_policy(PYTHON_WORKER_CSP, "http", httpx.URL(LOCAL).netloc.decode())
    assert (304, policy) == (again.status_code, again.headers["content-security-policy"])


@pytest.mark.parametrize(
    ("scheme", "host", "source"),
    [
        ("http", "127.0.0.1:8080", "http://127.0.0.1:8080/runner/"),
        ("https", "pad.example.org", "https://pad.example.org/runner/"),
        ("http", "[::1]:8080", "http://[::1]:8080/runner/"),
        ("http", "evil.example; script-src *", "'none'"),
        ("http", "a b", "'none'"),
        ("ftp", "pad.example.org", "'none'"),
    ],
)
def test_a_workers_sources_are_the_runner_folder_of_the_host_asked_or_none(scheme: str, host: str, source: str) -> None:
    policy = worker_policy(JS_WORKER_CSP, scheme, host)
    assert f"default-src 'none'; script-src {source} 'unsafe-eval'" == policy
