"""Reading the runners' batch-size histogram from the bundle's /metrics."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def batch_counts(bundle_url: str, runner: str) -> tuple[float, float]:
    """(all batches, batches of more than one item) the runner has run so far."""
    text = httpx.get(f"{bundle_url}/metrics", timeout=10).text
    total = single = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "runner_batch_size":
            continue
        for sample in family.samples:
            if sample.labels.get("runner") != runner:
                continue
            if sample.name == "runner_batch_size_count":
                total += sample.value
            elif sample.name == "runner_batch_size_bucket" and float(sample.labels["le"]) == 1.0:
                single += sample.value
    return total, total - single
