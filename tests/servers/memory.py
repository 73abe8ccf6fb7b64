"""What a request costs a server process in memory: the growth of its peak resident set (Linux's
VmHWM high-water mark, reset through /proc/<pid>/clear_refs) over what it held before.

    with PeakGrowth(worker.pid) as grown:
        httpx.post(...)
    assert grown.mib < 100
"""

from __future__ import annotations

import re
from pathlib import Path
from types import TracebackType


class PeakGrowth:
    def __init__(self, pid: int) -> None:
        self.status = Path(f"/proc/{pid}/status")
        self.clear_refs = Path(f"/proc/{pid}/clear_refs")
        self.mib = 0.0

    def __enter__(self) -> PeakGrowth:
        self.clear_refs.write_text("5")  # the high-water mark restarts at the current RSS
        self.before_kib = self._kib("VmRSS")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.mib = (self._kib("VmHWM") - self.before_kib) / 1024

    def _kib(self, field: str) -> int:
        match = re.search(rf"^{field}:\s+(\d+) kB$", self.status.read_text(), re.MULTILINE)
        assert match, f"no {field} in {self.status}"
        return int(match.group(1))
