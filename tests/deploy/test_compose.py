"""deploy/compose.yaml: the bundle, Redis, Prometheus and Grafana wired to each other and to the
files of deploy/ (no container engine needed: the wiring is read, not run).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from settings import Settings, parse_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
BUNDLE_PORT = 3000  # BentoML's port in its image


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def binds(service: dict[str, Any]) -> dict[str, Path]:
    """Bind mounts of a service: container path -> host path (named volumes left out)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            found[target] = (COMPOSE.parent / source).resolve()
    return found


def published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port"""
    ports = {}
    for spec in service.get("ports", []):
        *_, host, container = spec.split(":")
        ports[int(container)] = int(host)
    return ports


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match.group(1))


def bundle_settings(services: dict[str, Any]) -> Settings:
    bundle = services["bundle"]
    path = bundle["environment"]["BUNDLE_CONFIG"]
    source = binds(bundle)[path]
    return parse_settings(yaml.safe_load(source.read_text()), source=str(source))


def test_the_services() -> None:
    assert set(yaml.safe_load(COMPOSE.read_text())["services"]) == {
        "bundle", "redis", "prometheus", "grafana",
    }  # fmt: skip


def test_every_mounted_file_exists(services: dict[str, Any]) -> None:
    mounted = {name: binds(service) for name, service in services.items() if binds(service)}
    # the bundle its config, Prometheus its config, Grafana its provisioning and dashboard
    assert {"bundle", "prometheus", "grafana"} <= set(mounted), mounted
    for name, mounts in mounted.items():
        for target, source in mounts.items():
            assert source.exists(), f"{name}: {source} (for {target}) does not exist"


def test_the_bundle_image_and_config(services: dict[str, Any]) -> None:
    bundle = services["bundle"]
    assert bundle["image"] == "${BUNDLE_IMAGE:-serving-bundle:latest}"
    assert "command" not in bundle and "entrypoint" not in bundle  # the image's `bentoml serve`
    assert published(bundle)[BUNDLE_PORT] == BUNDLE_PORT
    settings = bundle_settings(services)
    storage = urlsplit(settings.ratelimit.storage)
    assert storage.scheme == "redis" and storage.hostname in services, settings.ratelimit.storage
    assert storage.hostname in bundle["depends_on"]
    assert storage.port == 6379


def test_the_bundle_stops_within_its_grace(services: dict[str, Any]) -> None:
    drain = bundle_settings(services).drain
    llm = (
        drain.timeout_s
        + 2 * drain.final_grace_s
        + 5
        + bundle_settings(services).llm.shutdown_timeout_s
    )
    assert seconds(services["bundle"]["stop_grace_period"]) >= llm


def test_prometheus_scrapes_the_bundle(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    assert prometheus["network_mode"] == "service:bundle"  # localhost:3000 is the bundle
    mounts = binds(prometheus)
    assert mounts["/etc/prometheus"] == DEPLOY / "prometheus"
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in prometheus["command"])
    config_path = PurePosixPath(flags["config.file"])
    config = yaml.safe_load((mounts[str(config_path.parent)] / config_path.name).read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "bundle"]
    assert job["static_configs"][0]["targets"] == [f"localhost:{BUNDLE_PORT}"]
    port = int(flags["web.listen-address"].rsplit(":", 1)[1])
    assert port in published(services["bundle"]), "Prometheus' port is published by the bundle"


def test_grafana_is_provisioned(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    mounts = binds(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    url = urlsplit(datasource["url"])
    assert url.hostname == "bundle"  # Prometheus lives in the bundle's network namespace
    prometheus_flags = dict(
        arg.removeprefix("--").split("=", 1) for arg in services["prometheus"]["command"]
    )
    assert str(url.port) == prometheus_flags["web.listen-address"].rsplit(":", 1)[1]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "serving-bundle.yml").read_text())[
        "providers"
    ]
    dashboards = [t for t, s in mounts.items() if s == DEPLOY / "grafana" / "serving-bundle.json"]
    assert [str(PurePosixPath(t).parent) for t in dashboards] == [provider["options"]["path"]]
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboards[0]
