"""The container image's recipe, checked on every CI run without building it: the Dockerfile
BentoML generates from the built Bento and its build context. (`scripts/image` builds the image
with podman, runs it and sends one request per modality; see the README.)"""

from __future__ import annotations

import re
from pathlib import Path

import bentoml
import pytest
from bentoml._internal.container import construct_containerfile

from tests.servers.bundle import ROOT, build_bento

pytestmark = pytest.mark.integration  # builds the Bento


@pytest.fixture(scope="module")
def context() -> tuple[str, Path]:
    """(the Dockerfile, the build context) as `bentoml containerize` would hand them over."""
    bento = bentoml.bentos.get(build_bento())
    with construct_containerfile(bento, enable_buildkit=False) as (directory, dockerfile):
        root = Path(directory)
        text = (root / dockerfile).read_text()
        listing = {str(p.relative_to(root)) for p in root.rglob("*")}
        models = sorted(p.name for p in (root / "models").iterdir())
        yield text, listing, models, root  # type: ignore[misc]


def test_the_image_installs_the_lock_then_drops_what_the_cpu_lock_excludes(
    context: tuple[str, set[str], list[str], Path],
) -> None:
    dockerfile, listing, _, root = context
    install = dockerfile.index("pip install -r $BENTO_PATH/env/python/requirements.txt")
    script = re.search(r"&& \./(env/docker/script__\w+)\n", dockerfile)
    assert script, "BentoML runs the bentofile's setup_script as env/docker/script__<hash>"
    assert script.start() > install, "the setup script runs after BentoML's re-resolving install"
    assert script.group(1) in listing
    ours = (ROOT / "scripts/container-setup").read_text()
    assert (root / script.group(1)).read_text() == ours
    requirements = (ROOT / "requirements/cpu.lock").read_text()
    assert "torchvision" not in re.sub(r"#.*", "", requirements)  # the lock has none ...
    setup = (ROOT / "scripts/container-setup").read_text()
    assert "uv pip uninstall torchvision torchaudio torchcodec" in setup  # ... nor the image


def test_the_image_has_libnuma_runs_as_a_user_and_carries_the_models(
    context: tuple[str, set[str], list[str], Path],
) -> None:
    dockerfile, _, models, _ = context
    assert re.search(r"apt-get install[^\n]*libnuma1", dockerfile)
    assert re.search(r"^USER bentoml$", dockerfile, re.M)
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.M)
    assert {"demo-llm", "demo-resnet", "demo-whisper"} <= set(models)
