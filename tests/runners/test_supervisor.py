"""The supervisor restarts a crashed child, gives up after too many crashes, and stops cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from runners.supervisor import Supervisor


def test_restarts_a_crashing_child_then_gives_up(tmp_path: Path) -> None:
    marker = tmp_path / "starts"
    child = [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x'); raise SystemExit(3)"]
    sup = Supervisor(child, max_restarts=2, backoff_s=0.01)
    assert sup.run() == 3
    assert marker.read_text() == "xxx"  # first start + 2 restarts


def test_stop_terminates_a_running_child() -> None:
    sup = Supervisor([sys.executable, "-c", "import time; time.sleep(60)"], stop_timeout_s=5)
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(sup.run()))
    runner.start()
    time.sleep(0.5)
    started = time.monotonic()
    sup.stop()
    runner.join(10)
    assert result == [0] and time.monotonic() - started < 5


def test_sigterm_to_the_supervisor_process_stops_its_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    proc = subprocess.Popen(
        [sys.executable, "-m", "runners.supervisor", "--", sys.executable, "-c", code]
    )
    deadline = time.monotonic() + 20
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    child_pid = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert (
        not Path(f"/proc/{child_pid}").exists()
        or "zombie" in Path(f"/proc/{child_pid}/status").read_text()
    )
