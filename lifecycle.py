"""Process lifecycle shared by every service of the bundle (standard library only).

die_with_parent()   the kernel sends this process SIGTERM when the process that started it
                    dies, so no worker outlives `bentoml serve` (or a supervisor its owner)
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """Linux: have `sig` sent to this process when its parent dies (a no-op elsewhere).

    BentoML starts each service worker in a process group of its own, so a SIGKILL of the
    `bentoml serve` process (circus' arbiter) reaches none of them; with this they drain and
    exit instead of holding the port. If the parent is already gone, the signal is sent now.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)
