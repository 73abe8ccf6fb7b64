"""A bound on how long BentoML's adaptive batcher holds a lone request, waiting for company.

BentoML 1.4.39's dispatcher (`bentoml/_internal/marshal/dispatcher.py`, `CorkDispatcher`) holds
the first request of a batch while `n * (wait_n + tick + o_a) <= optimizer.wait * 0.95`, where
`optimizer.wait` is the mean wait of the last 50 batches' first requests. Under a burst those
waits are long because requests queue behind the batch that is running, not because holding
helped; afterwards every lone request is held about that long, records about that wait, and so
keeps the mean up. Measured with bench.vision: after its c=32 windows, sequential ResNet-50
requests took ~2 s each (0.5 img/s) instead of ~70 ms, for as long as the run lasted.

`cap_batch_hold` bounds the learned wait at `max_hold_ms` (the runner section's setting) every
time the optimizer refreshes its parameters, the same knob as Triton's dynamic batcher
`max_queue_delay_microseconds`: a lone request waits at most that long for others, while under
load batches still form from the requests queued behind a running batch. It patches BentoML's
`Optimizer` class in the calling process (each runner service has its own process).
"""

from __future__ import annotations

from typing import Any

from bentoml._internal.marshal.dispatcher import Optimizer

_refresh = Optimizer.trigger_refresh
_cap_s: float | None = None


def cap_batch_hold(max_hold_ms: float) -> None:
    """From now on, this process's batchers hold a lone request at most `max_hold_ms`."""
    global _cap_s
    _cap_s = max(0.0, max_hold_ms) / 1000
    Optimizer.trigger_refresh = _capped_refresh  # type: ignore[method-assign]


def _capped_refresh(self: Any) -> None:
    _refresh(self)
    if _cap_s is not None:
        self.wait = min(self.wait, _cap_s)
