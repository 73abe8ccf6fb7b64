"""Prometheus metrics the runners export, and how the gateway connects to them.

BentoML runs every service process with the same PROMETHEUS_MULTIPROC_DIR, and each service's
/metrics aggregates that directory, so a runner's observations show on the bundle's /metrics (the
gateway's port) as well as its own.
"""

from __future__ import annotations

from prometheus_client import Histogram

# BentoML's dependency client (1.4.39) replaces its HTTP session every `max_requests` calls or
# `max_age` seconds by closing the old one, which kills the calls still in flight on it
# (ServerDisconnectedError under concurrency). A runner is local and long-lived: never rotate.
RUNNER_CONNECTION = {"max_requests": 2**31 - 1, "max_age": 10.0**9}

BATCH_SIZE = Histogram(
    "runner_batch_size",
    "Items in each batch a runner ran through its model in one forward pass.",
    ["runner"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
