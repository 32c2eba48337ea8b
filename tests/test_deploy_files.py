"""The deploy/ files fit together: the dashboard is importable and complete, and the compose
file mounts the shipped config where Prometheus and Grafana read it.

Whether the queries work is checked against a real Prometheus in test_deploy_prometheus.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.test_deploy_docker import parse_dockerfile

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "collab-pad.json"
# Grafana unit ids the dashboard may use (a typo would silently show raw numbers).
GRAFANA_UNITS = {"short", "s", "mps", "cps", "cpm", "bytes", "percentunit"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(DEPLOY / "compose.yaml")
    return loaded


def charts(board: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in board["panels"]:
        found.extend(panel.get("panels", []))
        if panel["type"] != "row":
            found.append(panel)
    return found


def test_every_panel_has_a_title_a_unit_and_queries_through_the_datasource_variable(board: dict[str, Any]) -> None:
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert ("datasource", "prometheus") == (variables["datasource"]["type"], variables["datasource"]["query"])
    via_variable = {"type": "prometheus", "uid": "${datasource}"}
    for panel in charts(board):
        assert panel["title"].strip()
        assert panel["fieldConfig"]["defaults"]["unit"] in GRAFANA_UNITS, panel["title"]
        assert via_variable == panel["datasource"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert via_variable == target["datasource"], panel["title"]
            assert target["expr"].strip() and target["refId"], panel["title"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_has_the_panels_operators_rely_on(board: dict[str, Any]) -> None:
    titles = {panel["title"] for panel in charts(board)}
    assert {
        "Active connections by transport",
        "Rooms and members",
        "Messages in per second by type",
        "Messages out per second by type",
        "Dropped sockets per second by reason",
        "Rate-limited and rejected messages per second",
        "Update apply latency",
        "Fan-out latency",
        "Store commit latency",
        "CPU",
        "Memory",
        "Open file descriptors",
    } <= titles
    latency = {panel["title"]: panel for panel in charts(board) if panel["title"].endswith("latency")}
    for title, panel in latency.items():
        quantiles = sorted(re.findall(r"histogram_quantile\((0\.\d+)", " ".join(t["expr"] for t in panel["targets"])))
        assert ["0.5", "0.95", "0.99"] == quantiles, title


def test_panels_tile_the_grid_without_overlapping(board: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_compose_builds_the_image_and_keeps_its_data_in_a_named_volume(compose: dict[str, Any]) -> None:
    dockerfile = parse_dockerfile((ROOT / "Dockerfile").read_text())
    app = compose["services"]["app"]
    assert ROOT == (DEPLOY / app["build"]["context"]).resolve()
    assert (ROOT / app["build"]["dockerfile"]).is_file()
    volume, target = app["volumes"][0].split(":")[:2]
    assert dockerfile.env["DATA_DIR"] == target
    assert volume in compose["volumes"]
    port = dockerfile.env["PORT"]
    assert any(mapping.endswith(f":{port}") for mapping in app["ports"])
    # Longer than the server's graceful shutdown (10 s), or Docker kills it half-way.
    assert int(app["stop_grace_period"].removesuffix("s")) > 10


def test_compose_mounts_the_shipped_prometheus_and_grafana_files_where_they_are_read(compose: dict[str, Any]) -> None:
    services = compose["services"]
    dockerfile = parse_dockerfile((ROOT / "Dockerfile").read_text())

    def mounts(service: str) -> dict[str, Path]:
        found = {}
        for spec in services[service]["volumes"]:
            source, target = spec.split(":")[:2]
            if source.startswith("."):
                found[target] = (DEPLOY / source).resolve()
                assert found[target].exists(), spec
        return found

    prometheus = mounts("prometheus")
    config_path = next(arg for arg in services["prometheus"]["command"] if arg.startswith("--config.file="))
    config_file = Path(config_path.removeprefix("--config.file="))
    assert DEPLOY / "prometheus" / "prometheus.yml" == prometheus[str(config_file.parent)] / config_file.name
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert "collab-pad" == job["job_name"]
    assert [f"app:{dockerfile.env['PORT']}"] == job["static_configs"][0]["targets"]
    for rule_file in config["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file()

    grafana = mounts("grafana")
    provisioning = grafana["/etc/grafana/provisioning"]
    assert DEPLOY / "grafana" / "provisioning" == provisioning
    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yaml")["datasources"]
    assert "http://prometheus:9090" == datasource["url"] and datasource["isDefault"]
    (provider,) = load_yaml(provisioning / "dashboards" / "collab-pad.yaml")["providers"]
    dashboards_dir = provider["options"]["path"]
    assert DASHBOARD == grafana[f"{dashboards_dir}/collab-pad.json"]
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert DASHBOARD == grafana[home]
