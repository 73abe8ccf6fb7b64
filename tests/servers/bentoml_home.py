"""A BENTOML_HOME of its own for a test server, sharing the real model and Bento stores.

Every `bentoml serve` empties and reuses `$BENTOML_HOME/prometheus_multiproc_dir`, so bundles
started side by side on one machine (by other tests or other people) wipe each other's metrics.
A home per server keeps its /metrics its own; `models`, `bentos` and `envs` link to the real
stores, so the models and Bentos built there are found::

    start_bundle(env={"BENTOML_HOME": str(isolated_home(tmp_path))})
"""

from __future__ import annotations

from pathlib import Path

SHARED = ("models", "bentos", "envs")


def isolated_home(directory: Path) -> Path:
    from models.store import store_dir

    real = store_dir().parent
    home = directory / "bentoml"
    home.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        (real / name).mkdir(parents=True, exist_ok=True)
        link = home / name
        if not link.exists():
            link.symlink_to(real / name, target_is_directory=True)
    return home
