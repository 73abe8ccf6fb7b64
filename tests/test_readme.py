"""The README's examples without a server: each runnable block named, the blocks not run listed
here with their reasons, and every configuration example valid configuration.
tests/integration/test_readme.py runs the others against the bundle."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from settings import parse_settings
from tests.readme import README, RUNNABLE, examples, shape

# The examples CI does not run, and why (the README says the same beside each).
NOT_RUN = {
    "two-commands": "CI runs scripts/test itself; the tests start the bundle scripts/serve starts",
    "models-import": "downloads from the Hugging Face Hub",
    "lora-import": "needs a real adapter, from the Hugging Face Hub or a directory",
    "lora-runtime": "needs an admin key; test_lora.py loads and unloads through a gateway with one",
    "build-and-ship": "builds a Bento and an image, minutes each (test_bento.py builds the Bento)",
    "image-run": "needs the image scripts/image builds",
    "deploy-kubernetes": "needs a Kubernetes cluster",
    "deploy-bentocloud": "needs a BentoCloud account",
    "observability": "needs a container engine with compose",
    "development": "each line is a test run or a benchmark of its own",
}


def test_every_runnable_block_is_a_named_example_and_names_are_unique() -> None:
    runnable = [e for e in examples() if e.lang in RUNNABLE]
    unnamed = [e.line for e in runnable if e.name is None]
    assert not unnamed, f"README.md lines {unnamed}: add <!-- example: NAME --> above the fence"
    names = [e.name for e in runnable]
    assert len(names) == len(set(names)), names


def test_the_examples_not_run_are_the_ones_listed_here() -> None:
    assert {e.name for e in examples() if e.not_run} == set(NOT_RUN)


def placeholders_filled(node: Any) -> Any:
    """A key's digest shown as "9f2c..." or `...` becomes a well-formed one."""
    if isinstance(node, dict):
        return {k: "0" * 64 if k == "sha256" else placeholders_filled(v) for k, v in node.items()}
    if isinstance(node, list):
        return [placeholders_filled(v) for v in node]
    return node


CONFIGS = [e for e in examples() if e.lang == "yaml"]


@pytest.mark.parametrize("example", CONFIGS, ids=[f"line-{e.line}" for e in CONFIGS])
def test_configuration_examples_are_valid_configuration(example: Any) -> None:
    """Each yaml example, over bundle.yaml, is accepted by the settings as it stands."""
    base = yaml.safe_load((README.parent / "bundle.yaml").read_text())
    shown = placeholders_filled(yaml.safe_load(example.code))
    merged = {**base, **{k: {**base.get(k, {}), **v} for k, v in shown.items()}}
    parse_settings(merged, source=f"README.md line {example.line}")


def test_shown_output_is_matched_by_its_shape() -> None:
    pattern = shape("sk-...\n- name: team-a\n  sha256: ...\n")
    assert pattern.fullmatch("sk-abc\n- name: team-a\n  sha256: 9f2c\n")
    assert not pattern.fullmatch("sk-abc\n- name: team-b\n  sha256: 9f2c\n")
