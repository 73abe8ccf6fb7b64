"""Prometheus metrics the runners export.

BentoML runs every service process with the same PROMETHEUS_MULTIPROC_DIR, and each service's
/metrics aggregates that directory, so a runner's observations show on the bundle's /metrics (the
gateway's port) as well as its own.
"""

from __future__ import annotations

from prometheus_client import Histogram

BATCH_SIZE = Histogram(
    "runner_batch_size",
    "Items in each batch a runner ran through its model in one forward pass.",
    ["runner"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
