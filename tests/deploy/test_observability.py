"""Prometheus and Grafana (deploy/prometheus, deploy/grafana) against real tools.

- `promtool check config` / `check rules` pass, and `promtool test rules` shows every alert
  firing on the condition it names and quiet before it;
- a real Prometheus scrapes a stand-in /metrics (tests/deploy/metrics_target.py: the gateway's
  and runners' real metric objects, BentoML's own, vLLM's names from its source) and loads
  alerts.yml: every alert and every dashboard query is valid PromQL there, every dashboard query
  returns series, every rule evaluates cleanly, every metric name used is one the code exports,
  and prometheus-adapter's queries for the HPAs return series;
- the dashboard's JSON is a Grafana dashboard with one datasource variable used throughout.

Needs Debian's prometheus package (promtool, prometheus): scripts/system-deps installs it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.servers.process import ServerProcess, free_port, http_ok

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "serving-bundle.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
ADAPTER = ROOT / "deploy" / "kubernetes" / "prometheus-adapter.yaml"
RATE_INTERVAL = "1m"  # what $__rate_interval stands for against the test Prometheus
SCRAPES_BEFORE_QUERYING = 4
TARGET_LABELS = {"namespace": "serving-bundle", "service": "llm"}  # as prometheus.yml labels pods

PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2",
}  # fmt: skip


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed: run scripts/system-deps (Debian's prometheus)")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def as_query(expr: str) -> str:
    return expr.replace("$__rate_interval", RATE_INTERVAL)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (strings, label matchers, ranges,
    grouping clauses and function names left out)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text):
        word = match.group(1)
        if word.lower() not in PROMQL_KEYWORDS:
            names.add(word)
    return names


# --- promtool -------------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    out = run(tool("promtool"), "check", "config", str(CONFIG))
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_check_rules() -> None:
    out = run(tool("promtool"), "check", "rules", str(ALERTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in out.stdout


def ts(series: str, values: str) -> dict[str, str]:
    """One input series of a promtool unit test (values one minute apart)."""
    return {"series": series, "values": values}


def up(job: str, instance: str, values: str, **labels: str) -> dict[str, str]:
    extra = "".join(f', {k}="{v}"' for k, v in labels.items())
    return ts(f'up{{job="{job}", instance="{instance}"{extra}}}', values)


def buckets(metric: str, labels: str, healthy: str, slow: str) -> list[dict[str, str]]:
    """A histogram whose observations move from the le=`healthy` bucket to the le=`slow` one
    at 20 min (10 per minute throughout)."""
    return [
        ts(f'{metric}_bucket{{{labels}, le="{healthy}"}}', "0+10x20 200+0x40"),
        ts(f'{metric}_bucket{{{labels}, le="{slow}"}}', "0+10x20 210+10x40"),
        ts(f'{metric}_bucket{{{labels}, le="+Inf"}}', "0+10x20 210+10x40"),
    ]


def case(
    series: list[dict[str, str]], *alerts: dict[str, str], quiet: str = "15m", fires: str = "45m"
) -> dict[str, Any]:
    """Input series that turn bad at about 20 min; the alert is quiet at `quiet` and fires at
    `fires` with these labels (one dict per alert)."""
    return {"series": series, "alerts": list(alerts), "quiet": quiet, "fires": fires}


TTFB = "gateway_time_to_first_byte_seconds_bucket"
REQUESTS = "gateway_requests_total"
LLM_POD = {"namespace": "serving-bundle", "service": "llm"}
ALERT_CASES: dict[str, dict[str, Any]] = {
    "LLMTimeToFirstTokenP99High": case(
        buckets(
            "vllm:time_to_first_token_seconds", 'model_name="demo-llm", engine="0"', "0.5", "5"
        ),
        {"severity": "warning", "model_name": "demo-llm"},
    ),
    "GatewayTimeToFirstByteP99High": case(
        [
            *buckets("gateway_time_to_first_byte_seconds", 'backend="llm"', "0.5", "10"),
            # slow by nature, and not an LLM: left out of this alert
            ts(f'{TTFB}{{backend="speech", le="0.5"}}', "0x60"),
            ts(f'{TTFB}{{backend="speech", le="10"}}', "0+10x60"),
            ts(f'{TTFB}{{backend="speech", le="+Inf"}}', "0+10x60"),
        ],
        {"severity": "warning", "backend": "llm"},
    ),
    "GatewayErrorRateHigh": case(
        [
            ts(f'{REQUESTS}{{key="team-a", status="2xx", backend="llm"}}', "0+60x60"),
            ts(f'{REQUESTS}{{key="team-a", status="5xx", backend="llm"}}', "0x20 0+12x40"),
            ts(f'{REQUESTS}{{key="team-a", status="2xx", backend="vision"}}', "0+60x60"),
            ts(f'{REQUESTS}{{key="team-a", status="5xx", backend="vision"}}', "0x60"),
        ],
        {"severity": "critical", "backend": "llm"},
    ),
    "CircuitBreakerOpen": case(
        [
            ts('gateway_breaker_state{backend="llm"}', "0x20 2x40"),
            ts('gateway_breaker_state{backend="vision"}', "0x20 1x40"),  # half-open only
        ],
        {"severity": "critical", "backend": "llm"},
    ),
    "AdmissionQueueGrowing": case(
        [
            ts('gateway_admission_queued{backend="llm"}', "0x20 0+2x40"),
            ts('gateway_admission_queued{backend="vision"}', "5x60"),  # steady, short
        ],
        {"severity": "warning", "backend": "llm"},
    ),
    "AdmissionRejecting": case(
        [
            ts(
                'gateway_admission_rejected_total{backend="llm", reason="queue_full"}',
                "0x20 0+30x40",
            )
        ],
        {"severity": "warning", "backend": "llm", "reason": "queue_full"},
    ),
    "LLMEngineDown": case(
        [
            up("llm", "10.0.0.7:3000", "1x20 0x40", **LLM_POD),
            up("llm", "10.0.0.8:3000", "1x60", **LLM_POD),
        ],
        {"severity": "critical", "job": "llm", "instance": "10.0.0.7:3000", **LLM_POD},
    ),
    "LLMEngineMetricsAbsent": case(
        [ts('vllm:num_requests_running{model_name="demo-llm", engine="0"}', "1x20")],
        {"severity": "critical"},
    ),
    "GatewayDown": case(
        [up("gateway", "10.0.0.5:3000", "1x20 0x40"), up("bundle", "localhost:3000", "1x60")],
        {"severity": "critical", "job": "gateway", "instance": "10.0.0.5:3000"},
    ),
    "RateLimitRejectionsSpiking": case(
        [
            # a key limited now and then for an hour, then twenty times as often
            ts('gateway_rate_limited_total{key="team-a"}', "0+6x70 540+120x29"),
            # a key with no history that starts being limited hard
            ts('gateway_rate_limited_total{key="team-b"}', "_x71 0+120x29"),
        ],
        {"severity": "warning", "key": "team-a"},
        {"severity": "warning", "key": "team-b"},
        quiet="60m",
        fires="85m",
    ),
    "RateLimitStorageFailing": case(
        [ts("gateway_ratelimit_storage_errors_total", "0x20 0+10x40")],
        {"severity": "warning"},
    ),
}


def expand(template: str, labels: dict[str, str]) -> str:
    """An annotation as Prometheus renders it, for the label-only templates alerts.yml uses."""
    text = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels[m.group(1)], template)
    assert "{{" not in text, f"unsupported template in {template!r}"
    return text


def test_every_alert_fires_on_its_condition(tmp_path: Path) -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert set(ALERT_CASES) == set(rules), "an alert without a case here, or a case without one"
    tests = []
    for name, case in ALERT_CASES.items():
        rule = rules[name]
        expected = [
            {
                "exp_labels": labels,
                "exp_annotations": {k: expand(v, labels) for k, v in rule["annotations"].items()},
            }
            for labels in case["alerts"]
        ]
        assert all(labels.items() >= rule["labels"].items() for labels in case["alerts"]), name
        tests.append({
            "name": name,
            "interval": "1m",
            "input_series": case["series"],
            "alert_rule_test": [
                {"eval_time": case["quiet"], "alertname": name, "exp_alerts": []},
                {"eval_time": case["fires"], "alertname": name, "exp_alerts": expected},
            ],
        })  # fmt: skip
    unit = tmp_path / "alerts_test.yml"
    unit.write_text(
        yaml.safe_dump({"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": tests})
    )
    out = run(tool("promtool"), "test", "rules", str(unit))
    assert out.returncode == 0, out.stdout + out.stderr


# --- a real Prometheus ----------------------------------------------------------------------


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}\n{body}"
        return dict(body["data"])

    def rules(self) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.url}/api/v1/rules", timeout=10).json()
        return [rule for group in body["data"]["groups"] for rule in group["rules"]]

    def metric_names(self) -> set[str]:
        body = httpx.get(f"{self.url}/api/v1/label/__name__/values", timeout=10).json()
        return set(body["data"])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    target_port, prometheus_port = free_port(), free_port()
    target = ServerProcess(
        "metrics-target",
        [sys.executable, "-m", "tests.deploy.metrics_target", "--port", str(target_port)],
        ready=http_ok(f"http://127.0.0.1:{target_port}/metrics"),
        cwd=ROOT,
        timeout_s=60,
    )
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{
            "job_name": "bundle",
            "static_configs": [{"targets": [f"127.0.0.1:{target_port}"], "labels": TARGET_LABELS}],
        }],
    }  # fmt: skip
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{prometheus_port}"
    server = ServerProcess(
        "prometheus",
        [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"],
        ready=http_ok(f"{url}/-/ready"),
        cwd=work,
        timeout_s=60,
    )  # fmt: skip
    target.start()
    try:
        server.start()
        try:
            prom = Prometheus(url)
            wait_for_data(prom)
            yield prom
        finally:
            server.stop()
    finally:
        target.stop()


def wait_for_data(prom: Prometheus, timeout_s: float = 60) -> None:
    """Until the target has been scraped a few times and every rule evaluated once."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = prom.query('count_over_time(up{job="bundle"}[1m])')["result"]
        scraped = result and float(result[0]["value"][1]) >= SCRAPES_BEFORE_QUERYING
        rules = prom.rules()
        evaluated = rules and all(not r["lastEvaluation"].startswith("0001") for r in rules)
        if scraped and evaluated:
            assert float(prom.query('up{job="bundle"}')["result"][0]["value"][1]) == 1
            return
        time.sleep(0.5)
    raise TimeoutError("Prometheus did not scrape the target and evaluate the rules in time")


@pytest.mark.parametrize(
    ("panel", "expr"),
    dashboard_targets(),
    ids=[f"{title}[{n}]" for n, (title, _) in enumerate(dashboard_targets())],
)
def test_dashboard_query_returns_series(prometheus: Prometheus, panel: str, expr: str) -> None:
    data = prometheus.query(as_query(expr))
    assert data["resultType"] == "vector"
    assert data["result"], f"{panel}: no series for {expr}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_expression_is_valid_promql(prometheus: Prometheus, rule: dict[str, Any]) -> None:
    data = prometheus.query(rule["expr"])
    assert data["resultType"] == "vector"


def test_rules_evaluate_cleanly(prometheus: Prometheus) -> None:
    rules = prometheus.rules()
    assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert broken == {}


def test_every_metric_used_is_one_the_code_exports(prometheus: Prometheus) -> None:
    exported = prometheus.metric_names()
    used = {
        name: where
        for where, expr in [*dashboard_targets(), *((r["alert"], r["expr"]) for r in alert_rules())]
        for name in metric_names(expr)
    }
    missing = {name: where for name, where in used.items() if name not in exported}
    assert missing == {}, f"used but exported by nothing: {missing}"
    # the names the brief and the README promise, spelt as Prometheus stores them
    assert {
        "gateway_requests_total", "gateway_time_to_first_byte_seconds_bucket",
        "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
        "vllm:generation_tokens_total", "vllm:num_requests_waiting", "runner_batch_size_bucket",
        "gateway_breaker_state", "gateway_cache_lookups_total", "gateway_rate_limited_total",
    } <= set(used)  # fmt: skip


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, model_name) (rate(vllm:x_bucket{a="b c"}[5m])))'
        " > 2 and on (k) sum(rate(y_total[1h] offset 15m)) or absent(z) unless w == bool 1"
    )
    assert metric_names(expr) == {"vllm:x_bucket", "y_total", "z", "w"}


def test_adapter_queries_return_series(prometheus: Prometheus) -> None:
    """prometheus-adapter's rules, rendered as it renders them for an Object metric of the
    Service (what the llm, vision and speech HPAs read)."""
    rules = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    assert rules
    for rule in rules:
        series = rule["seriesQuery"].split("{", 1)[0]
        matchers = ",".join(f'{k}="{v}"' for k, v in TARGET_LABELS.items())
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", matchers)
            .replace("<<.GroupBy>>", "service")
        )
        assert "<<" not in query, query
        assert prometheus.query(rule["seriesQuery"])["result"], rule["seriesQuery"]
        (sample,) = prometheus.query(query)["result"]
        assert sample["metric"] == {"service": TARGET_LABELS["service"]}


# --- the dashboard --------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    dash = dashboard()
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    (variable,) = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    datasource = {"type": "prometheus", "uid": f"${{{variable['name']}}}"}
    ids = [panel["id"] for panel in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == datasource, panel["title"]
        assert panel["targets"], f"{panel['title']}: no queries"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == datasource, panel["title"]
    # the provisioned data source is the variable's default
    (provisioned,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert provisioned["type"] == "prometheus"
    assert variable["current"]["value"] == provisioned["uid"]


def test_dashboard_covers_what_operators_watch() -> None:
    exprs = " ".join(expr for _, expr in dashboard_targets())
    for needle in (
        "vllm:time_to_first_token_seconds_bucket", "gateway_time_to_first_byte_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket", "vllm:generation_tokens_total",
        "gateway_requests_total", "gateway_admission_queued", "gateway_requests_in_flight",
        "runner_batch_size_bucket", "gateway_breaker_state", 'result="hit"',
        "gateway_rate_limited_total", "gateway_endpoint_requests_total",
        "gateway_endpoint_inflight", "gateway_pick_total",
    ):  # fmt: skip
        assert needle in exprs, needle
    for quantile in ("histogram_quantile(0.5,", "histogram_quantile(0.99,"):
        assert quantile in exprs
