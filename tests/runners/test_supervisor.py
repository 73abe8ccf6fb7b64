"""The supervisor restarts a crashed child, gives up after too many crashes, and stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

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


def wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status")
        if not status.exists() or "zombie" in status.read_text():
            return True
        time.sleep(0.05)
    return False


def test_what_a_crashed_child_forked_is_killed_with_it(tmp_path: Path) -> None:
    """vLLM's server forks an engine core; a server killed by SIGKILL must not leave it behind."""
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import os, subprocess, sys, time;"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid));"
        "os.kill(os.getpid(), 9)"
    )
    sup = Supervisor([sys.executable, "-c", code], max_restarts=0)
    assert sup.run() != 0
    assert wait_gone(int(pid_file.read_text()))


def test_stop_also_stops_what_the_child_forked(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time;"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid));"
        "time.sleep(60)"
    )
    sup = Supervisor([sys.executable, "-c", code], stop_timeout_s=5)
    runner = threading.Thread(target=sup.run)
    runner.start()
    deadline = time.monotonic() + 20
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sup.stop()
    runner.join(10)
    assert wait_gone(int(pid_file.read_text()))


def start_with_drain_wait(tmp_path: Path, wait_s: float) -> tuple[subprocess.Popen[bytes], int]:
    pid_file = tmp_path / "child.pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    proc = subprocess.Popen(
        [sys.executable, "-m", "runners.supervisor", "--drain-wait", str(wait_s), "--",
         sys.executable, "-c", code]
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return proc, int(pid_file.read_text())


def test_with_drain_wait_a_first_sigterm_is_a_notice_and_a_second_stops(tmp_path: Path) -> None:
    proc, child = start_with_drain_wait(tmp_path, 60)
    proc.send_signal(signal.SIGTERM)  # what circus sends beside the draining worker
    time.sleep(1.0)
    assert proc.poll() is None and not wait_gone(child, 0.1)  # the engine serves on
    proc.send_signal(signal.SIGTERM)  # the drained worker terminates its command
    assert proc.wait(20) == 0 and wait_gone(child)


def test_with_drain_wait_the_engine_stops_after_the_wait_anyway(tmp_path: Path) -> None:
    proc, child = start_with_drain_wait(tmp_path, 1.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0 and wait_gone(child)
    assert 1.4 <= time.monotonic() - started < 10


def test_the_child_runs_at_the_niceness_it_was_given(tmp_path: Path) -> None:
    """llm.nice: the engine yields the cores to the gateway on one host (no privilege needed)."""
    out = tmp_path / "nice"
    script = f"import os; open({str(out)!r}, 'w').write(str(os.nice(0)))"
    sup = Supervisor([sys.executable, "-c", script], max_restarts=0, nice=7)
    sup.run()
    assert int(out.read_text()) == os.nice(0) + 7


def test_the_child_leads_its_own_session_whose_autogroup_takes_the_niceness(
    tmp_path: Path,
) -> None:
    """Where CPU time is shared by session (sched autogroups), niceness orders processes only
    within one session's group: the engine's group must be its own and carry the niceness."""
    autogroup = Path("/proc/self/autogroup")
    if not autogroup.exists():
        pytest.skip("this kernel has no autogroups")
    out = tmp_path / "session"
    leads = "f'{os.getsid(0) == os.getpid()} '"
    script = f"import os; open({str(out)!r}, 'w').write({leads} + open('{autogroup}').read())"
    Supervisor([sys.executable, "-c", script], max_restarts=0, nice=7).run()
    leads, group = out.read_text().split(" ", 1)
    if not group.strip():  # the kernel prints nothing for a task whose CPU group is a cgroup's
        pytest.skip("this process's CPU share is set by a cgroup, not by an autogroup")
    assert leads == "True" and group.split()[-1] == "7", group
    # Not this test's group. A process in the kernel's initial group reads an empty file.
    ours = autogroup.read_text().split()
    assert not ours or group.split()[0] != ours[0], (group, ours)


def test_with_a_ready_url_the_child_starts_at_full_speed_and_yields_once_ready(
    tmp_path: Path,
) -> None:
    """A (re)start serves nobody yet: the niceness, of every thread of the child's process
    group and of its autogroup, is taken once the ready URL answers 200."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    ready = threading.Event()

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if ready.is_set() else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out, stop = tmp_path / "nice", tmp_path / "stop"
    # The child forks a grandchild (an engine core), which reports its own niceness too.
    script = (
        "import os, sys, time\n"
        "role = 'core' if os.fork() == 0 else 'server'\n"
        f"while not os.path.exists({str(stop)!r}):\n"
        f"    open({str(out)!r} + role + '.new', 'w').write(str(os.nice(0)))\n"
        f"    os.replace({str(out)!r} + role + '.new', {str(out)!r} + role)\n"
        "    time.sleep(0.05)\n"
    )
    url = f"http://127.0.0.1:{server.server_address[1]}/health"
    sup = Supervisor([sys.executable, "-c", script], max_restarts=0, nice=7, ready_url=url)
    runner = threading.Thread(target=sup.run, daemon=True)
    runner.start()
    base = os.nice(0)
    try:
        for role in ("server", "core"):
            assert wait_for_text(Path(f"{out}{role}")) == str(base), role  # full speed
        time.sleep(1.2)  # two looks at the URL
        assert [Path(f"{out}{role}").read_text() for role in ("server", "core")] == [str(base)] * 2
        ready.set()
        deadline = time.monotonic() + 10
        while any(Path(f"{out}{r}").read_text() != str(base + 7) for r in ("server", "core")):
            assert time.monotonic() < deadline, "the child did not take its niceness once ready"
            time.sleep(0.05)
        group = Path(f"/proc/{sup._child.pid}/autogroup")  # type: ignore[union-attr]
        if group.exists() and group.read_text().strip():
            assert group.read_text().split()[-1] == "7"
    finally:
        stop.touch()
        sup.stop()
        runner.join(10)
        server.shutdown()


def wait_for_text(path: Path, timeout_s: float = 10) -> str:
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"nothing written to {path}"
        time.sleep(0.05)
    return path.read_text()


def test_adapters_loaded_at_run_time_are_loaded_again_after_a_restart() -> None:
    import httpx
    import respx

    from runners.supervisor import AdapterKeeper

    models = [{"id": "demo-llm", "parent": None}]
    sql2 = {"id": "sql2", "root": "/disk/sql2", "parent": "demo-llm"}
    keeper = AdapterKeeper("http://engine:8100")
    with respx.mock(assert_all_called=False) as mock:
        listing = mock.get("http://engine:8100/v1/models")
        load = mock.post("http://engine:8100/v1/load_lora_adapter").respond(200, text="ok")
        listing.respond(json={"data": [*models, sql2]})
        keeper.tick()
        assert keeper.known == {"sql2": "/disk/sql2"}
        keeper.restarted()
        listing.side_effect = httpx.ConnectError("down")  # the engine is starting
        keeper.tick()
        assert not load.called
        listing.side_effect = None
        listing.respond(json={"data": models})  # back, without it
        keeper.tick()
        assert load.call_count == 1
        assert json.loads(load.calls[0].request.content) == {
            "lora_name": "sql2",
            "lora_path": "/disk/sql2",
        }
