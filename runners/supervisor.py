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
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
        ready_url: str | None = None,
        adapters: AdapterKeeper | None = None,
    ) -> None:
        self.command = list(command)
        self.adapters = adapters  # run-time LoRA adapters, reloaded after a restart
        self.nice = nice  # added to the child's niceness: a lower CPU priority needs no privilege
        # With a ready URL the niceness is taken once the child answers there: a (re)start runs
        # at full speed (it serves nobody yet), then the child yields the cores.
        self.ready_url = ready_url
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
        if self.nice and self.ready_url is None:
            lower_priority(os.getpid(), self.nice)

    def _lower_once_ready(self, child: subprocess.Popen[bytes], url: str) -> None:
        started = time.monotonic()
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no HTTP_PROXY
        while not self._stopping.is_set() and child.poll() is None:
            try:
                with direct.open(url, timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:  # not listening yet, or not ready (urllib's HTTPError is one)
                pass
            self._stopping.wait(0.5)
        else:
            return
        with contextlib.suppress(OSError):  # it may have died just now
            lower_priority(child.pid, self.nice)
            log.info("child ready after %.0f s: niceness +%d from now on",
                     time.monotonic() - started, self.nice)  # fmt: skip

    def run(self) -> int:
        """Run until stopped (returns 0) or until the child crashes too often (returns its code)."""
        while not self._stopping.is_set():
            # Its own session and process group: vLLM's API server forks an engine core and
            # workers, which outlive a server that was killed (OOM, SIGKILL) and would hold the
            # model's memory and cores while the restarted server loads another copy. The group
            # takes them too.
            with self._lock:
                if self._stopping.is_set():
                    return 0
                self._child = subprocess.Popen(
                    self.command, preexec_fn=self._in_child, start_new_session=True
                )  # a session of its own is a process group of its own too
                if self.nice and self.ready_url is not None:
                    threading.Thread(
                        target=self._lower_once_ready,
                        args=(self._child, self.ready_url),
                        daemon=True,
                    ).start()
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
            if self.adapters is not None:
                self.adapters.restarted()
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


class AdapterKeeper:
    """Keeps the LoRA adapters loaded at run time across engine restarts.

    Every `every_s` it reads the engine's own /v1/models (an adapter is a model with a
    `parent`; its `root` is the path it was loaded from) and remembers the adapters there; once
    a restarted engine answers, it loads the remembered ones it lacks again, through the engine's
    /v1/load_lora_adapter. The adapters of the command line come back by themselves. An adapter
    loaded less than `every_s` before a crash may be missed.
    """

    def __init__(self, url: str, *, every_s: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self.every_s = every_s
        self.known: dict[str, str] = {}  # served name -> path
        self._restored = True
        self._client: Any = None  # an httpx.Client, made in the thread that looks

    def restarted(self) -> None:
        self._restored = False

    def tick(self) -> None:
        """One look at the engine (quietly nothing while it is down)."""
        import httpx

        if self._client is None:  # one client: a new one per look costs an SSL context
            self._client = httpx.Client(timeout=5)
        try:
            models = self._client.get(f"{self.url}/v1/models").json()["data"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return
        resident = {m["id"]: str(m.get("root") or "") for m in models if m.get("parent")}
        if not self._restored:
            for name, path in self.known.items():
                if name not in resident:
                    self._load(name, path)
            self._restored = True
            return
        self.known = resident

    def _load(self, name: str, path: str) -> None:
        import httpx

        body = {"lora_name": name, "lora_path": path}
        try:
            r = httpx.post(f"{self.url}/v1/load_lora_adapter", json=body, timeout=120)
        except httpx.HTTPError as exc:
            log.error("reloading LoRA adapter %s from %s failed: %s", name, path, exc)
            return
        if r.status_code == 200:
            log.info("reloaded LoRA adapter %s from %s", name, path)
        else:
            log.error("reloading LoRA adapter %s from %s: %s %s", name, path, r.status_code,
                      r.text[:300])  # fmt: skip

    def run(self, stopping: threading.Event) -> None:
        while not stopping.wait(self.every_s):
            self.tick()


def lower_priority(pgid: int, nice: int) -> None:
    """Add `nice` to the niceness of every thread of process group `pgid` (the supervisor's own
    niceness plus `nice`), and give the group leader's session autogroup that niceness: where the
    kernel groups CPU time by session (sched_autogroup_enabled, Debian's default), niceness orders
    processes only inside their session's group, so the child leads a session of its own (run()
    starts it so) and that group yields too."""
    os.setpriority(os.PRIO_PGRP, pgid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice))
    with contextlib.suppress(OSError):  # no autogroups in this kernel, or a cgroup sets shares
        Path(f"/proc/{pgid}/autogroup").write_text(str(nice))


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
        "--ready-url",
        metavar="URL",
        help="take --nice only once the child answers 200 here (it starts at full speed)",
    )
    parser.add_argument(
        "--drain-wait",
        type=float,
        default=0.0,
        help="after a first SIGTERM, keep the child serving until a second one, the parent's "
        "death or this many seconds (0: stop at the first)",
    )
    parser.add_argument(
        "--keep-adapters",
        metavar="URL",
        help="the engine's URL: reload the LoRA adapters loaded at run time after a restart",
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
        ready_url=args.ready_url,
        adapters=AdapterKeeper(args.keep_adapters) if args.keep_adapters else None,
    )
    if sup.adapters is not None:
        keeper = sup.adapters
        threading.Thread(target=keeper.run, args=(sup._stopping,), daemon=True).start()

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
