"""The README's examples, run as written against the session's bundle.

Each bash and python example (tests/readme.py reads them) runs from the repository root, as the
README says commands run, with two rewrites that this test makes and says here:
`localhost:3000` becomes the test bundle's address and `localhost:8001` its gRPC port; and every
`curl` without `-f` gets `--fail-with-body -sS`, so an HTTP error fails the example with its body.
Where the README shows what an example prints, the output must have that shape (`...` is any
text). The examples CI does not run are listed, with the reasons, in tests/test_readme.py.

The session's bundle runs with auth off, so the keys example sends its placeholder key and the
bundle ignores it: that block proves the client calls are written right, not the auth itself
(tests/gateway/scope and test_shared_limits.py test keys on real servers).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.readme import RUNNABLE, Example, examples, shape

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
RUN = [e for e in examples() if e.lang in RUNNABLE and not e.not_run]


@pytest.fixture(scope="module")
def addresses(bundle_url: str, request: pytest.FixtureRequest) -> tuple[str, str]:
    """The bundle's HTTP and gRPC addresses: the session's, or BUNDLE_URL's (its gRPC port from
    BUNDLE_GRPC_ADDRESS, default 127.0.0.1:8001 as in bundle.yaml)."""
    if os.environ.get("BUNDLE_URL"):
        return urlsplit(bundle_url).netloc, os.environ.get("BUNDLE_GRPC_ADDRESS", "127.0.0.1:8001")
    stack = request.getfixturevalue("routing_stack")
    return urlsplit(stack.url).netloc, f"127.0.0.1:{stack.config['gateway']['grpc_port']}"


def rewritten(example: Example, addresses: tuple[str, str]) -> str:
    http, grpc = addresses
    code = example.code.replace("localhost:3000", http).replace("localhost:8001", grpc)
    if example.lang == "bash":
        code = re.sub(r"\bcurl (?!(?:[^\n]*\s)?-f)", "curl --fail-with-body -sS ", code)
    return code


def run(example: Example, addresses: tuple[str, str]) -> subprocess.CompletedProcess[str]:
    code = rewritten(example, addresses)
    command = (
        ["bash", "-euo", "pipefail", "-c", code]
        if example.lang == "bash"
        else [sys.executable, "-c", code]
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.parametrize("example", RUN, ids=[e.name for e in RUN])
def test_readme_example_runs_as_written(example: Example, addresses: tuple[str, str]) -> None:
    done = run(example, addresses)
    assert done.returncode == 0, (
        f"README.md line {example.line} ({example.name}) exited {done.returncode}\n"
        f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    )
    if example.output is not None:
        assert shape(example.output).fullmatch(done.stdout), (
            f"README.md line {example.line} ({example.name}) shows\n{example.output}\n"
            f"but printed\n{done.stdout}"
        )
