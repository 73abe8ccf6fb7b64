"""Two scikit-learn models for the MLServer of tests/servers/mlserver.py, trained at test time.

Run in .venv-mlserver (scripts/mlserver-env), so the pickles match the sklearn that loads them::

    .venv-mlserver/bin/python tests/servers/mlserver_models.py DIR    then: mlserver start DIR

``regress``  LinearRegression fitted on exact data, y = x @ COEF + INTERCEPT, so it answers
             ``reference_regress`` to float precision; its model-settings.json declares FP64 input
             ``x`` [-1, 4], output ``predict`` [-1, 1] and version 1.
``classes``  LogisticRegression over 3 classes that declares nothing (MLServer's metadata then lists
             no inputs or outputs): outputs ``predict`` (INT64 labels) and ``predict_proba`` (FP64).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COEF = (2.0, -1.0, 0.0, 3.0)
INTERCEPT = 0.5
MODELS = ("regress", "classes")


def reference_regress(x: list[list[float]]) -> list[list[float]]:
    return [[sum(a * c for a, c in zip(row, COEF, strict=True)) + INTERCEPT] for row in x]


def train(directory: Path) -> None:
    """Fit both models and write them with their model-settings.json (in .venv-mlserver)."""
    import joblib
    import numpy as np
    from sklearn.linear_model import LinearRegression, LogisticRegression

    x = np.random.default_rng(7).standard_normal((64, len(COEF)))
    y = x @ np.array(COEF) + INTERCEPT
    labels = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 3] > 1).astype(int)
    fitted = {
        "regress": LinearRegression().fit(x, y),
        "classes": LogisticRegression().fit(x, labels),
    }
    declared: dict[str, dict[str, Any]] = {
        "regress": {
            "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, len(COEF)]}],
            "outputs": [{"name": "predict", "datatype": "FP64", "shape": [-1, 1]}],
            "parameters": {"uri": "./model.joblib", "version": "1"},
        },
        "classes": {"parameters": {"uri": "./model.joblib"}},
    }
    for name, model in fitted.items():
        folder = directory / name
        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump(model, folder / "model.joblib")
        settings = {"name": name, "implementation": "mlserver_sklearn.SKLearnModel"}
        (folder / "model-settings.json").write_text(json.dumps({**settings, **declared[name]}))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/servers/mlserver_models.py DIR")
    train(Path(sys.argv[1]))
