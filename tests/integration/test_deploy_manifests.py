"""The deployment manifests (deploy/): rendered, validated, and checked against Turnout itself.

Each kustomize overlay is rendered with ``kubectl kustomize`` and every object validated against the
Kubernetes API's own schema (``kubernetes-validate``, strict: an unknown field fails); the
ServiceMonitor, a CRD that tool has no schema for, is checked by shape. Then what the manifests
claim about Turnout is checked against Turnout: the settings ConfigMaps are valid ``Settings``, the
probes and ports are the server's, the grace period outlasts the exit timeout, the autoscaler's
metric is one the server exports, and the dev overlay's init containers and settings, run here as
the pod would run them, give a server that serves the demo repository with the overlay's policy.
The KServe runtime and InferenceServices are read into the KServe SDK's classes (in its own venv,
KSERVE_PYTHON), and the runtime's arguments serve a model laid out as KServe's storage initializer
lays it out.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from tests.server_proc import DEMO_REPO, ROOT, ServerProc, start_server
from turnout.server.settings import Settings

DEPLOY = ROOT / "deploy"
OVERLAYS = ("dev", "production")
# Kubernetes versions validated against: an old one still in support somewhere, and the newest known
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def kubectl() -> str:
    """``KUBECTL`` or the kubectl on PATH. The manifests keep to what kubectl 1.20's kustomize
    (v2.0.3, Debian 12's kubernetes-client) reads as well as today's."""
    found = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed (.ci/run installs Debian's kubernetes-client)")
    return found


def render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(DEPLOY / "kubernetes" / "overlays" / request.param)


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [o["metadata"]["name"] for o in found])
    return found[0]


def container(deployment: dict[str, Any], name: str = "turnout") -> dict[str, Any]:
    (c,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def container_env(objects: list[dict[str, Any]], c: dict[str, Any]) -> dict[str, str]:
    """The variables the container gets from its ConfigMaps and literal values (not Secrets)."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    return env


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("TURNOUT_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def test_every_object_is_valid_for_the_kubernetes_api(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = overlay
    validated = 0
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRDS:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']} on {version}: {exc}")
        validated += 1
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "ServiceAccount"} <= kinds
    if name == "production":
        assert {"HorizontalPodAutoscaler", "ServiceMonitor"} <= kinds
    assert validated >= 6


def test_a_broken_object_does_fail_validation() -> None:
    (deployment,) = [
        o for o in render(DEPLOY / "kubernetes" / "overlays" / "dev") if o["kind"] == "Deployment"
    ]
    container(deployment)["readinesProbe"] = container(deployment)["readinessProbe"]  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_settings_ports_probes_and_grace_period_agree_with_turnout(
    overlay: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, objects = overlay
    deployment = one(objects, "Deployment", "turnout")
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    settings = settings_from(container_env(objects, c), monkeypatch)  # every TURNOUT_* is a real setting

    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": settings.http_port, "grpc": settings.grpc_port} == {"http": 8000, "grpc": 8001}
    assert settings.allow_http and settings.allow_grpc and not settings.tls_cert

    probes = {kind: c[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/v2/health/live"
    assert probes["readinessProbe"]["path"] == probes["startupProbe"]["path"] == "/v2/health/ready"
    assert all(p["port"] == "http" for p in probes.values())
    # the first loads may take as long as a process-isolated load may take
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= settings.process_load_timeout_s

    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + settings.exit_timeout_secs

    # non-root, read-only root; every directory Turnout writes is a volume
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    for each in [*pod["containers"], *pod.get("initContainers", [])]:
        sc = each["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"], each["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], each["name"]
        assert "limits" in each["resources"] and "requests" in each["resources"], each["name"]
    images = {each["image"] for each in [*pod["containers"], *pod.get("initContainers", [])]}
    assert len(images) == 1 and ":" in images.pop()  # one image, tagged, for every container
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/tmp", str(settings.state_dir), str(settings.repository_cache_dir)} <= mounts
    if not settings.is_remote:
        assert settings.model_repository in mounts
    volumes = {v["name"]: v for v in pod["volumes"]}
    for each in [*pod["containers"], *pod.get("initContainers", [])]:
        for m in each["volumeMounts"]:
            assert m["name"] in volumes, (each["name"], m["name"])
    for v in volumes.values():
        if "configMap" in v:
            one(objects, "ConfigMap", v["configMap"]["name"])

    # the Service: both protocols by name, gRPC as h2c; it and the PDB select the pods
    service = one(objects, "Service", "turnout")
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert by_name["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert {p["targetPort"] for p in by_name.values()} == set(ports)
    labels = pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_production_scales_on_a_metric_turnout_exports(demo_server: ServerProc) -> None:
    objects = render(DEPLOY / "kubernetes" / "overlays" / "production")
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "turnout"}
    by_type = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    custom = by_type["Pods"]["pods"]["metric"]["name"]
    scraped = httpx.get(f"{demo_server.base}/metrics", timeout=10).text
    assert f"\n{custom} " in scraped or f"\n{custom}{{" in scraped, custom
    assert f"# TYPE {custom} gauge" in scraped

    # the Prometheus adapter serves that name, from that series, per pod
    (adapter,) = yaml.safe_load_all((DEPLOY / "kubernetes" / "prometheus-adapter" / "rules.yaml").read_text())
    kubernetes_validate.validate(adapter, K8S_VERSIONS[-1], strict=True)
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    (rule,) = [r for r in rules if r["name"]["as"] == custom]
    assert rule["seriesQuery"].startswith(custom + "{")
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    for r in rules:
        series = r["seriesQuery"].split("{")[0]
        assert f"# TYPE {series} gauge" in scraped, series

    # the ServiceMonitor (a CRD: checked by shape) scrapes /metrics on the Service's http port
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service", "turnout")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels"}


@contextlib.contextmanager
def pod_like_server(
    objects: list[dict[str, Any]], root: Path, extra_env: dict[str, str] | None = None
) -> Iterator[ServerProc]:
    """An overlay's pod, here: its init containers' commands with the volume paths moved under
    ``root``, then Turnout with the container's settings (ports and host left to the test) and
    ``extra_env`` (what Secrets would give it)."""
    deployment = one(objects, "Deployment", "turnout")
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    moved: dict[str, str] = {}
    for each in [*pod["initContainers"], c]:
        for m in each["volumeMounts"]:
            moved[m["mountPath"]] = str(root / m["name"])
    policies = root / "policies"
    policies.mkdir(parents=True)
    (cm,) = [v["configMap"]["name"] for v in pod["volumes"] if v["name"] == "policies"]
    for key, text in one(objects, "ConfigMap", cm)["data"].items():
        (policies / key).write_text(text)

    pattern = re.compile("|".join(re.escape(p) for p in sorted(moved, key=len, reverse=True)))

    def move(text: str) -> str:  # one pass: a moved path is not moved again
        return pattern.sub(lambda m: moved[m.group(0)], text)

    for init in pod["initContainers"]:
        command = [move(part) for part in init["command"]]
        if command[0] == "python":
            command[0] = sys.executable
        out = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
        assert out.returncode == 0, (init["name"], out.stderr)
    env = {k: move(v) for k, v in container_env(objects, c).items()}
    for k in ("TURNOUT_HTTP_PORT", "TURNOUT_GRPC_PORT"):
        env.pop(k)
    env.update(extra_env or {})
    server = start_server(root / "run", repo=None, env=env)
    try:
        yield server
    finally:
        assert server.stop() == 0, server.log()


def test_the_dev_pod_serves_the_demo_repository_with_its_policy(tmp_path: Path) -> None:
    objects = render(DEPLOY / "kubernetes" / "overlays" / "dev")
    with pod_like_server(objects, tmp_path) as server:
        models = {m["name"] for m in httpx.post(f"{server.base}/v2/repository/index", timeout=10).json()}
        assert models == {p.name for p in DEMO_REPO.iterdir() if p.is_dir()}
        policy = httpx.get(f"{server.base}/admin/models/mlp/traffic", timeout=10).json()
        assert policy["stable"] == "1"
        assert policy["canaries"] == [{"version": "2", "weight": 0.1}]
        assert policy["shadows"] == [{"version": "2", "fraction": 0.2}]
        x = {"name": "input", "datatype": "FP32", "shape": [1, 32], "data": [0.5] * 32}
        r = httpx.post(f"{server.base}/v2/models/mlp/infer", json={"inputs": [x]}, timeout=10)
        assert r.status_code == 200 and r.json()["model_version"] in ("1", "2")


def test_the_production_pod_serves_its_s3_repository(tmp_path: Path) -> None:
    """The production overlay's settings against an S3-compatible server (moto, on loopback) that
    holds the demo repository under the overlay's bucket and prefix."""
    from moto.server import ThreadedMotoServer
    from s3fs import S3FileSystem

    objects = render(DEPLOY / "kubernetes" / "overlays" / "production")
    settings = container_env(objects, container(one(objects, "Deployment", "turnout")))
    bucket, _, prefix = settings["TURNOUT_MODEL_REPOSITORY"].removeprefix("s3://").partition("/")
    creds = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        endpoint = f"http://127.0.0.1:{moto._server.server_port}"
        # moto keeps its buckets per process, not per server: start from none, whatever ran before
        httpx.post(f"{endpoint}/moto-api/reset", timeout=10)
        fs = S3FileSystem(key="test", secret="test", client_kwargs={"endpoint_url": endpoint})
        fs.mkdir(bucket)
        for path in DEMO_REPO.rglob("*"):
            if path.is_file():
                fs.put_file(str(path), f"{bucket}/{prefix}/{path.relative_to(DEMO_REPO)}")
        # the Secret turnout-s3 gives the AWS_* variables; the endpoint is for a non-AWS store
        with pod_like_server(objects, tmp_path, {**creds, "TURNOUT_S3_ENDPOINT_URL": endpoint}) as server:
            x = {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}
            r = httpx.post(f"{server.base}/v2/models/iris/infer", json={"inputs": [x]}, timeout=10)
            assert r.status_code == 200, r.text
            assert any((tmp_path / "cache").rglob("model.onnx"))  # mirrored into the cache volume
    finally:
        moto.stop()


# -- KServe --------------------------------------------------------------------------------------

KSERVE = DEPLOY / "kserve"


@pytest.fixture(scope="module")
def kserve_python() -> str:
    python = os.environ.get("KSERVE_PYTHON") or str(ROOT / ".venv-kserve" / "bin" / "python")
    assert Path(python).is_file(), f"no KServe SDK interpreter at {python}: run `make kserve-sdk`"
    return python


def kserve_objects() -> dict[str, dict[str, Any]]:
    return {
        p.name: yaml.safe_load(p.read_text())
        for p in sorted(KSERVE.glob("*.yaml"))
        if p.name != "kustomization.yaml"
    }


def test_the_kserve_manifests_are_what_the_kserve_sdk_reads(kserve_python: str, tmp_path: Path) -> None:
    files = [str(KSERVE / name) for name in kserve_objects()]
    out = subprocess.run(
        [kserve_python, str(Path(__file__).with_name("kserve_manifest_check.py")), *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert {r["kind"] for r in report} == {"ClusterServingRuntime", "InferenceService"}
    assert [p for r in report for p in r["problems"]] == []
    # the checker does find mistakes
    bad = tmp_path / "bad.yaml"
    isvc = kserve_objects()["inference-service.yaml"]
    isvc["spec"]["predictor"]["model"]["storgeUri"] = isvc["spec"]["predictor"]["model"].pop("storageUri")
    bad.write_text(yaml.safe_dump(isvc))
    out = subprocess.run(
        [kserve_python, str(Path(__file__).with_name("kserve_manifest_check.py")), str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "storgeUri: not a field" in out.stdout, out.stdout + out.stderr
    # and the runtime renders with kustomize (kubectl apply -k deploy/kserve)
    assert [o["kind"] for o in render(KSERVE)] == ["ClusterServingRuntime"]


def test_the_runtime_serves_onnx_over_both_v2_protocols_for_its_inference_services() -> None:
    objects = kserve_objects()
    runtime = objects["cluster-serving-runtime.yaml"]
    spec = runtime["spec"]
    assert {"name": "onnx", "version": "1"}.items() <= spec["supportedModelFormats"][0].items()
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    (c,) = spec["containers"]
    assert c["name"] == "kserve-container"  # the container KServe merges the predictor into
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    for name in ("inference-service.yaml", "inference-service-grpc.yaml"):
        model = objects[name]["spec"]["predictor"]["model"]
        assert model["runtime"] == runtime["metadata"]["name"]
        assert model["modelFormat"]["name"] == "onnx"
        assert model["protocolVersion"] in spec["protocolVersions"]
    grpc_port = objects["inference-service-grpc.yaml"]["spec"]["predictor"]["model"]["ports"][0]
    assert grpc_port["name"] == "h2c" and f"--grpc-port={grpc_port['containerPort']}" in c["args"]
    assert "--http-port=8080" in c["args"]  # KServe's HTTP port
    # requests in flight finish before the kubelet's SIGKILL: the pod's grace period (Kubernetes'
    # default 30 s unless the predictor sets one) is above Turnout's exit timeout
    exit_timeout = float({e["name"]: e["value"] for e in c["env"]}["TURNOUT_EXIT_TIMEOUT_SECS"])
    for name in ("inference-service.yaml", "inference-service-grpc.yaml"):
        predictor = objects[name]["spec"]["predictor"]
        assert predictor.get("terminationGracePeriodSeconds", 30) > exit_timeout, name


@pytest.mark.parametrize("layout", ["model-file", "versions"])
def test_the_runtime_args_serve_what_the_storage_initializer_lays_out(tmp_path: Path, layout: str) -> None:
    """KServe copies the storageUri's contents into /mnt/models and fills in {{.Name}} with the
    InferenceService's name; the runtime's arguments, so prepared, serve the model under that name."""
    objects = kserve_objects()
    (c,) = objects["cluster-serving-runtime.yaml"]["spec"]["containers"]
    isvc = objects["inference-service.yaml"]["metadata"]["name"]
    mnt = tmp_path / "mnt" / "models"
    if layout == "model-file":  # storageUri: a directory with model.onnx
        mnt.mkdir(parents=True)
        shutil.copy(DEMO_REPO / "iris" / "1" / "model.onnx", mnt / "model.onnx")
    else:  # storageUri: a model directory of a Triton repository (numbered versions, config.pbtxt)
        shutil.copytree(DEMO_REPO / "iris", mnt)
    args = [a.replace("/mnt/models", str(mnt)).replace("{{.Name}}", isvc) for a in c["args"]]
    assert args[0] == "serve"
    env = {e["name"]: e["value"] for e in c["env"]}
    server = start_server(tmp_path / "run", repo=None, args=args[1:], env=env)
    try:
        assert httpx.get(f"{server.base}/v2/models/{isvc}/ready", timeout=10).status_code == 200
        x = {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}
        r = httpx.post(f"{server.base}/v2/models/{isvc}/infer", json={"inputs": [x]}, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["model_name"] == isvc
        assert {o["name"] for o in r.json()["outputs"]} == {"label", "probabilities"}
    finally:
        assert server.stop() == 0, server.log()


def test_a_storage_uri_that_is_not_one_model_stops_the_start_with_the_reason(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt" / "models"
    mnt.mkdir(parents=True)
    for name in ("a.onnx", "b.onnx"):
        shutil.copy(DEMO_REPO / "iris" / "1" / "model.onnx", mnt / name)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "turnout",
            "serve",
            str(mnt),
            "--single-model=iris",
            "--http-port=0",
            "--grpc-port=0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")},
        check=False,
    )
    assert out.returncode == 1, out.stderr
    assert "not exactly one .onnx file (a.onnx, b.onnx)" in out.stderr
