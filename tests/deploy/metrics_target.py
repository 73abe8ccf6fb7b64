"""A stand-in for the bundle's /metrics, for a real Prometheus to scrape in the observability
tests: the metrics the dashboard and the alerts query, with their real names, types and labels.

- the gateway's and the runners' own metrics: the real prometheus_client objects, registered by
  importing the gateway and runner modules (looked up by metric name, so a renamed or dropped
  metric fails here);
- BentoML's bentoml_service_* metrics: made by BentoML's own traffic middleware;
- vLLM's vllm:* metrics: names and types read from the installed vLLM's
  vllm/v1/metrics/loggers.py (without importing vLLM), with its model_name/engine labels.

Every scrape moves the values a little (counters grow, histograms observe), so rates are
non-zero. Run as a server (its own process: it fills the default registry)::

    python -m tests.deploy.metrics_target --port 18080
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import itertools
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

GATEWAY_MODULES = (
    "gateway.scope.pipeline",
    "gateway.scope.admission",
    "gateway.routing.metrics",
    "gateway.scope.cache",
    "gateway.scope.limiter",
    "runners.metrics",
)
BENTOML_NAMESPACE = "bentoml_service"  # BentoML's default metrics namespace (api_server.metrics)
VLLM_KINDS = {"_gauge_cls": "gauge", "_counter_cls": "counter", "_histogram_cls": "histogram"}
VLLM_LABELS = ("model_name", "engine")
MODEL = "demo-llm"
BACKENDS = ("llm", "vision", "speech", "embed")
LLM_ENDPOINTS = ("http://10.0.0.11:8100", "http://10.0.0.12:8100")  # llm pods by llm-engine
KEYS = ("team-a", "team-b")


def vllm_loggers() -> Path:
    spec = importlib.util.find_spec("vllm")  # locates the package without importing it
    assert spec is not None and spec.submodule_search_locations, "vLLM is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "v1" / "metrics" / "loggers.py"


def vllm_metrics() -> dict[str, str]:
    """vLLM's Prometheus metrics with the engine's standard labels: {name: kind}."""
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(vllm_loggers().read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        kind = VLLM_KINDS.get(node.func.attr)
        keywords = {kw.arg: kw.value for kw in node.keywords}
        name = keywords.get("name")
        labels = keywords.get("labelnames")
        if kind is None or not isinstance(name, ast.Constant):
            continue
        if isinstance(labels, ast.Name) and labels.id == "labelnames":  # [model_name, engine]
            found[str(name.value)] = kind
    return found


def exposition_name(name: str, kind: str) -> str:
    """The name a metric's samples carry on /metrics (counters get `_total`)."""
    return f"{name}_total" if kind == "counter" else name


class Target:
    """The registry this process serves, and what each scrape does to it."""

    def __init__(self) -> None:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # a plain, single-process registry
        import prometheus_client

        for module in GATEWAY_MODULES:
            importlib.import_module(module)
        self.prometheus = prometheus_client
        self.registry = prometheus_client.REGISTRY
        self.scrapes = itertools.count()
        self.lock = threading.Lock()
        self.bentoml = self._bentoml_metrics()
        self.vllm = {
            name: self._vllm_metric(name, kind) for name, kind in sorted(vllm_metrics().items())
        }

    def metric(self, name: str) -> Any:
        """A metric the gateway or runner modules registered, by its name."""
        collector = self.registry._names_to_collectors.get(name)
        assert collector is not None, f"{name} is not registered by {GATEWAY_MODULES}"
        return collector

    def _bentoml_metrics(self) -> Any:
        from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

        middleware = RunnerTrafficMetricsMiddleware(None, namespace=BENTOML_NAMESPACE)  # type: ignore[arg-type]
        middleware._setup()  # what its first request does
        return middleware

    def _vllm_metric(self, name: str, kind: str) -> Any:
        cls = {"gauge": "Gauge", "counter": "Counter", "histogram": "Histogram"}[kind]
        metric = getattr(self.prometheus, cls)(name, f"vLLM {name}", list(VLLM_LABELS))
        return metric.labels(model_name=MODEL, engine="0")

    def scrape(self) -> bytes:
        with self.lock:
            self._move(next(self.scrapes))
            return bytes(self.prometheus.generate_latest(self.registry))

    def _move(self, n: int) -> None:
        m = self.metric
        for backend in BACKENDS:
            for key in KEYS:
                m("gateway_requests").labels(key=key, status="2xx", backend=backend).inc(5)
                m("gateway_requests").labels(key=key, status="4xx", backend=backend).inc(n % 2)
                m("gateway_requests").labels(key=key, status="5xx", backend=backend).inc(n % 3 == 0)
            m("gateway_request_duration_seconds").labels(backend=backend).observe(0.2 + n % 5 / 10)
            m("gateway_time_to_first_byte_seconds").labels(backend=backend).observe(
                0.05 + n % 4 / 20
            )
            m("gateway_admission_inflight").labels(backend=backend).set(3 + n % 4)
            m("gateway_admission_queued").labels(backend=backend).set(n % 3)
            for reason in ("queue_full", "queue_timeout"):
                m("gateway_admission_rejected").labels(backend=backend, reason=reason).inc(n % 2)
            m("gateway_breaker_state").labels(backend=backend).set(0)
            m("gateway_backend_calls").labels(backend=backend, outcome="ok").inc(5)
            m("gateway_backend_calls").labels(backend=backend, outcome="error").inc(n % 2)
            m("gateway_breaker_transitions").labels(backend, "closed", "open").inc(n % 7 == 0)
            m("gateway_backend_retries").labels(backend=backend).inc(n % 2)
        for i, endpoint in enumerate(LLM_ENDPOINTS):
            m("gateway_endpoint_requests").labels(backend="llm", endpoint=endpoint).inc(3 + i)
            m("gateway_endpoint_inflight").labels(backend="llm", endpoint=endpoint).set(i + n % 3)
        for reason in ("prefix", "least_load", "retry"):
            m("gateway_pick").labels(backend="llm", reason=reason).inc(1 + n % 2)
        m("gateway_requests_in_flight").set(4 + n % 3)
        m("gateway_fallbacks").labels(model="llama-70b", fallback=MODEL).inc(n % 2)
        for key in KEYS:
            m("gateway_rate_limited").labels(key=key).inc(n % 2)
        m("gateway_ratelimit_storage_errors").inc(n % 5 == 0)
        for model in ("demo-resnet", MODEL):
            m("gateway_cache_lookups").labels(model=model, result="hit").inc(1)
            m("gateway_cache_lookups").labels(model=model, result="miss").inc(2)
        for runner, size in (("vision", 16), ("speech", 4), ("embed", 24)):
            m("runner_batch_size").labels(runner=runner).observe(size + n % 3)
        for runner in ("gateway", *BACKENDS):
            labels = {"endpoint": f"/{runner}", "service_name": "serving-bundle",
                      "service_version": "test", "runner_name": runner}  # fmt: skip
            self.bentoml.metrics_request_in_progress.labels(**labels).set(2 + n % 3)
            self.bentoml.metrics_request_total.labels(**labels, http_response_code=200).inc(3)
            self.bentoml.metrics_request_duration.labels(**labels, http_response_code=200).observe(
                0.1
            )
        for name, metric in self.vllm.items():
            if name.endswith("_perc"):
                metric.set(0.25 + n % 4 / 10)
            elif isinstance(metric, self.prometheus.Gauge):
                metric.set(1 + n % 4)
            elif isinstance(metric, self.prometheus.Counter):
                metric.inc(40 + n % 10)
            else:
                metric.observe(0.02 + n % 5 / 50)


def serve(port: int) -> None:
    target = Target()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/metrics":
                self.send_error(404)
                return
            body = target.scrape()
            self.send_response(200)
            self.send_header("Content-Type", target.prometheus.CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"serving /metrics on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    serve(parser.parse_args().port)
