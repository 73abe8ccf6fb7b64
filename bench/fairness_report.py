"""The report of bench/fairness.py: each policy's numbers against the goals, as a markdown
table (fifo, fair, their ratio), report.md, results.json and fairness.png."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.fairness_load import KEY_A, KEY_B, KEY_C, Plan, Tally
from bench.gateway import cpu_model, fmt, markdown, percentile
from tests.servers.process import ServerProcess


def access_summary(server: ServerProcess) -> dict[str, int]:
    """The gateway's access log (one JSON line per request): requests by key, class, status."""
    counts: Counter[str] = Counter()
    for line in server.log_path.read_text(errors="replace").splitlines():
        if line.startswith('{"request_id"'):
            r = json.loads(line)
            counts[f"{r.get('key')} {r.get('priority')} {r.get('status')}"] += 1
    return dict(sorted(counts.items()))


def progress(tally: Tally) -> str:
    seconds = tally.window.end - tally.window.start
    parts = [f"{k} {n / seconds:,.0f} tok/s" for k, n in sorted(tally.tokens.items())]
    if tally.slots_busy:
        parts.append(f"slots busy {statistics.fmean(tally.slots_busy):.1f}")
    if KEY_B.name in tally.ttfts:
        ttfts = tally.ttfts[KEY_B.name]
        parts.append(f"B TTFT p50 {percentile(ttfts, 0.5) * 1e3:.1f} ms "
                     f"p99 {percentile(ttfts, 0.99) * 1e3:.1f} ms (n={len(ttfts)})")  # fmt: skip
    if tally.refused or tally.errors:
        parts.append(f"refused {dict(tally.refused)} errors {dict(tally.errors)}")
    return ", ".join(parts)


# --- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One policy's numbers against the goals."""

    capacity_tok_s: float  # measured: key A alone, every slot busy
    b_base_p50: float
    b_base_p99: float
    b_flood_p50: float
    b_flood_p99: float
    b_refused: int  # phases 1 and 2
    b_sent: int
    b_slots: float  # phase 2: B's busy slots, from its tokens/s and its baseline stream time
    slots_busy: float  # phase 2: mean of the admission's in-flight gauge
    a_flood_tok_s: float
    a_share_left: float  # of the capacity B leaves
    long_tok_s: float
    short_tok_s: float

    @property
    def b_ratio(self) -> float:
        return self.b_flood_p99 / self.b_base_p99

    @property
    def long_share(self) -> float:
        return self.long_tok_s / (self.long_tok_s + self.short_tok_s)

    @property
    def short_share(self) -> float:
        return 1 - self.long_share


def outcome(plan: Plan, tallies: list[Tally]) -> Outcome:
    capacity, base, flood, two = tallies
    a, b = KEY_A.name, KEY_B.name

    def rate(t: Tally, key: str) -> float:
        return t.tokens[key] / (t.window.end - t.window.start)

    capacity_tok_s = rate(capacity, a)
    b_stream_s = statistics.fmean(base.latencies.get(b, [math.nan]))
    b_slots = rate(flood, b) * b_stream_s / plan.b_tokens
    left = (plan.capacity - b_slots) * capacity_tok_s / plan.capacity

    def ttft_ms(t: Tally, q: float) -> float:
        return percentile(t.ttfts.get(b, []), q) * 1e3

    return Outcome(
        capacity_tok_s=capacity_tok_s,
        b_base_p50=ttft_ms(base, 0.5),
        b_base_p99=ttft_ms(base, 0.99),
        b_flood_p50=ttft_ms(flood, 0.5),
        b_flood_p99=ttft_ms(flood, 0.99),
        b_refused=sum(t.refused[b] + t.errors[b] for t in (base, flood)),
        b_sent=base.sent[b] + flood.sent[b],
        b_slots=b_slots,
        slots_busy=statistics.fmean(flood.slots_busy) if flood.slots_busy else math.nan,
        a_flood_tok_s=rate(flood, a),
        a_share_left=rate(flood, a) / left,
        long_tok_s=rate(two, a),
        short_tok_s=rate(two, KEY_C.name),
    )


def table(outcomes: dict[str, Outcome]) -> str:
    before, after = outcomes["fifo"], outcomes["fair"]

    def row(label: str, goal: str, value: str, spec: str, ok: Any = None) -> list[str]:
        x, y = getattr(before, value), getattr(after, value)
        ratio = y / x if x else math.nan
        verdict = "" if ok is None else ("yes" if ok(y) else "**no**")
        return [label, goal, fmt(x, spec), fmt(y, spec), fmt(ratio, ".2f"), verdict]

    def in_range(v: float) -> bool:
        return 0.45 <= v <= 0.55

    body = [
        row("0 capacity: A alone, all slots busy (tok/s)", "", "capacity_tok_s", ",.0f"),
        row("1 B TTFT p50 alone (ms)", "", "b_base_p50", ".1f"),
        row("1 B TTFT p99 alone (ms)", "", "b_base_p99", ".1f"),
        row("2 B TTFT p50 under A's low flood (ms)", "", "b_flood_p50", ".1f"),
        row("2 B TTFT p99 under A's low flood (ms)", "", "b_flood_p99", ".1f"),
        row("2 B p99 flood ÷ alone", "≤ 1.5", "b_ratio", ".2f", lambda v: v <= 1.5),
        row("1+2 B requests sent", "", "b_sent", ".0f"),
        row("1+2 B refused or failed", "0", "b_refused", ".0f", lambda v: v == 0),
        row("2 slots busy (admission gauge, mean)", "", "slots_busy", ".1f"),
        row("2 slots B keeps busy", "", "b_slots", ".2f"),
        row("2 A tokens/s", "", "a_flood_tok_s", ",.0f"),
        row("2 A ÷ capacity B leaves", "≥ 0.90", "a_share_left", ".3f", lambda v: v >= 0.9),
        row("3 A tokens/s (long requests)", "", "long_tok_s", ",.0f"),
        row("3 C tokens/s (short requests)", "", "short_tok_s", ",.0f"),
        row("3 A share of tokens", "0.45-0.55", "long_share", ".3f", in_range),
        row("3 C share of tokens", "0.45-0.55", "short_share", ".3f", in_range),
    ]
    header = ["phase, metric", "goal (fair)", "fifo (before)", "fair", "fair ÷ fifo", "met"]
    return markdown(header, body)


def setup_text(plan: Plan, args: argparse.Namespace, load: tuple[float, ...]) -> str:
    p = plan
    reserved = "the gateway's default" if p.reserved_fraction is None else p.reserved_fraction
    return "\n".join([
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; load average at start "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}; python "
        f"{platform.python_version()}, bentoml {importlib.metadata.version('bentoml')}",
        f"- capacity: C = {p.capacity} slots (admission max_inflight; reserved_fraction: "
        f"{reserved}); upstream prefill {p.prefill_ms:g} ms, {p.token_ms:g} ms per token",
        f"- a slot is held for a whole stream: {p.stream_s(p.b_tokens) * 1e3:.0f} ms for "
        f"{p.b_tokens} tokens, {p.stream_s(p.a_tokens) * 1e3:.0f} ms for {p.a_tokens}; capacity "
        f"{p.tokens_s(p.b_tokens):,.0f} tokens/s of {p.b_tokens}-token requests, "
        f"{p.tokens_s(p.a_tokens):,.0f} of {p.a_tokens}-token ones (nominal)",
        f"- 0 capacity: key-a alone, {3 * p.capacity} closed-loop workers, {p.a_tokens}-token "
        f"normal requests, {p.capacity_window_s:g} s",
        f"- 1 baseline: key-b alone, {p.b_tokens}-token normal requests, open loop at "
        f"{p.b_rate():.2f}/s (seed {p.seed}) = {p.b_load:.0%} of the capacity",
        f"- 2 low flood: key-a, {3 * p.capacity} closed-loop workers, {p.a_tokens}-token "
        "`service_tier: flex` requests; key-b as in 1",
        f"- 3 two keys: key-a {p.long_tokens}-token and key-c {p.short_tokens}-token normal "
        f"requests, {math.ceil(1.5 * p.capacity)} closed-loop workers each",
        f"- window: {p.window_s:g} s per phase (after a ramp of one long stream + 1 s in 0, 2 "
        "and 3); tokens counted as they arrive inside it, TTFTs of requests sent inside it",
        f"- command: .venv/bin/python -m bench.fairness {' '.join(sys.argv[1:])}",
    ])  # fmt: skip


def plot(plan: Plan, results: dict[str, list[Tally]], outcomes: dict[str, Outcome], out: Path
         ) -> list[Path]:  # fmt: skip
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib does not import in this venv (scripts/setup installs it): no plot")
        return []
    fig, (cdf, work, share) = plt.subplots(1, 3, figsize=(15, 4.5))
    for policy, tallies in results.items():
        for phase, style in ((1, ":"), (2, "-")):
            ttfts = sorted(t * 1e3 for t in tallies[phase].ttfts.get(KEY_B.name, []))
            ys = [(i + 1) / len(ttfts) for i in range(len(ttfts))]
            cdf.plot(ttfts, ys, style, label=f"{policy}, {plan.phases()[phase].name}")
    cdf.set(xscale="log", xlabel="key-b TTFT (ms)", ylabel="fraction of requests",
            title="key-b's TTFT, alone and under a low flood")  # fmt: skip
    cdf.grid(True, which="both", alpha=0.3)
    cdf.legend(fontsize="small")
    names = list(outcomes)
    work.bar(names, [outcomes[n].a_share_left for n in names], color="tab:blue")
    work.axhline(0.9, color="tab:red", linestyle="--", label="goal 0.90")
    work.set(ylim=(0, 1.1), ylabel="key-a tokens/s ÷ capacity key-b leaves",
             title="Phase 2: work conservation")  # fmt: skip
    work.legend(fontsize="small")
    longs = [outcomes[n].long_share for n in names]
    share.bar(names, longs, label=f"key-a ({plan.long_tokens} tokens)", color="tab:orange")
    share.bar(names, [1 - v for v in longs], bottom=longs, color="tab:green",
              label=f"key-c ({plan.short_tokens} tokens)")  # fmt: skip
    share.axhspan(0.45, 0.55, color="grey", alpha=0.3, label="goal 45-55%")
    share.set(ylim=(0, 1), ylabel="share of completion tokens", title="Phase 3: two keys")
    share.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    path = out / "fairness.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def report(
    plan: Plan,
    args: argparse.Namespace,
    load: tuple[float, ...],
    results: dict[str, list[Tally]],
    gateways: dict[str, ServerProcess],
    out: Path,
) -> None:
    outcomes = {p: outcome(plan, tallies) for p, tallies in results.items()}
    setup = setup_text(plan, args, load)
    md = table(outcomes)
    logs = {p: access_summary(g) for p, g in gateways.items()}
    samples = [f"- {p}, {ph.name}: {s}" for p, ts in results.items()
               for ph, t in zip(plan.phases(), ts, strict=True) for s in t.samples]  # fmt: skip
    print(f"\n{setup}\n\n{md}\n")
    for policy, counts in logs.items():
        print(f"{policy} gateway's access log (key class status: requests): {counts}")
    print("\n".join(samples[:10]))
    written = plot(plan, results, outcomes, out)
    lines = ["# Priority and fairness: fifo (before) against fair", "", setup, "", md, "",
             "Access log (key class status: requests):", "",
             *(f"- {p}: {c}" for p, c in logs.items()),
             *(["", "Refusal and error samples:", "", *samples[:20]] if samples else []),
             "", *(f"![{p.stem}]({p.name})" for p in written)]  # fmt: skip
    (out / "report.md").write_text("\n".join(lines) + "\n")
    phases = [ph.name for ph in plan.phases()]
    data = {
        "plan": plan.__dict__,
        "outcomes": {p: {**o.__dict__, "b_ratio": o.b_ratio, "long_share": o.long_share}
                     for p, o in outcomes.items()},
        "phases": {p: dict(zip(phases, (t.as_json() for t in ts), strict=True))
                   for p, ts in results.items()},
        "access_log": logs,
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(data, indent=1))
    print(f"\nwrote {out}/report.md, results.json" + "".join(f", {p.name}" for p in written))
