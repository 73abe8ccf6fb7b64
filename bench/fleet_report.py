"""bench/fleet.py's report: one record per window, medians over repeats, a table, plots."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.fleet_client import Load

BASELINE = "balancer"


def percentile(samples: Sequence[float], q: float) -> float:
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Window:
    """One path, one workload, one repeat: the client's view and the replicas' own."""

    path: str
    workload: str
    repeat: int
    load: Load
    replicas: list[dict[str, Any]]  # each replica's /stats after the window
    connections: dict[str, int] = field(default_factory=dict)  # the balancer's, when used
    arrival_s: float = 0.0  # the span sessions start in (--duration)
    gateway_cpu_s: float = math.nan  # user + system, the gateway's whole process tree

    @property
    def gateway_cpu_ms_per_request(self) -> float:
        return self.gateway_cpu_s / self.load.requests * 1e3 if self.load.requests else math.nan

    def ttft_ms(self, q: float) -> float:
        return percentile(self.load.ttfts, q) * 1e3

    @property
    def output_tok_s(self) -> float:
        return self.load.output_tokens / self.load.seconds if self.load.seconds else math.nan

    @property
    def hit_ratio(self) -> float:
        queried = sum(r["prefix_cache_queried_tokens"] for r in self.replicas)
        hits = sum(r["prefix_cache_hit_tokens"] for r in self.replicas)
        return hits / queried if queried else math.nan

    @property
    def prefill_load(self) -> float:
        """The replicas' prefill seconds per replica per second of arrivals: in a steady state,
        the fraction of the fleet's prefill capacity the sessions used (the windows' ramp and
        drain make the busy fraction of the whole window lower)."""
        busy = sum(r["prefill_busy_s"] for r in self.replicas)
        return busy / (len(self.replicas) * self.arrival_s) if self.arrival_s else math.nan

    @property
    def per_replica(self) -> list[int]:
        return [r["requests"] for r in self.replicas]

    def record(self) -> dict[str, Any]:
        return {
            "path": self.path, "workload": self.workload, "repeat": self.repeat,
            "requests": self.load.requests, "errors": self.load.errors,
            "error_samples": self.load.error_samples, "seconds": self.load.seconds,
            "ttft_ms": {q: self.ttft_ms(v) for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))},
            "output_tokens": self.load.output_tokens, "output_tok_s": self.output_tok_s,
            "hit_ratio": self.hit_ratio, "prefill_load": self.prefill_load,
            "replica_requests": self.per_replica,
            "replicas": self.replicas, "balancer_connections": self.connections,
            "gateway_cpu_s": self.gateway_cpu_s,
        }  # fmt: skip


@dataclass
class Row:
    """A workload and a path over its repeats: medians, and sums of counts."""

    windows: list[Window]

    def median(self, value: Any) -> float:
        values = [v for v in map(value, self.windows) if not math.isnan(v)]
        return statistics.median(values) if values else math.nan

    def ttft_ms(self, q: float) -> float:
        return self.median(lambda w: w.ttft_ms(q))

    @property
    def per_replica(self) -> list[int]:
        return [sum(c) for c in zip(*(w.per_replica for w in self.windows), strict=True)]


def rows(windows: Sequence[Window]) -> dict[tuple[str, str], Row]:
    out: dict[tuple[str, str], Row] = {}
    for w in windows:
        out.setdefault((w.workload, w.path), Row([])).windows.append(w)
    return out


def fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def ratio(a: float, b: float) -> str:
    return fmt(a / b if b and not math.isnan(b) else math.nan, ".2f")


def markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
              for r in body]  # fmt: skip
    return "\n".join(lines)


def table(by: dict[tuple[str, str], Row], workloads: Sequence[str], paths: Sequence[str]) -> str:
    header = ["workload", "path", "reqs", "errors", "TTFT p50 ms", "p90 ms", "p99 ms",
              "out tok/s", "hit ratio", "prefill load", "reqs per replica", "gw CPU ms/req",
              "p50 vs bal", "p90 vs bal", "p99 vs bal", "tok/s vs bal"]  # fmt: skip
    body = []
    for wl in workloads:
        base = by.get((wl, BASELINE))
        for path in paths:
            row = by.get((wl, path))
            if row is None:
                continue
            tok_s = row.median(lambda w: w.output_tok_s)
            vs = [ratio(row.ttft_ms(q), base.ttft_ms(q)) if base else "-" for q in (0.5, 0.9, 0.99)]
            base_tok = base.median(lambda w: w.output_tok_s) if base else math.nan
            body.append([
                wl, path, str(sum(w.load.requests for w in row.windows)),
                str(sum(w.load.errors for w in row.windows)),
                fmt(row.ttft_ms(0.5), ".0f"), fmt(row.ttft_ms(0.9), ".0f"),
                fmt(row.ttft_ms(0.99), ".0f"), fmt(tok_s, ".0f"),
                fmt(row.median(lambda w: w.hit_ratio), ".2f"),
                fmt(row.median(lambda w: w.prefill_load), ".2f"),
                "/".join(map(str, row.per_replica)),
                fmt(row.median(lambda w: w.gateway_cpu_ms_per_request), ".2f"),
                *vs, ratio(tok_s, base_tok),
            ])  # fmt: skip
    return markdown(header, body)


def prefix_vs_least_load(by: dict[tuple[str, str], Row], workload: str) -> str:
    prefix, least = by.get((workload, "prefix")), by.get((workload, "least_load"))
    if prefix is None or least is None:
        return ""
    header = ["workload", "TTFT p50", "p90", "p99", "hit ratio (prefix / least_load)"]
    hits = [r.median(lambda w: w.hit_ratio) for r in (prefix, least)]
    body = [[workload, *(ratio(prefix.ttft_ms(q), least.ttft_ms(q)) for q in (0.5, 0.9, 0.99)),
             f"{fmt(hits[0], '.2f')} / {fmt(hits[1], '.2f')}"]]  # fmt: skip
    return "prefix vs least_load (ratios, prefix over least_load)\n\n" + markdown(header, body)


def plot(
    by: dict[tuple[str, str], Row], workloads: Sequence[str], paths: Sequence[str], out: Path
) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib does not import in this venv (scripts/setup installs it): no plots")
        return []
    charts = [("ttft_p90.png", "TTFT p90 (ms)", lambda r: r.ttft_ms(0.9)),
              ("hit_ratio.png", "replicas' prefix-cache hit ratio",
               lambda r: r.median(lambda w: w.hit_ratio))]  # fmt: skip
    written = []
    width = 0.8 / max(1, len(paths))
    for name, label, value in charts:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for i, path in enumerate(paths):
            xs = [j for j, wl in enumerate(workloads) if (wl, path) in by]
            ys = [value(by[workloads[j], path]) for j in xs]
            ax.bar([x + i * width for x in xs], ys, width, label=path)
        ax.set_xticks([j + width * (len(paths) - 1) / 2 for j in range(len(workloads))],
                      list(workloads))  # fmt: skip
        ax.set(ylabel=label, title=f"{label} by workload and path (median of repeats)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        written.append(out / name)
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written
