"""A throwaway BentoML store holding the demo models, created once per session by the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class CliRun:
    stdout: str
    stderr: str
    seconds: float


@dataclass(frozen=True)
class DemoStore:
    home: Path
    env: dict[str, str]
    first_run: CliRun

    def cli(self, *args: str) -> CliRun:
        """Run ``python -m models ARGS`` against this store (network-free: HF_HUB_OFFLINE=1)."""
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "models", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        seconds = time.perf_counter() - start
        assert proc.returncode == 0, f"python -m models {' '.join(args)} failed:\n{proc.stderr}"
        return CliRun(proc.stdout, proc.stderr, seconds)


@pytest.fixture(scope="package")  # the BENTOML_HOME override must not outlive tests/models
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStore]:
    """BENTOML_HOME in a temp dir for this process and its children, with the demos created.

    BentoML caches its store on first use, so the cached store is pointed there too.
    """
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models.model import ModelStore

    home = tmp_path_factory.mktemp("bentoml_home")
    overrides = {
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in overrides.items():
            mp.setenv(key, value)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with BentoMLContainer.model_store.patch(ModelStore(str(home / "models"))):
            store = DemoStore(home, env, first_run=CliRun("", "", 0.0))
            first = store.cli("demo")
            yield DemoStore(home, env, first)
