"""The Kubernetes deployment (deploy/kubernetes): both overlays render with `kubectl kustomize`,
every object is valid for Kubernetes' own schemas (offline, kubernetes_validate), and the
invariants the bundle depends on hold: how BentoML starts one service alone, probes, drain
deadlines against the grace periods, the mounted configuration and keys, Redis, autoscaling.

Unit tier: rendering and validation need no cluster.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from contract.names import LLM
from gateway.scope.keys import read_keys_file
from settings import Settings, parse_settings
from tests.deploy.bundle_services import bundle_services, dependencies, entry_service

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu")
GATEWAY = entry_service()
RUNNERS = dependencies()
SERVICES = bundle_services()  # the bundle's BentoML services (service.py), one Deployment each
BENTO_PATH = "/home/bentoml/bento"  # where BentoML's image has the Bento ($BENTO_PATH)
# Valid for the oldest Kubernetes still common and the newest kubernetes_validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
CRDS: frozenset[str] = frozenset()  # custom resources to skip in validation: none are used
LLM_STARTUP_WINDOW_S = 15 * 60  # vLLM with a real model on GPU can take minutes
REDIS_SCHEMES = ("redis", "rediss")


def kustomize(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: cannot render deploy/kubernetes (kubectl kustomize)")
    out = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"kubectl kustomize {overlay} failed:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def rendered(overlay: str) -> list[dict[str, Any]]:
    return kustomize(overlay)


class Objects:
    """The rendered objects by kind and name, with the lookups the checks share."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs
        self.by_kind: dict[str, dict[str, dict[str, Any]]] = {}
        for doc in docs:
            self.by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = self.by_kind.get(kind, {}).get(name)
        assert found is not None, (
            f"no {kind} named {name!r} (have {sorted(self.by_kind.get(kind, {}))})"
        )
        return found

    def deployment(self, name: str) -> dict[str, Any]:
        return self.get("Deployment", name)

    def service(self, name: str) -> dict[str, Any]:
        return self.get("Service", name)

    def mounted_file(self, deployment: dict[str, Any], path: str) -> str:
        """The text of the ConfigMap or Secret key mounted at `path` in the pod."""
        pod = deployment["spec"]["template"]["spec"]
        target = PurePosixPath(path)
        for mount in container(deployment).get("volumeMounts", []):
            base = PurePosixPath(mount["mountPath"])
            if target.parent != base:
                continue
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            if "configMap" in volume:
                data = self.get("ConfigMap", volume["configMap"]["name"]).get("data", {})
                return str(data[target.name])
            if "secret" in volume:
                secret = self.get("Secret", volume["secret"]["secretName"])
                if target.name in secret.get("stringData", {}):
                    return str(secret["stringData"][target.name])
                return base64.b64decode(secret["data"][target.name]).decode()
            raise AssertionError(f"{path} is mounted from {volume}, not a ConfigMap or Secret")
        raise AssertionError(f"nothing is mounted at {target.parent} for {path}")

    def settings(self, name: str) -> Settings:
        """The bundle configuration the named Deployment's pods read (BUNDLE_CONFIG)."""
        deployment = self.deployment(name)
        path = env(container(deployment)).get("BUNDLE_CONFIG")
        assert path, f"{name}: BUNDLE_CONFIG is not set"
        text = self.mounted_file(deployment, path)
        return parse_settings(yaml.safe_load(text), source=f"{name}:{path}")


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env", [])}


def port(c: dict[str, Any], name: str = "http") -> int:
    return int(next(p["containerPort"] for p in c["ports"] if p["name"] == name))


def prestop_s(c: dict[str, Any]) -> float:
    """How long the container's preStop hook waits (an exec `sleep N` or the sleep action)."""
    hook = c.get("lifecycle", {}).get("preStop")
    assert hook, f"{c['name']}: no preStop hook (endpoints must go before the drain refuses work)"
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, f"{c['name']}: preStop is {command}"
    return float(command[1])


def drain_s(settings: Settings, service: str) -> float:
    """The longest a service takes to stop after SIGTERM (lifecycle.py's Drain)."""
    drain = settings.drain
    if service == GATEWAY:
        return drain.timeout_s + drain.final_grace_s
    runner = drain.timeout_s + 2 * drain.final_grace_s + 5
    if service == LLM:
        runner += settings.llm.shutdown_timeout_s  # then vLLM's own --shutdown-timeout
    return runner


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


@pytest.fixture(scope="module")
def objects(rendered: list[dict[str, Any]]) -> Objects:
    return Objects(rendered)


def bundle_deployments(objects: Objects) -> Iterator[tuple[str, dict[str, Any]]]:
    for name in SERVICES:
        yield name, objects.deployment(name)


# --- schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_is_valid_for_kubernetes(rendered: list[dict[str, Any]], version: str) -> None:
    checked = 0
    for doc in rendered:
        if doc["kind"] in CRDS:
            continue
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{where} is not valid for Kubernetes {version}: {exc.message} at {list(exc.path)}"
            )
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{where}: {doc['apiVersion']} is not an API of Kubernetes {version}")
        checked += 1
    assert checked == len(rendered)
    kinds = {doc["kind"]: doc["apiVersion"] for doc in rendered}
    assert kinds["HorizontalPodAutoscaler"] == "autoscaling/v2"
    assert kinds["PodDisruptionBudget"] == "policy/v1"


def test_everything_is_in_one_namespace(rendered: list[dict[str, Any]]) -> None:
    (namespace,) = [doc["metadata"]["name"] for doc in rendered if doc["kind"] == "Namespace"]
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, doc["metadata"]


# --- one Deployment + Service per BentoML service, started the way BentoML runs one alone ---


def test_each_service_has_a_deployment_and_a_service(objects: Objects) -> None:
    for name, deployment in bundle_deployments(objects):
        labels = pod_labels(deployment)
        assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
        service = objects.service(name)
        assert selects(service["spec"]["selector"], labels), f"Service {name} misses its pods"
        svc_port = service["spec"]["ports"][0]
        assert svc_port["targetPort"] in ("http", port(container(deployment)))
        # the headless twin Prometheus resolves to every pod (deploy/prometheus/prometheus.yml)
        metrics = objects.service(f"{name}-metrics")
        assert metrics["spec"]["clusterIP"] == "None"
        assert metrics["spec"]["publishNotReadyAddresses"] is True
        assert selects(metrics["spec"]["selector"], labels)


def test_the_gateway_serves_kserve_grpc_on_its_service(objects: Objects) -> None:
    """gateway.grpc_port is a named container port, and the Service forwards it."""
    grpc_port = objects.settings("gateway").gateway.grpc_port
    assert grpc_port is not None
    ports = {p["name"]: p for p in container(objects.deployment("gateway"))["ports"]}
    assert ports["grpc"]["containerPort"] == grpc_port
    service_ports = {p["name"]: p for p in objects.service("gateway")["spec"]["ports"]}
    assert service_ports["grpc"]["targetPort"] == "grpc"


def engine_service(objects: Objects, dns: str) -> dict[str, Any]:
    """The Service a DNS name in the bundle's namespace names (short or qualified)."""
    (namespace,) = objects.by_kind["Namespace"]
    name, _, rest = dns.partition(".")
    assert rest in ("", namespace, f"{namespace}.svc", f"{namespace}.svc.cluster.local"), dns
    return objects.service(name)


def test_the_gateway_finds_every_llm_engine_by_a_headless_service(objects: Objects) -> None:
    """llm.engine_discover names a headless Service over the llm pods' engine port: its DNS name
    lists every ready pod, so each gateway worker sends each request to a pod it picks, at vLLM's
    own port (llm.port, on an interface the pod network reaches), and reads the pod's health
    and drain on the LLM service's port, where the readiness probe reads them."""
    llm = objects.settings(LLM).llm
    found = llm.engine_discover
    assert found is not None and llm.engine_url is None, "the llm pods by engine_discover"
    assert llm.host in ("0.0.0.0", "::")
    deployment = objects.deployment(LLM)
    c = container(deployment)
    assert found.port == llm.port == port(c, "engine")
    assert found.health_port == port(c)
    assert found.health_path == c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    service = engine_service(objects, found.dns)
    spec = service["spec"]
    assert spec["clusterIP"] == "None", "headless: one address per pod, not one per Service"
    assert spec.get("publishNotReadyAddresses", False) is False, "ready pods only"
    for name, other in bundle_deployments(objects):
        assert selects(spec["selector"], pod_labels(other)) == (name == LLM), name
    (engine,) = spec["ports"]
    assert engine["port"] == found.port
    assert engine["targetPort"] in ("engine", found.port)


def test_no_cluster_ip_leads_to_vllm(objects: Objects) -> None:
    """The llm Service forwards the LLM service's port only: a ClusterIP picks a pod once per
    connection, and pooled keep-alive connections to vLLM would stick to the pods they first
    reached."""
    llm = objects.settings(LLM).llm
    for service in objects.by_kind["Service"].values():
        spec = service["spec"]
        if spec.get("clusterIP") == "None":
            continue
        if selects(spec["selector"], pod_labels(objects.deployment(LLM))):
            targets = {p["targetPort"] for p in spec["ports"]}
            assert not targets & {"engine", llm.port}, service["metadata"]["name"]


def allowed_ports(policy: dict[str, Any], peer: dict[str, str], c: dict[str, Any]) -> set[int]:
    """The ports of the container `c` the policy lets pods labelled `peer` (same namespace)
    reach."""
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    ports: set[int] = set()
    for rule in policy["spec"]["ingress"]:
        if any(
            "namespaceSelector" not in p and selects(p["podSelector"]["matchLabels"], peer)
            for p in rule["from"]
        ):
            ports |= {named.get(p["port"], p["port"]) for p in rule["ports"]}
    return ports


def test_only_the_gateway_reaches_vllm_and_the_llm_pods_health(objects: Objects) -> None:
    """The gateway reaches each llm pod on vLLM's port and the service's port (its /readyz);
    vLLM's port, which takes requests without keys, is open to nothing else, and on no other
    runner."""
    found = objects.settings(LLM).llm.engine_discover
    assert found is not None and found.health_port is not None
    policies = objects.by_kind["NetworkPolicy"].values()
    gateway = pod_labels(objects.deployment(GATEWAY))
    for name, deployment in bundle_deployments(objects):
        if name == GATEWAY:
            continue
        labels = pod_labels(deployment)
        (policy,) = [p for p in policies if _selects_pod(p["spec"]["podSelector"], labels)]
        c = container(deployment)
        reached = allowed_ports(policy, gateway, c)
        if name == LLM:
            assert reached == {found.port, found.health_port}
        else:
            assert found.port not in reached, f"{name}: vLLM's port open where it is not served"
        for rule in policy["spec"]["ingress"]:
            if any(p["port"] in (found.port, "engine") for p in rule["ports"]):
                assert all("namespaceSelector" not in peer for peer in rule["from"])
                assert all(
                    selects(peer["podSelector"]["matchLabels"], gateway) for peer in rule["from"]
                )


def start_http_server_params(args: list[str]) -> dict[str, Any]:
    """What `bentoml start-http-server` (BentoML 1.4.39's own click command) parses from the
    container's arguments, as the image's entrypoint passes them on (with $BENTO_PATH last)."""
    from bentoml_cli._internal.start import start_command

    command = start_command.commands["start-http-server"]
    ctx = command.make_context("start-http-server", [*args, BENTO_PATH])
    return dict(ctx.params)


def test_entrypoint_runs_start_http_server_on_the_bento() -> None:
    """The image's entrypoint turns a first argument `start-http-server` into BentoML's
    start module on $BENTO_PATH, which the Deployments rely on (they set args, not command)."""
    import bentoml

    script = (
        Path(bentoml.__file__).parent / "_internal/container/frontend/dockerfile/entrypoint.sh"
    ).read_text()
    assert "[ \"${1}\" = 'start-http-server' ]" in script
    assert 'set -- python -m bentoml_cli._internal.start "${@:1}" "$BENTO_PATH"' in script
    from bentoml._internal.container.generate import BENTO_PATH as IMAGE_BENTO_PATH
    from bentoml._internal.container.generate import BENTO_UID_GID

    assert IMAGE_BENTO_PATH == BENTO_PATH
    assert BENTO_UID_GID == 1034  # the runAsUser of the bundle's pods


def test_each_container_starts_its_service_alone(objects: Objects) -> None:
    for name, deployment in bundle_deployments(objects):
        c = container(deployment)
        assert "command" not in c, f"{name}: keep the image's entrypoint (set args only)"
        args = c["args"]
        assert args[0] == "start-http-server", f"{name}: {args}"
        params = start_http_server_params(args[1:])
        assert params["service_name"] == name
        assert params["bento"] == BENTO_PATH
        assert params["host"] == "0.0.0.0"
        assert params["port"] == port(c)
        # start.py builds the dependency map as dict(s.split("=", maxsplit=2) for s in depends)
        depends = dict(s.split("=", maxsplit=2) for s in params["depends"])
        assert all(len(s.split("=", maxsplit=2)) == 2 for s in params["depends"])
        if name == GATEWAY:
            assert set(depends) == set(RUNNERS), f"the gateway depends on {RUNNERS}: {depends}"
        else:
            assert depends == {}, f"{name} depends on no other service"
        for dependency, url in depends.items():
            parts = urlsplit(url)
            assert parts.scheme == "http", url
            service = objects.service(str(parts.hostname))
            assert parts.hostname == dependency
            assert parts.port in [p["port"] for p in service["spec"]["ports"]], url
            assert selects(service["spec"]["selector"], pod_labels(objects.deployment(dependency)))


def test_the_deployed_services_are_the_bundles() -> None:
    deployed = {
        d["metadata"]["name"]
        for d in kustomize("cpu")
        if d["kind"] == "Deployment" and d["metadata"]["name"] != "redis"
    }
    assert deployed == set(SERVICES)


# --- probes and stopping --------------------------------------------------------------------


def test_probes(objects: Objects) -> None:
    for name, deployment in bundle_deployments(objects):
        c = container(deployment)
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert c["livenessProbe"]["httpGet"]["path"] == "/livez", name
        assert c["startupProbe"]["httpGet"]["path"] == "/livez", name
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert c[probe]["httpGet"]["port"] in ("http", port(c)), (name, probe)


def test_the_llm_startup_probe_waits_for_vllm(objects: Objects) -> None:
    probe = container(objects.deployment(LLM))["startupProbe"]
    window = (
        probe.get("initialDelaySeconds", 0) + probe["periodSeconds"] * probe["failureThreshold"]
    )
    assert window >= LLM_STARTUP_WINDOW_S, f"startupProbe allows {window} s"
    # and a rollout is not reported stuck before that
    deadline = objects.deployment(LLM)["spec"].get("progressDeadlineSeconds", 600)
    assert deadline >= window


def test_termination_grace_covers_prestop_and_drain(objects: Objects) -> None:
    for name, deployment in bundle_deployments(objects):
        settings = objects.settings(name)
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        needed = prestop_s(container(deployment)) + drain_s(settings, name)
        assert grace >= needed, f"{name}: terminationGracePeriodSeconds {grace} < {needed}"


# --- configuration, keys, Redis -------------------------------------------------------------


def test_every_service_reads_the_bundle_config(objects: Objects) -> None:
    configs = {name: objects.settings(name) for name in SERVICES}
    assert len({s.model_dump_json() for s in configs.values()}) == 1, "one config for all"


def test_the_gateway_reads_the_api_keys_secret(objects: Objects, tmp_path: Path) -> None:
    deployment = objects.deployment(GATEWAY)
    settings = objects.settings(GATEWAY)
    path = env(container(deployment)).get(settings.auth.keys_file_env)
    assert path, f"{settings.auth.keys_file_env} is not set on the gateway"
    text = objects.mounted_file(deployment, path)
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v)
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "keys readable by others"
    keys = tmp_path / "keys.yaml"
    keys.write_text(text)
    assert read_keys_file(keys), "the keys file holds no entry (auth would be off)"


def test_rate_limits_are_shared_through_the_redis_service(objects: Objects) -> None:
    settings = objects.settings(GATEWAY)
    storages = [settings.ratelimit.storage]
    if settings.cache.storage != "memory://":
        storages.append(settings.cache.storage)
    redis = objects.deployment("redis")
    redis_port = port(container(redis), "redis")
    for storage in storages:
        url = urlsplit(storage)
        assert url.scheme in REDIS_SCHEMES, storage
        service = objects.service(str(url.hostname))
        assert selects(service["spec"]["selector"], pod_labels(redis)), storage
        (svc_port,) = service["spec"]["ports"]
        assert svc_port["port"] == url.port, storage
        assert svc_port["targetPort"] in ("redis", redis_port)


def test_gpu_config_differs_from_cpu_only_in_the_engine() -> None:
    cpu, gpu = (Objects(kustomize(o)).settings(LLM) for o in OVERLAYS)
    assert cpu.model_copy(update={"llm": gpu.llm}) == gpu
    raw = yaml.safe_load((KUBERNETES / "gpu" / "bundle.yaml").read_text())
    assert "gpu_memory_utilization" in raw["llm"]


# --- pods -----------------------------------------------------------------------------------


def test_llm_has_a_memory_backed_dev_shm(objects: Objects) -> None:
    pod = objects.deployment(LLM)["spec"]["template"]["spec"]
    (mount,) = [
        m
        for m in container(objects.deployment(LLM))["volumeMounts"]
        if m["mountPath"] == "/dev/shm"
    ]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}


def test_pods_run_as_non_root(objects: Objects) -> None:
    for deployment in objects.by_kind["Deployment"].values():
        pod = deployment["spec"]["template"]["spec"]
        name = deployment["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["enableServiceLinks"] is False, name
        c = container(deployment)
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], name


def test_resources(objects: Objects, overlay: str) -> None:
    for deployment in objects.by_kind["Deployment"].values():
        c = container(deployment)
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (c["name"], kind)
    llm = container(objects.deployment(LLM))["resources"]
    if overlay == "gpu":
        assert llm["limits"]["nvidia.com/gpu"] == 1
        assert llm["requests"]["nvidia.com/gpu"] == 1
    else:
        assert "nvidia.com/gpu" not in llm["limits"]


def test_one_image_set_in_one_place(objects: Objects, overlay: str) -> None:
    images = {container(d)["image"] for _, d in bundle_deployments(objects)}
    assert len(images) == 1, images
    kustomization = yaml.safe_load((KUBERNETES / overlay / "kustomization.yaml").read_text())
    (entry,) = kustomization["images"]
    assert entry["name"] == "serving-bundle"
    assert images == {f"{entry['newName']}:{entry['newTag']}"}
    assert ("cuda" in entry["newTag"]) == (overlay == "gpu")


# --- disruption and autoscaling -------------------------------------------------------------


def test_each_service_has_a_pdb(objects: Objects) -> None:
    budgets = objects.by_kind["PodDisruptionBudget"].values()
    for name, deployment in bundle_deployments(objects):
        matching = [
            b
            for b in budgets
            if selects(b["spec"]["selector"]["matchLabels"], pod_labels(deployment))
        ]
        assert len(matching) == 1, f"{name}: {len(matching)} PodDisruptionBudgets"


def adapter_metrics() -> dict[str, dict[str, Any]]:
    """The custom metrics prometheus-adapter serves, by name (its rules: deploy/kubernetes/
    prometheus-adapter.yaml)."""
    values = yaml.safe_load((KUBERNETES / "prometheus-adapter.yaml").read_text())
    return {rule["name"]["as"]: rule for rule in values["rules"]["custom"]}


def test_each_service_has_an_hpa(objects: Objects) -> None:
    served = adapter_metrics()
    hpas = {
        h["spec"]["scaleTargetRef"]["name"]: h
        for h in objects.by_kind["HorizontalPodAutoscaler"].values()
    }
    assert set(hpas) == set(SERVICES)
    # the gateway on CPU, the engine on its queue, the batching runners on requests in progress
    expected = {name: ("Object", "bentoml_service_request_in_progress") for name in RUNNERS}
    expected |= {GATEWAY: ("Resource", "cpu"), LLM: ("Object", "vllm_num_requests_waiting")}
    for name, hpa in hpas.items():
        spec = hpa["spec"]
        assert spec["scaleTargetRef"]["kind"] == "Deployment"
        assert "replicas" not in objects.deployment(name)["spec"], f"{name}: the HPA owns replicas"
        assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
        (metric,) = spec["metrics"]
        kind, metric_name = expected[name]
        assert metric["type"] == kind, name
        if kind == "Resource":
            assert metric["resource"]["name"] == metric_name
            continue
        target = metric["object"]
        assert target["metric"]["name"] == metric_name
        assert target["target"]["type"] == "AverageValue", f"{name}: per-pod average"
        assert target["describedObject"] == {"apiVersion": "v1", "kind": "Service", "name": name}
        rule = served.get(metric_name)
        assert rule is not None, f"{name}: prometheus-adapter serves no {metric_name}"
        assert rule["resources"]["overrides"]["service"] == {"resource": "service"}
        assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}


def test_network_policies_keep_the_gateway_as_the_runners_only_client(objects: Objects) -> None:
    policies = objects.by_kind["NetworkPolicy"].values()
    gateway = pod_labels(objects.deployment(GATEWAY))
    for name in (*RUNNERS, "redis"):
        labels = pod_labels(objects.deployment(name))
        (policy,) = [p for p in policies if _selects_pod(p["spec"]["podSelector"], labels)]
        peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
        same_namespace = [p for p in peers if "namespaceSelector" not in p]
        assert all(selects(p["podSelector"]["matchLabels"], gateway) for p in same_namespace), name
    assert not any(_selects_pod(p["spec"]["podSelector"], gateway) for p in policies)


def _selects_pod(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selects(selector.get("matchLabels", {}), labels):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True
