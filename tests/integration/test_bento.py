"""`bentoml build` makes one Bento with the five services, their models and the CPU lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.names import BUNDLED
from settings import get_settings
from tests.servers.bundle import ROOT, bento_info, build_bento

pytestmark = pytest.mark.integration  # builds the Bento


def pins(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if "==" in line}


def test_build_makes_one_bento_with_five_services_and_their_models() -> None:
    info = bento_info(build_bento())
    assert info["entry_service"] == "gateway"
    services = {s["name"]: s for s in info["services"]}
    assert set(services) == {"gateway", *BUNDLED}
    assert {d["service"] for d in services["gateway"]["dependencies"]} == {
        "llm",
        "vision",
        "speech",
        "embed",
    }
    settings = get_settings()
    for name, model in [
        ("llm", settings.llm.model),
        ("vision", settings.vision.model),
        ("speech", settings.speech.model),
        ("embed", settings.embed.model),
    ]:
        (tag,) = [m["tag"] for m in services[name]["models"]]
        assert tag.split(":")[0] == model.split(":")[0]


def test_bento_installs_the_checked_in_lock_and_has_a_dockerfile() -> None:
    import bentoml

    bento = bentoml.get(build_bento())
    path = Path(bento.path)
    assert pins(path / "env" / "python" / "requirements.txt") == pins(
        ROOT / "requirements" / "cpu.lock"
    )
    dockerfile = (path / "env" / "docker" / "Dockerfile").read_text()
    assert "requirements.txt" in dockerfile
    assert (path / "src" / "service.py").exists() and (path / "src" / "bundle.yaml").exists()
