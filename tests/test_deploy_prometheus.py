"""The shipped Prometheus config, alert rules and Grafana dashboard, against a real Prometheus.

The module starts the app and ``prometheus`` (Debian package; ``make test`` installs it) on
loopback ports, scraping every second with the shipped scrape job and rules, while a small
bounded load of WebSocket clients edits, floods and sends garbage. Every PromQL expression of
the dashboard and of the alerts is then sent to Prometheus's HTTP API: each must parse, every
dashboard panel must return data, every rule must evaluate. ``promtool`` checks the shipped
files as they are, and runs the alerts' unit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import ROOT, LiveServer, free_port, start_server

DEPLOY = ROOT / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS_YML = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST_YML = DEPLOY / "prometheus" / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "collab-pad.json"
JOB = "collab-pad"

# Metrics the dashboard already charts but the app does not export yet, and what will add them.
# A panel built only on such a metric is exempt from the "returns data" check while the metric
# is missing from /metrics, and checked like every other panel as soon as it appears.
NOT_YET_EXPORTED = {"collab_store_commit_seconds": "the durable room store"}
STORE_PANEL = "Store commit latency"
# Metrics observed only when updates cross processes (STORE=postgres with REDIS_URL): this
# module's single process never has a sample, so a quantile over them is NaN. Their panels'
# queries are checked to parse (and return data in test_browser_cluster's cluster, not here).
ONLY_SEVERAL_PROCESSES = {"collab_stream_lag_seconds": "Stream delivery lag"}

# Grafana's $__rate_interval is at least four scrape intervals; the test scrapes every second.
RATE_INTERVAL = "10s"
# Everything below polls against deadlines, never sleeps a fixed time: the machine may be busy.
DATA_DEADLINE_SECONDS = 45


def prometheus_binary(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(path).exists():
        pytest.fail(f"{name} not found: `make test` installs the Debian package prometheus (scripts/system-deps.sh)")
    return path


# The dashboard


@dataclass(frozen=True)
class Query:
    panel: str
    expr: str

    def uses(self, metric: str) -> bool:
        return re.search(rf"\b{metric}(_bucket|_sum|_count)?\b", self.expr) is not None


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # the panels of a collapsed row


def variable_values(board: dict[str, Any]) -> dict[str, str]:
    """What Grafana substitutes for each variable by default (its "All" value, or the current one)."""
    values = {"__rate_interval": RATE_INTERVAL, "datasource": "prometheus"}
    for variable in board["templating"]["list"]:
        if variable.get("includeAll"):
            values[variable["name"]] = variable["allValue"]
        elif variable["type"] == "query":
            values[variable["name"]] = variable["current"]["value"]
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def dashboard_queries() -> list[Query]:
    board = dashboard()
    values = variable_values(board)
    queries = [
        Query(panel["title"], substitute(target["expr"], values))
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        # Grafana's label_values(selector, label) becomes a query for the same series.
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
        assert match, f"variable {variable['name']}: only label_values(selector, label) is checked"
        selector, label = match.groups()
        queries.append(Query(f"variable {variable['name']}", substitute(f"group by ({label}) ({selector})", values)))
    return queries


# The running stack


@dataclass
class Stack:
    app: LiveServer
    prometheus: str
    dead_target: str

    def query(self, expr: str) -> dict[str, Any]:
        """Prometheus's answer to an instant query; a parse error answers 400 with status "error"."""
        response = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        answer: dict[str, Any] = response.json()
        return answer

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.prometheus}{path}", timeout=10)
        response.raise_for_status()
        return response.json()["data"]


def has_data(answer: dict[str, Any]) -> bool:
    """A successful query with at least one sample that is a number (histogram_quantile over an
    empty window gives NaN: a panel line that is not drawn)."""
    if answer.get("status") != "success":
        return False
    result = answer["data"]["result"]
    samples = [item["value"][1] for item in result] if isinstance(result, list) else [result[1]]
    return any(not math.isnan(float(sample)) for sample in samples)


def prometheus_config(app_port: int, dead_port: int) -> dict[str, Any]:
    """The shipped config, pointed at this machine's targets and scraping every second."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str((PROMETHEUS_YML.parent / path).resolve()) for path in config["rule_files"]]
    (job,) = (job for job in config["scrape_configs"] if job["job_name"] == JOB)
    job["scrape_timeout"] = "1s"
    # A second target where nothing listens: an instance that is down, for the alerts.
    job["static_configs"] = [{"targets": [f"127.0.0.1:{app_port}", f"127.0.0.1:{dead_port}"]}]
    return config


class Load:
    """A bounded load in a thread of its own: typists, seed listeners, a flooder, a garbage sender.

    Runs until `stop()` or ``limit`` seconds, whichever comes first.
    """

    def __init__(self, app: LiveServer, rooms: int = 2, typists: int = 3, limit: float = 120.0) -> None:
        self.app, self.rooms, self.typists, self.limit = app, rooms, typists, limit
        self.stopping = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="collab-load", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=20)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by the fixture, not lost in the thread
            self.errors.append(exc)

    async def _main(self) -> None:
        deadline = time.monotonic() + self.limit
        tasks = [
            *(self._typist(f"load-{r}", f"typist-{r}-{t}") for r in range(self.rooms) for t in range(self.typists)),
            *(self._seed_listener(f"load-{r}") for r in range(self.rooms)),
            self._flooder("load-0"),
            self._garbage("load-1"),
        ]
        running = [asyncio.create_task(task) for task in tasks]
        while not self.stopping.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            for task in running:
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def _hello(self, room: str, client_id: str) -> tuple[ClientConnection, dict[str, Any]]:
        connection = await connect(self.app.ws(room), open_timeout=10, max_size=None)
        await connection.send(
            json.dumps({"type": "hello", "client_id": client_id, "username": client_id, "version": None})
        )
        while True:
            message = json.loads(await connection.recv())
            if message["type"] == "welcome":
                return connection, message

    async def _typist(self, room: str, client_id: str) -> None:
        connection, welcome = await self._hello(room, client_id)
        version, length = welcome["version"], len(welcome["doc"])

        async def read() -> None:
            nonlocal version, length
            async for raw in connection:
                for message in item if isinstance(item := json.loads(raw), list) else [item]:
                    if message["type"] == "update":
                        # Every edit of the load inserts one character: the length follows.
                        version, length = message["version"], length + 1
                    elif message["type"] == "error":
                        raise AssertionError(f"{client_id} got {message}")

        reader = asyncio.create_task(read())
        try:
            for seq in itertools.count(1):
                # One character at the start of the document as this client last saw it; the
                # server rebases it over whatever it has not seen yet.
                changes = [[0, "x"], length] if length else [[0, "x"]]
                await connection.send(json.dumps({"type": "push", "version": version, "seq": seq, "changes": changes}))
                await connection.send(json.dumps({"type": "cursor", "version": version, "anchor": 0, "head": 0}))
                if reader.done():
                    reader.result()  # its error, or the server's close
                    return
                await asyncio.sleep(0.2)  # the load's typing pace, five edits a second: not a wait
        finally:
            reader.cancel()
            await connection.close()

    async def _seed_listener(self, room: str) -> None:
        async with connect(self.app.ws(room), open_timeout=10, max_size=None) as connection:
            await connection.send(json.dumps({"type": "join", "username": "seed"}))
            while True:
                await connection.send(json.dumps({"type": "sync_request"}))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1):
                        async for _ in connection:
                            pass

    async def _flooder(self, room: str) -> None:
        connection, _ = await self._hello(room, "flooder")
        async with connection:
            while True:
                # More at once than the test server's burst: some are refused (rate_limited).
                for _ in range(40):
                    await connection.send(json.dumps({"type": "ping"}))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1):
                        async for _ in connection:
                            pass

    async def _garbage(self, room: str) -> None:
        connection, _ = await self._hello(room, "garbage")
        async with connection:
            while True:
                await connection.send("{not json")  # answered with error invalid_json
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        async for _ in connection:
                            pass


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = prometheus_binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    app = start_server(tmp, RATE_LIMIT_BURST="20", LOG_LEVEL="WARNING")
    dead_port, prometheus_port = free_port(), free_port()
    config = tmp / "prometheus.yml"
    config.write_text(json.dumps(prometheus_config(app.port, dead_port)))  # JSON is YAML
    log_path = tmp / "prometheus.log"
    with log_path.open("wb") as log_file:
        # `timeout` bounds its life even if this process dies before the fixture's cleanup.
        process = subprocess.Popen(
            [
                "timeout",
                "180",
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                "--log.level=warn",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{prometheus_port}"
    load = Load(app)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"prometheus exited:\n{log_path.read_text()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"prometheus not ready:\n{log_path.read_text()}"
            time.sleep(0.1)
        load.start()
        yield Stack(app, url, f"127.0.0.1:{dead_port}")
    finally:
        load.stop()
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        app.stop()
    assert not load.errors, f"the load failed: {load.errors!r}\n{app.log()}"


def exported_metrics(app: LiveServer) -> set[str]:
    return set(re.findall(r"^# TYPE (\w+) ", app.metrics(), re.MULTILINE))


def wait_for_data(stack: Stack, queries: list[Query]) -> dict[Query, dict[str, Any]]:
    """Poll until every query returns data; the queries that never did, with their last answer."""
    missing = {query: {} for query in queries}
    deadline = time.monotonic() + DATA_DEADLINE_SECONDS
    while missing and time.monotonic() < deadline:
        for query in list(missing):
            answer = stack.query(query.expr)
            assert "success" == answer["status"], f"{query.panel}: {query.expr}\n{answer}"  # parses
            if has_data(answer):
                del missing[query]
            else:
                missing[query] = answer
        if missing:
            time.sleep(0.5)
    return missing


# The tests


def test_shipped_config_and_rules_pass_promtool() -> None:
    promtool = prometheus_binary("promtool")
    for args in (
        ["check", "config", str(PROMETHEUS_YML)],  # also checks the rule files it names
        ["check", "rules", str(ALERTS_YML)],
        ["test", "rules", str(ALERTS_TEST_YML)],  # each alert fires after its `for`, not before
    ):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert 0 == done.returncode, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


@pytest.mark.slow
def test_every_dashboard_panel_returns_data_from_a_live_app(stack: Stack) -> None:
    queries = dashboard_queries()
    absent = {metric for metric in NOT_YET_EXPORTED if metric not in exported_metrics(stack.app)}
    exempt = [query for query in queries if any(query.uses(metric) for metric in absent)]
    # Only the store panel may wait for its metric; it is covered by the next test.
    assert ({STORE_PANEL} if absent else set()) == {query.panel for query in exempt}
    several = [query for query in queries if any(query.uses(metric) for metric in ONLY_SEVERAL_PROCESSES)]
    assert set(ONLY_SEVERAL_PROCESSES.values()) == {query.panel for query in several}
    for query in several:
        assert "success" == stack.query(query.expr)["status"], query.expr
    exempt += several
    missing = wait_for_data(stack, [query for query in queries if query not in exempt])
    assert not missing, "panels without data:\n" + "\n".join(
        f"  {query.panel}: {query.expr}\n    -> {answer}" for query, answer in missing.items()
    )


@pytest.mark.slow
def test_store_commit_latency_panel_parses_and_returns_data_once_the_store_exports_it(stack: Stack) -> None:
    queries = [query for query in dashboard_queries() if query.panel == STORE_PANEL]
    assert 3 == len(queries)
    for query in queries:
        assert "success" == stack.query(query.expr)["status"], query.expr
    (metric,) = NOT_YET_EXPORTED
    if metric not in exported_metrics(stack.app):
        pytest.skip(f"{metric} is not exported yet ({NOT_YET_EXPORTED[metric]} adds it): the panel's queries parse")
    missing = wait_for_data(stack, queries)
    assert not missing, f"{STORE_PANEL} has no data: {missing}"


@pytest.mark.slow
def test_every_alert_rule_loads_and_evaluates(stack: Stack) -> None:
    shipped = {
        rule["alert"]: rule["expr"]
        for group in yaml.safe_load(ALERTS_YML.read_text())["groups"]
        for rule in group["rules"]
    }
    assert {
        "CollabPadDown",
        "CollabPadNotReady",
        "CollabPadDroppingClients",
        "CollabPadSlowFanout",
        "CollabPadStoreFailing",
    } == set(shipped)
    for name, expr in shipped.items():
        assert "success" == stack.query(expr)["status"], f"{name}: {expr}"
    deadline = time.monotonic() + DATA_DEADLINE_SECONDS
    while True:
        loaded = {rule["name"]: rule for group in stack.get("/api/v1/rules")["groups"] for rule in group["rules"]}
        assert set(shipped) == set(loaded)
        unhealthy = {
            name: (rule["health"], rule.get("lastError")) for name, rule in loaded.items() if rule["health"] != "ok"
        }
        if not unhealthy:
            break
        assert time.monotonic() < deadline, f"rules not evaluated cleanly: {unhealthy}"
        time.sleep(0.5)


@pytest.mark.slow
def test_an_instance_that_does_not_answer_is_not_ready_while_the_job_is_up(stack: Stack) -> None:
    deadline = time.monotonic() + DATA_DEADLINE_SECONDS
    while True:
        alerts = stack.get("/api/v1/alerts")["alerts"]
        not_ready = {
            alert["labels"]["instance"] for alert in alerts if alert["labels"]["alertname"] == "CollabPadNotReady"
        }
        down = [alert for alert in alerts if alert["labels"]["alertname"] == "CollabPadDown"]
        # CollabPadDown is pending until the first successful scrape, then must clear.
        if not_ready == {stack.dead_target} and not down:
            break
        assert time.monotonic() < deadline, f"alerts: {alerts}"
        time.sleep(0.5)
    # The live app's own readiness is up, as /readyz says.
    answer = stack.query(f'collab_ready{{job="{JOB}"}}')
    assert [("127.0.0.1:" + str(stack.app.port), "1")] == [
        (item["metric"]["instance"], item["value"][1]) for item in answer["data"]["result"]
    ]
