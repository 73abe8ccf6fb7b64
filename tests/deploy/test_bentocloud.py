"""The BentoCloud deployment file (deploy/bentocloud.yaml), through BentoML 1.4.39's own schema.

`bentoml deploy -f FILE` structures the file into CreateDeploymentSchema (attrs classes in
bentoml/_internal/cloud/schemas) with bentoml_cattr, then fixes and checks the scaling. Those
classes ignore unknown keys (`__forbid_extra_keys__ = False`), so a misspelt key would be
dropped without a word: the test structures the file a second time with the same hooks and
unknown keys forbidden. `config_overrides` is a service config (what @bentoml.service takes),
checked against BentoML's ServiceConfig, unknown keys included.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import attr
import cattrs
import pytest
import typing_extensions
import yaml
from cattrs.gen import make_dict_structure_fn

from contract.names import LLM, SPEECH, VISION
from settings import Settings, parse_settings
from tests.deploy.bundle_services import bundle_services, dependencies, entry_service

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_FILE = ROOT / "deploy" / "bentocloud.yaml"
BUNDLE_FILE = ROOT / "deploy" / "bentocloud.bundle.yaml"
BENTOML_HOME = "/home/bentoml"  # $BENTOML_HOME in BentoML's image: file secrets mount under it
SCALE_BEHAVIORS = {"fast", "stable", "disabled"}  # BentoCloud's HPA policy behaviors


def load(path: Path = DEPLOY_FILE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def strict_converter() -> cattrs.Converter:
    """bentoml_cattr's structuring, with unknown keys an error in every attrs class."""
    from bentoml._internal.utils.cattr import bentoml_cattr

    strict = bentoml_cattr.copy()
    strict.register_structure_hook_factory(
        attr.has,
        lambda cls: make_dict_structure_fn(cls, strict, _cattrs_forbid_extra_keys=True),
    )
    return strict


def structure(data: dict[str, Any]) -> Any:
    """The file as `bentoml deploy -f` reads it, failing on any key BentoML does not know."""
    from bentoml._internal.cloud.deployment import DeploymentAPI
    from bentoml._internal.cloud.schemas.schemasv2 import CreateDeploymentSchema
    from bentoml._internal.utils.cattr import bentoml_cattr

    data = copy.deepcopy(data)
    data.pop("cluster", None)  # DeploymentConfigParameters.get_cluster() takes it out first
    schema = bentoml_cattr.structure(data, CreateDeploymentSchema)  # BentoML's own path
    DeploymentAPI._fix_and_validate_schema(schema)
    try:
        strict = strict_converter().structure(copy.deepcopy(data), CreateDeploymentSchema)
    except cattrs.BaseValidationError as exc:
        raise AssertionError(
            f"{DEPLOY_FILE.name}: {'; '.join(cattrs.transform_error(exc))}"
        ) from None
    assert bentoml_cattr.unstructure(strict) == bentoml_cattr.unstructure(schema)
    return schema


def unknown_service_config_keys(data: Any, schema: Any, path: str = "") -> list[str]:
    """Keys of `data` that the TypedDict `schema` (and its nested TypedDicts) do not declare."""
    if not isinstance(data, dict) or not typing_extensions.is_typeddict(schema):
        return []
    hints = typing_extensions.get_type_hints(schema, include_extras=True)
    unknown = []
    for key, value in data.items():
        if key not in hints:
            unknown.append(f"{path}{key}")
            continue
        hint = hints[key]
        while typing_extensions.get_origin(hint) is typing_extensions.Annotated:
            hint = typing_extensions.get_args(hint)[0]
        unknown += unknown_service_config_keys(value, hint, f"{path}{key}.")
    return unknown


@pytest.fixture(scope="module")
def deployment() -> Any:
    return structure(load())


@pytest.fixture(scope="module")
def bundle_settings() -> Settings:
    return parse_settings(yaml.safe_load(BUNDLE_FILE.read_text()), source=str(BUNDLE_FILE))


def test_the_file_loads_through_bentomls_schema(deployment: Any) -> None:
    assert deployment.name == "serving-bundle"
    assert deployment.bento


def test_a_misspelt_key_fails() -> None:
    data = load()
    data["services"][LLM]["scalling"] = data["services"][LLM].pop("scaling")
    with pytest.raises(AssertionError, match="scalling"):
        structure(data)
    data = load()
    data["enviroment"] = []
    with pytest.raises(AssertionError, match="enviroment"):
        structure(data)
    data = load()
    traffic = data["services"][LLM]["config_overrides"]["traffic"]
    traffic["concurency"] = traffic.pop("concurrency")
    assert override_problems(structure(data)) == [f"{LLM}: traffic.concurency"]


def test_the_services_are_exactly_the_bundles(deployment: Any) -> None:
    assert set(deployment.services) == set(bundle_services())


def test_each_service_has_an_instance_type_and_scaling(deployment: Any) -> None:
    from bentoml._internal.cloud.schemas.modelschemas import DeploymentStrategy

    strategies = {s.value for s in DeploymentStrategy}
    for name, service in deployment.services.items():
        assert service.instance_type, name
        scaling = service.scaling
        assert scaling.min_replicas is not None and scaling.max_replicas is not None, name
        assert 1 <= scaling.min_replicas <= scaling.max_replicas, name
        assert scaling.policy is not None, name
        assert scaling.policy.scale_up_behavior in SCALE_BEHAVIORS, name
        assert scaling.policy.scale_down_behavior in SCALE_BEHAVIORS, name
        if service.deployment_strategy is not None:
            assert service.deployment_strategy in strategies, name
    assert deployment.services[entry_service()].scaling.min_replicas >= 2  # no single gateway


def override_problems(deployment: Any) -> list[str]:
    """What BentoML's ServiceConfig rejects in each service's config_overrides."""
    from _bentoml_sdk.service.config import ServiceConfig, validate

    problems = []
    for name, service in deployment.services.items():
        overrides = service.config_overrides
        validate(overrides)  # types and bounds (raises)
        problems += [
            f"{name}: {key}" for key in unknown_service_config_keys(overrides, ServiceConfig)
        ]
    return problems


def test_config_overrides_are_bentoml_service_configs(deployment: Any) -> None:
    assert override_problems(deployment) == []
    for name, service in deployment.services.items():
        assert service.config_overrides["traffic"]["concurrency"] > 0, name


def test_concurrency_follows_the_bundle_settings(
    deployment: Any, bundle_settings: Settings
) -> None:
    concurrency = {
        name: service.config_overrides["traffic"]["concurrency"]
        for name, service in deployment.services.items()
    }
    s = bundle_settings
    assert concurrency[LLM] == s.llm.max_num_seqs
    for runner in dependencies():  # the batching runners: one full batch
        if runner != LLM:
            assert concurrency[runner] == getattr(s, runner).max_batch_size, runner
    assert {VISION, SPEECH} <= set(concurrency)
    # the gateway: what one replica admits to its backends at once, over its workers
    inflight = sum(
        s.admission[runner].max_inflight if runner in s.admission else 64
        for runner in dependencies()
    )
    assert concurrency[entry_service()] == inflight * s.gateway.workers


def test_the_bundle_config_is_a_mounted_secret(deployment: Any, bundle_settings: Settings) -> None:
    envs = {e.name: e.value for e in deployment.envs}
    assert envs["BUNDLE_CONFIG"].startswith(f"{BENTOML_HOME}/")
    assert envs[bundle_settings.auth.keys_file_env].startswith(f"{BENTOML_HOME}/")
    assert {"serving-bundle-config", "serving-bundle-keys"} <= set(deployment.secrets)
    # the commands in the file's header create the secrets at these paths
    header = DEPLOY_FILE.read_text()
    for env_name, secret in (("BUNDLE_CONFIG", "serving-bundle-config"),
                             ("BUNDLE_KEYS_FILE", "serving-bundle-keys")):  # fmt: skip
        path = Path(envs[env_name])
        relative = path.parent.relative_to(BENTOML_HOME)
        assert f"{secret} --type file --path '$BENTOML_HOME/{relative}'" in header
        assert f"{path.name}=@" in header


def test_the_bundle_config_parses(bundle_settings: Settings) -> None:
    assert bundle_settings.ratelimit.storage.startswith(("redis://", "rediss://"))
    assert bundle_settings.gateway.workers == 1
