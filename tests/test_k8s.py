"""The Kubernetes deployment (k8s/, Dockerfile) checked without a cluster: the standard kinds against Kubernetes'
own schemas (kubernetes-validate, strict), the Ray kinds against KubeRay's CRD schemas with unknown fields
rejected, and the references between the pieces (kustomization, image, MLflow service, Ray version, the
RayJob's config and resources). Each validation has a sibling that feeds a broken document and expects rejection."""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from mlflow.server.security_utils import is_allowed_host_header
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

from entropilot.platform.config import load_config

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
# KubeRay's CRDs (ray-project/kuberay, ray-operator/config/crd/bases, Apache-2.0), copied from the team's
# shared/kuberay-crds/ so that a clone without shared/ beside it (CI) validates against the same schemas.
CRDS = REPO / "tests" / "data" / "kuberay-crds"
SHARED_CRDS = REPO.parent / "shared" / "kuberay-crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
# A Kubernetes release kubernetes-validate ships schemas for; the manifests use nothing newer.
K8S_VERSION = "1.32"
TORCH_VERSION = "2.13.0"


# ------------------------------------------------------------------------------------------------ reading


def read_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def manifests() -> list[tuple[str, dict]]:
    """(file name, document) for every resource the kustomization lists."""
    return [(name, doc) for name in kustomization()["resources"] for doc in read_docs(K8S / name)]


def is_ray_kind(doc: dict) -> bool:
    return doc["apiVersion"].split("/")[0] == "ray.io"


def the(kind: str, name: str | None = None) -> dict:
    found = [doc for _, doc in manifests() if doc["kind"] == kind and name in (None, doc["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in k8s/, found {len(found)}"
    return found[0]


def doc_id(item: tuple[str, dict]) -> str:
    name, doc = item
    return f"{name}:{doc['kind']}/{doc['metadata']['name']}"


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", (REPO / "Dockerfile").read_text(), re.M))


def dockerfile_instruction(name: str) -> list[str]:
    return re.findall(rf"^{name} (.+)$", (REPO / "Dockerfile").read_text(), re.M)


def containers(node) -> list[dict]:
    """Every container (and init container) anywhere in a document: pod templates of any kind."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                found.extend(value)
            else:
                found.extend(containers(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(containers(value))
    return found


def ray_groups(cluster: dict) -> list[dict]:
    return [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]


# ----------------------------------------------------------------------------------------------- validation


def validate_standard(doc: dict) -> None:
    """Raises kubernetes_validate.ValidationError: the first violation of the Kubernetes schema, unknown fields
    included."""
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def strict_schema(schema: dict) -> dict:
    """A CRD's openAPIV3Schema that rejects what the API server would silently prune: `additionalProperties:
    false` on every object schema that lists its properties and neither sets additionalProperties nor keeps
    unknown fields. OpenAPI's int-or-string and nullable become plain JSON Schema."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: strict_schema(sub) for name, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict_schema(out["additionalProperties"])
    if "items" in out:
        out["items"] = strict_schema(out["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [strict_schema(sub) for sub in out[key]]
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


_RAY_VALIDATORS: dict[tuple[str, str], jsonschema.Draft4Validator] = {}


def ray_validator(kind: str, version: str) -> jsonschema.Draft4Validator:
    if (kind, version) not in _RAY_VALIDATORS:
        path = CRDS / CRD_FILES[kind]
        assert path.is_file(), f"KubeRay CRD {path} is missing"
        # libyaml's loader: the CRDs are 43,000 lines, which the pure-Python one takes seconds over.
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        schema = next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version)
        _RAY_VALIDATORS[kind, version] = jsonschema.Draft4Validator(strict_schema(schema))
    return _RAY_VALIDATORS[kind, version]


def ray_errors(doc: dict) -> list[str]:
    """'path: message' for every violation of the KubeRay CRD schema (with unknown fields rejected)."""
    validator = ray_validator(doc["kind"], doc["apiVersion"].split("/")[1])
    return [f"{'.'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}" for e in validator.iter_errors(doc)]


STANDARD_DOCS = [item for item in manifests() if not is_ray_kind(item[1])]
RAY_DOCS = [item for item in manifests() if is_ray_kind(item[1])]


@pytest.mark.parametrize("item", STANDARD_DOCS, ids=doc_id)
def test_standard_kinds_validate_strictly(item):
    validate_standard(item[1])


@pytest.mark.parametrize(
    "breakage, field",
    [
        (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolice="Always"), "imagePullPolice"),
        (lambda d: d["spec"].update(replicas="one"), "replicas"),
        (
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(containerPort="http"),
            "containerPort",
        ),
    ],
    ids=["unknown-field", "wrong-type", "wrong-type-deep"],
)
def test_strict_validation_rejects_a_broken_deployment(breakage, field):
    broken = copy.deepcopy(the("Deployment", "mlflow"))
    breakage(broken)
    with pytest.raises(kubernetes_validate.ValidationError) as err:
        validate_standard(broken)
    assert field in f"{list(err.value.path)} {err.value.message}"


@pytest.mark.parametrize("item", RAY_DOCS, ids=doc_id)
def test_ray_kinds_validate_against_kuberay_crds(item):
    assert ray_errors(item[1]) == []


def _worker(doc: dict, group: str) -> dict:
    return next(g for g in doc["spec"]["workerGroupSpecs"] if g["groupName"] == group)


@pytest.mark.parametrize(
    "kind, breakage, field",
    [
        ("RayCluster", lambda d: d["spec"].update(enableInTreeAutoscaler=True), "enableInTreeAutoscaler"),
        ("RayCluster", lambda d: _worker(d, "cpu").update(maxReplica=4), "maxReplica"),
        ("RayCluster", lambda d: _worker(d, "cpu").update(maxReplicas="4"), "maxReplicas"),
        (
            "RayCluster",
            lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(imagePullPolice="Always"),
            "imagePullPolice",
        ),
        (
            "RayCluster",
            lambda d: _worker(d, "cpu")["template"]["spec"]["containers"][0]["resources"]["limits"].update(cpu="four"),
            "limits.cpu",
        ),
        ("RayCluster", lambda d: d["spec"]["authOptions"].update(mode="password"), "authOptions.mode"),
        ("RayJob", lambda d: d["spec"].update(entrypointNumGpu=1), "entrypointNumGpu"),
        ("RayJob", lambda d: d["spec"].update(entrypoint=["entropilot", "train"]), "entrypoint"),
    ],
    ids=[
        "unknown-spec-field",
        "unknown-group-field",
        "wrong-type",
        "unknown-container-field",
        "bad-quantity",
        "bad-enum",
        "unknown-job-field",
        "wrong-job-type",
    ],
)
def test_crd_validation_rejects_broken_ray_documents(kind, breakage, field):
    broken = copy.deepcopy(the(kind))
    breakage(broken)
    errors = ray_errors(broken)
    assert errors, f"the broken {kind} passed validation"
    assert any(field in error for error in errors), errors


def test_int_or_string_quantities_take_both_forms():
    # Kubernetes writes quantities as 4 or "4"; the rewritten CRD schema must accept both and nothing else.
    cluster = copy.deepcopy(the("RayCluster"))
    limits = _worker(cluster, "cpu")["template"]["spec"]["containers"][0]["resources"]["limits"]
    for value, ok in ((4, True), ("4", True), ("500m", True), (4.5, False), (True, False)):
        limits["cpu"] = value
        assert (ray_errors(cluster) == []) is ok, value


# -------------------------------------------------------------------------------------- how the pieces fit


def test_kustomization_lists_every_manifest_and_each_exists():
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed))
    missing = [name for name in listed if not (K8S / name).is_file()]
    assert not missing, f"kustomization.yaml lists missing files: {missing}"
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk - set(listed) == set(), f"manifests not in kustomization.yaml: {sorted(on_disk - set(listed))}"


def test_every_pod_template_uses_a_kustomization_image():
    images = {entry["name"]: entry for entry in kustomization()["images"]}
    assert all(entry.get("newTag") for entry in images.values()), "set each image's tag in kustomization.yaml"
    used = set()
    for name, doc in manifests():
        for container in containers(doc):
            image = container["image"]
            assert image in images, (
                f"{name}: container {container['name']} uses image {image!r}; pod templates "
                f"name one of kustomization.yaml's images {sorted(images)} (tag set there)"
            )
            used.add(image)
    assert used == set(images), f"kustomization.yaml names images no pod uses: {sorted(set(images) - used)}"


def test_ray_version_agrees_between_dockerfile_pyproject_and_manifests():
    ray_version = dockerfile_args()["RAY_VERSION"]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    ray_pin = next(Requirement(dep) for dep in pyproject["project"]["dependencies"] if Requirement(dep).name == "ray")
    assert ray_pin.specifier.contains(ray_version), (
        f"Dockerfile RAY_VERSION {ray_version} outside pyproject's {ray_pin}"
    )
    versions = {doc_id((name, doc)): doc["spec"]["rayVersion"] for name, doc in RAY_DOCS if doc["kind"] == "RayCluster"}
    assert versions and set(versions.values()) == {ray_version}, versions


def test_dockerfile_builds_the_runtime_from_this_checkout():
    args = dockerfile_args()
    assert args["TORCH_VERSION"] == TORCH_VERSION
    assert dockerfile_instruction("FROM") == ["python:3.11-slim"]
    requires_python = SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"])
    assert requires_python.contains("3.11")
    for copy_line in dockerfile_instruction("COPY"):
        *sources, _ = copy_line.split()
        missing = [source for source in sources if not (REPO / source).exists()]
        assert not missing, f"Dockerfile copies paths this checkout lacks: {missing}"
    user = dockerfile_instruction("USER")[-1]
    assert user.isdigit() and int(user) != 0, "the image must end as a numeric non-root user (runAsNonRoot checks it)"
    pod_specs = [group["template"]["spec"] for group in ray_groups(the("RayCluster"))]
    pod_specs.append(the("Deployment", "mlflow")["spec"]["template"]["spec"])
    for spec in pod_specs:
        # The pods' fsGroup makes the volumes writable for exactly this user.
        assert str(spec["securityContext"]["runAsUser"]) == user, (
            f"pods run as {spec['securityContext']}, image as {user}"
        )
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "runs", "out", "mlruns"} <= ignored


def rayjob_command() -> tuple[Path, list[str]]:
    """The RayJob's `entropilot train CONFIG --set ...`: the config as a path in this checkout, and the overrides."""
    argv = shlex.split(the("RayJob")["spec"]["entrypoint"])
    assert argv[:2] == ["entropilot", "train"], argv
    config, rest = argv[2], argv[3:]
    assert len(rest) % 2 == 0 and rest[::2] == ["--set"] * (len(rest) // 2), f"only --set KEY=VALUE may follow: {rest}"
    workdir = dockerfile_instruction("WORKDIR")[-1]
    assert config.startswith(workdir + "/"), f"{config} is not in the image's copy of the project ({workdir})"
    return REPO / config.removeprefix(workdir + "/"), rest[1::2]


def test_rayjob_trains_a_config_of_this_repo():
    config, overrides = rayjob_command()
    assert config.is_file(), f"the RayJob trains {config}, which is not in the repository"
    load_config(config, overrides)


def test_rayjob_fits_the_cluster():
    """The Ray autoscaler's own reading of the RayCluster must be able to host the RayJob's driver (with a GPU for
    its learner) and the config's env runners, and only the CPU workers may take env runners."""
    job, cluster = the("RayJob"), the("RayCluster")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert cluster["spec"]["authOptions"]["mode"] == "token"
    for group in cluster["spec"]["workerGroupSpecs"]:
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], group["groupName"]
    cluster = copy.deepcopy(cluster)
    cluster["metadata"]["namespace"] = kustomization()["namespace"]
    node_types = _derive_autoscaling_config_from_ray_cr(cluster)["available_node_types"]

    driver = {
        "CPU": job["spec"].get("entrypointNumCpus", 0),
        "GPU": job["spec"].get("entrypointNumGpus", 0),
        **json.loads(job["spec"].get("entrypointResources", "{}")),
    }
    hosts = [
        name
        for name, node in node_types.items()
        if all(node["resources"].get(key, 0) >= amount for key, amount in driver.items())
    ]
    # The learner trains inside the driver: Ray hands the driver a GPU (CUDA_VISIBLE_DEVICES) only if it asks for one.
    assert driver["GPU"] >= 1, "the RayJob must ask for a GPU (entrypointNumGpus) for its driver's learner"
    assert hosts, f"no group offers the RayJob's entrypoint resources {driver}"

    cfg = load_config(*rayjob_command())
    needed = cfg.resources.num_env_runners * cfg.resources.num_cpus_per_env_runner
    capacity = sum(node["resources"].get("CPU", 0) * max(node["max_workers"], 1) for node in node_types.values())
    assert needed <= capacity, f"{needed} CPUs of env runners, the cluster holds at most {capacity}"
    cpu_groups = {name for name, node in node_types.items() if node["resources"].get("CPU", 0) > 0}
    assert cpu_groups == {"cpu"}, f"env runners could land on {sorted(cpu_groups)}"


def test_ray_pods_reach_the_mlflow_service_and_the_server_accepts_their_host_name():
    namespace = kustomization()["namespace"]
    service, deployment = the("Service", "mlflow"), the("Deployment", "mlflow")
    (port,) = service["spec"]["ports"]

    # The RayJob's driver, like every Ray process, gets MLFLOW_TRACKING_URI from the ConfigMap all Ray containers load.
    uris = set()
    for group in ray_groups(the("RayCluster")):
        ray_container = group["template"]["spec"]["containers"][0]
        (source,) = ray_container["envFrom"]
        uris.add(the("ConfigMap", source["configMapRef"]["name"])["data"]["MLFLOW_TRACKING_URI"])
    (uri,) = uris
    parts = urlsplit(uri)
    service_names = [
        service["metadata"]["name"] + suffix
        for suffix in ("", f".{namespace}", f".{namespace}.svc", f".{namespace}.svc.cluster.local")
    ]
    assert parts.hostname in service_names and parts.port == port["port"], (
        f"{uri} is not the Service {service_names[0]}"
    )

    # Service -> container port -> the server's --port, and probes on /health there.
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (container_port,) = [p for p in server["ports"] if port["targetPort"] in (p["name"], p["containerPort"])]
    args = dict(arg.removeprefix("--").partition("=")[::2] for arg in server["args"])
    assert int(args["port"]) == container_port["containerPort"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"]["path"] == "/health"
        assert server[probe]["httpGet"]["port"] in (container_port["name"], container_port["containerPort"])

    # MLflow 3 answers 403 to a Host it does not allow: the cluster names (and localhost, for port-forward) must pass,
    # a foreign name must not. Kubernetes expands $(POD_NAMESPACE) in args from the env the container declares.
    (pod_namespace,) = [e for e in server["env"] if e["name"] == "POD_NAMESPACE"]
    assert pod_namespace["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    allowed = args["allowed-hosts"].replace("$(POD_NAMESPACE)", namespace).split(",")
    for host in [*service_names, "localhost", "127.0.0.1"]:
        assert is_allowed_host_header(allowed, f"{host}:{port['port']}"), f"MLflow would refuse Host {host}"
    assert not is_allowed_host_header(allowed, f"mlflow.attacker.example:{port['port']}")

    # Store and artifacts on the claimed volume, served through the server with one worker (sqlite).
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    claims = {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    for path in (args["backend-store-uri"].removeprefix("sqlite:///"), args["artifacts-destination"]):
        assert any(path.startswith(mount + "/") and mounts[mount] in claims for mount in mounts), path
    assert args["backend-store-uri"].startswith("sqlite:////") and "serve-artifacts" in args and args["workers"] == "1"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
def test_kustomize_build_renders_namespaced_valid_manifests_with_the_set_images():
    rendered = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    docs = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    assert len(docs) == len(manifests())
    setting = kustomization()
    images = {f"{entry['newName']}:{entry['newTag']}" for entry in setting["images"]}
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == setting["namespace"], doc_id(("rendered", doc))
        assert {c["image"] for c in containers(doc)} <= images
        if is_ray_kind(doc):
            assert ray_errors(doc) == []
        else:
            validate_standard(doc)


@pytest.mark.skipif(not SHARED_CRDS.is_dir(), reason="no shared/kuberay-crds/ beside this checkout to compare with")
@pytest.mark.parametrize("name", sorted(CRD_FILES.values()))
def test_the_copied_crds_are_the_shared_ones(name):
    assert (CRDS / name).read_bytes() == (SHARED_CRDS / name).read_bytes(), f"tests/data/kuberay-crds/{name} is stale"
