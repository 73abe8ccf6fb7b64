"""Run a server process, restart it when it crashes, stop it cleanly when its owner stops.

BentoML starts this as the LLM service's custom command, so BentoML's proxy keeps one stable
upstream address while the engine behind it may be restarted::

    python -m runners.supervisor --max-restarts 5 --drain-wait 75 -- python -m vllm...

Stopping, in order: `bentoml serve` signals the LLM worker and this process at the same moment.
With `--drain-wait`, that first SIGTERM is only a notice: the engine keeps serving the requests
the worker is still draining, and is stopped when the worker, drained, terminates this process
(a second SIGTERM), when the worker dies, or `--drain-wait` seconds later, whichever comes
first. SIGINT stops at once.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from lifecycle import die_with_parent

log = logging.getLogger("runners.supervisor")


class Supervisor:
    """Keeps one child process running; `stop()` terminates it, waits, then kills."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        max_restarts: int = 5,
        restart_window_s: float = 300.0,
        backoff_s: float = 1.0,
        stop_timeout_s: float = 30.0,
        nice: int = 0,
    ) -> None:
        self.command = list(command)
        self.nice = nice  # added to the child's niceness: a lower CPU priority needs no privilege
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self.backoff_s = backoff_s
        self.stop_timeout_s = stop_timeout_s
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # stop() and a (re)start never cross
        self._child: subprocess.Popen[bytes] | None = None
        self._restarts: list[float] = []

    def _in_child(self) -> None:
        die_with_parent()
        if self.nice:
            os.nice(self.nice)

    def run(self) -> int:
        """Run until stopped (returns 0) or until the child crashes too often (returns its code)."""
        while not self._stopping.is_set():
            # Its own process group: vLLM's API server forks an engine core and workers, which
            # outlive a server that was killed (OOM, SIGKILL) and would hold the model's memory
            # and cores while the restarted server loads another copy. The group takes them too.
            with self._lock:
                if self._stopping.is_set():
                    return 0
                self._child = subprocess.Popen(
                    self.command, preexec_fn=self._in_child, process_group=0
                )
            code = self._child.wait()
            _kill_group(self._child.pid, signal.SIGKILL)  # what the dead child left behind
            if self._stopping.is_set():
                return 0
            now = time.monotonic()
            self._restarts = [t for t in self._restarts if now - t < self.restart_window_s]
            if len(self._restarts) >= self.max_restarts:
                log.error(
                    "child exited with %s; %d restarts in %.0f s, giving up",
                    code,
                    len(self._restarts),
                    self.restart_window_s,
                )
                return code or 1
            delay = self.backoff_s * 2 ** len(self._restarts)
            self._restarts.append(now)
            log.warning("child exited with %s; restarting in %.1f s", code, delay)
            if self._stopping.wait(delay):
                return 0
        return 0

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            child = self._child
        if child is None or child.poll() is not None:
            return
        _kill_group(child.pid, signal.SIGTERM)
        try:
            child.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("child ignored SIGTERM for %.0f s; killing it", self.stop_timeout_s)
        _kill_group(child.pid, signal.SIGKILL)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    """Signal every process of the group, if any is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.supervisor")
    parser.add_argument("--max-restarts", type=int, default=5)
    parser.add_argument("--restart-window", type=float, default=300.0)
    parser.add_argument("--stop-timeout", type=float, default=30.0)
    parser.add_argument("--nice", type=int, default=0, help="the child's niceness increment")
    parser.add_argument(
        "--drain-wait",
        type=float,
        default=0.0,
        help="after a first SIGTERM, keep the child serving until a second one, the parent's "
        "death or this many seconds (0: stop at the first)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(message)s")
    sup = Supervisor(
        command,
        max_restarts=args.max_restarts,
        restart_window_s=args.restart_window,
        stop_timeout_s=args.stop_timeout,
        nice=args.nice,
    )

    parent = os.getppid()
    noticed, again = threading.Event(), threading.Event()

    def stop_when_drained() -> None:
        again.wait(args.drain_wait)
        sup.stop()

    def on_signal(signum: int, _frame: object) -> None:
        owner_alive = os.getppid() == parent  # it drains first, then stops us
        if signum == signal.SIGTERM and args.drain_wait and not noticed.is_set() and owner_alive:
            noticed.set()
            log.info("stop notice: the engine serves on while its service drains "
                     "(at most %.0f s)", args.drain_wait)  # fmt: skip
            threading.Thread(target=stop_when_drained, daemon=True).start()
            return
        again.set()
        threading.Thread(target=sup.stop, daemon=True).start()

    die_with_parent()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = sup.run()
    sup.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
