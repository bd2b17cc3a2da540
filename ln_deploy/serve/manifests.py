"""Kubernetes and KServe manifests for a Triton repository written by ``ln-deploy package``, validated.

``generate_manifests(repo, out_dir, options)`` reads the repository (every ``config.pbtxt``, the model
files, the plugin libraries and ``tritonserver.args``), builds

- ``kserve.yaml``: a KServe ``InferenceService`` (``serving.kserve.io/v1beta1``) on KServe's Triton
  runtime (``kserve-tritonserver``), with the repository's ``storageUri``, the plugin flag as runtime
  arguments (plugin paths under ``/mnt/models``, where KServe puts the repository), a GPU for engines
  and ``KIND_GPU`` models, and concurrency autoscaling from the models' batch sizes;
- ``kubernetes.yaml``: for clusters without KServe, a ``Deployment`` (the Triton image of ``docker/``,
  user 10001, ports 8000/8001/8002, repository mounted read-only from a PVC or copied from object
  storage by an init container, probes on ``/v2/health/{live,ready}``, Prometheus annotations,
  requests and limits), a ``Service``, a ``HorizontalPodAutoscaler`` and a ``PodDisruptionBudget``;

validates every object against the official schemas (Kubernetes objects with ``kubernetes-validate``,
strict; the ``InferenceService`` with ``jsonschema`` against the ``openAPIV3Schema`` of the KServe CRD
the caller passes, made strict the way ``kubectl``'s strict field validation is) and only then writes
the files, each atomically. The CRD is not bundled (see docs/scaling.md): without one, ``kserve.yaml``
is not written and the result says how to get the cluster's own.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInputError, CheckFailedError, require

# The Kubernetes release the plain objects are validated against by default (kubernetes-validate's
# bundled schemas). Every API used is stable well before it: apps/v1, v1, autoscaling/v2 (1.23),
# policy/v1 (1.21).
KUBERNETES_VERSION = "1.32"
# docker/Dockerfile.serve's NGC_RELEASE (a test keeps them equal): the Triton release whose TensorRT
# the engines and the plugin are built with; KServe's runtime is pinned to the same release.
TRITON_RELEASE = "25.10"
IMAGE = "ln-deploy-serve"  # `docker build -f docker/Dockerfile.serve -t ln-deploy-serve .`
IMAGE_USER = 10001  # Dockerfile.serve: useradd --uid 10001, USER 10001
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002  # Dockerfile.serve EXPOSE, Triton's defaults
KSERVE_RUNTIME = "kserve-tritonserver"  # KServe's ClusterServingRuntime for Triton
KSERVE_MODEL_ROOT = "/mnt/models"  # where KServe's storage initializer puts storageUri
# Images of the init container that copies the repository from object storage (plain Kubernetes).
COPY_IMAGES = {"s3": "amazon/aws-cli:2.17.0", "gs": "google/cloud-sdk:489.0.0-slim"}
GPU_RESOURCE = "nvidia.com/gpu"  # NVIDIA's device plugin
KSERVE_FILE, KUBERNETES_FILE = "kserve.yaml", "kubernetes.yaml"
MAX_CRD_BYTES = 64 << 20
_MI = 1 << 20
_GI = 1 << 30


@dataclass
class ModelFacts:
    """What one model of the repository contributes to a pod (read from its config and files)."""

    name: str
    platform: str
    max_batch_size: int
    instances: int
    gpu: bool  # a TensorRT engine or a KIND_GPU instance group
    bytes: int  # the served version folder: model, external data, plugins

    @property
    def batch(self) -> int:
        return max(1, self.max_batch_size)


@dataclass
class RepositoryFacts:
    root: Path
    models: list[ModelFacts]
    plugins: list[str]  # plugin libraries, relative to the repository root (posix)
    args_root: str | None  # the mount point tritonserver.args' plugin paths were written for
    bytes: int  # every file of the repository (what a copy brings)

    @property
    def gpu(self) -> bool:
        return any(m.gpu for m in self.models)

    @property
    def concurrency_target(self) -> int:
        """Requests one replica serves at once: a full batch in every instance of every model."""
        return sum(m.batch * m.instances for m in self.models)

    @property
    def pending_target(self) -> int:
        """Queued requests per replica worth another replica: one full batch waiting per model."""
        return sum(m.batch for m in self.models)


@dataclass
class Storage:
    uri: str
    scheme: str  # s3, gs, pvc
    bucket_or_claim: str
    path: str  # inside the bucket or the claim, no leading or trailing '/'


@dataclass
class ManifestOptions:
    storage_uri: str
    name: str | None = None  # default: the repository's only model, else the repository folder
    image: str = IMAGE
    namespace: str | None = None
    service_account: str | None = None
    min_replicas: int = 1
    max_replicas: int = 4
    model_root: str | None = None  # plain Kubernetes mount point (default: tritonserver.args', else /models)
    kubernetes_version: str = KUBERNETES_VERSION
    kserve_crd: str | os.PathLike | None = None
    triton_release: str = TRITON_RELEASE
    copy_image: str | None = None  # the init container's image (default COPY_IMAGES[scheme])
    kserve_mode: str = "knative"  # KServe's deployment mode: knative (Knative Serving) or standard (Deployment + HPA)


@dataclass
class ManifestResult:
    files: list[Path]
    kserve: dict
    kubernetes: list[dict]
    facts: RepositoryFacts
    kubernetes_version: str
    kserve_skipped: str | None = None  # why kserve.yaml was not written
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote {p} (validated)" for p in self.files]
        if self.kserve_skipped:
            lines.append(f"{KSERVE_FILE} not written: {self.kserve_skipped}")
        return "\n".join(lines)


# ---- reading the package ---------------------------------------------------------------------------

def read_repository(repo: str | os.PathLike) -> RepositoryFacts:
    """Every model of a repository written by ``ln-deploy package``, each validated against its model."""
    from .model_config import model_config_pb2
    from .repository import (ARGS_FILE, PLAN_PLATFORM, plugin_libraries, validate_model_dir,
                             version_dirs)

    root = Path(repo)
    if not root.is_dir():
        raise BadInputError(f"not a model repository (no such directory): {root}")
    kind_gpu = model_config_pb2().ModelInstanceGroup.KIND_GPU
    models = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (model_dir / "config.pbtxt").is_file():
            continue
        try:  # the package's own check (config against the model); ORT opened it when it was written
            config = validate_model_dir(model_dir, ort_check=False)
        except CheckFailedError as e:
            raise BadInputError(f"{root} is not a valid repository: {e}") from None
        platform = config.platform or {"onnxruntime": "onnxruntime_onnx", "tensorrt": PLAN_PLATFORM}[config.backend]
        served = version_dirs(model_dir)[0]
        models.append(ModelFacts(
            name=config.name, platform=platform, max_batch_size=config.max_batch_size,
            instances=sum(g.count for g in config.instance_group),
            gpu=platform == PLAN_PLATFORM or any(g.kind == kind_gpu for g in config.instance_group),
            bytes=_tree_bytes(served)))
    if not models:
        raise BadInputError(f"{root}: no model folder with a config.pbtxt (write one with `ln-deploy package`)")
    plugins = [lib.relative_to(root).as_posix() for lib in plugin_libraries(root)]
    return RepositoryFacts(root, models, plugins, _args_root(root / ARGS_FILE, plugins), _tree_bytes(root))


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            p = Path(dirpath) / f
            if not f.startswith(".") and p.is_file() and not p.is_symlink():
                total += p.stat().st_size
    return total


def _args_root(args_file: Path, plugins: list[str]) -> str | None:
    """The mount point ``tritonserver.args`` was written for (the image's entrypoint passes its flag);
    refuses a file that does not name exactly the repository's plugins."""
    if not plugins:
        return None
    try:
        lines = [ln.strip() for ln in args_file.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError):
        raise BadInputError(f"{args_file} is missing or unreadable; the repository has plugins "
                            f"({', '.join(plugins)}): re-run `ln-deploy package`") from None
    prefix = "--backend-config=tensorrt,plugins="
    paths = [p for ln in lines if ln.startswith(prefix) for p in ln[len(prefix):].split(";")]
    roots = set()
    for rel in plugins:
        hits = [p for p in paths if p.endswith("/" + rel)]
        if len(hits) != 1:
            roots = set()
            break
        roots.add(hits[0][:-len(rel) - 1] or "/")
    if len(roots) != 1 or len(paths) != len(plugins):
        raise BadInputError(f"{args_file} does not list the repository's plugins ({', '.join(plugins)}): "
                            "re-run `ln-deploy package`")
    return roots.pop()


def parse_storage_uri(uri: str) -> Storage:
    m = re.fullmatch(r"(s3|gs|pvc)://([^/\s]+)(/[^\s]*)?", uri or "")
    if not m:
        raise BadInputError(f"--storage-uri {uri!r}: expected s3://BUCKET/PATH, gs://BUCKET/PATH or pvc://CLAIM/PATH "
                            "(where the repository is uploaded)")
    scheme, head, path = m.group(1), m.group(2), (m.group(3) or "").strip("/")
    if any(part in (".", "..") for part in path.split("/")) or "//" in path:
        raise BadInputError(f"--storage-uri {uri!r}: the path must not contain '.', '..' or empty segments")
    if scheme == "pvc" and not _is_dns_subdomain(head):
        raise BadInputError(f"--storage-uri {uri!r}: {head!r} is not a PersistentVolumeClaim name")
    return Storage(uri.rstrip("/") if path else f"{scheme}://{head}", scheme, head, path)


def _is_dns_label(s: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", s))


def _is_dns_subdomain(s: str) -> bool:
    return len(s) <= 253 and all(_is_dns_label(p) for p in s.split("."))


def object_name(name: str) -> str:
    """A model name as a Kubernetes object name: a DNS-1035 label, short enough for KServe's derived
    names (``NAME-predictor-00001`` and its Knative revisions must stay within 63 characters)."""
    s = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    s = re.sub(r"-{2,}", "-", s)
    if s and not s[0].isalpha():
        s = "m-" + s
    s = s[:45].rstrip("-")
    if not s:
        raise BadInputError(f"name {name!r} has nothing usable as a Kubernetes object name")
    return s


# ---- building the objects --------------------------------------------------------------------------

@dataclass
class _Resources:
    cpu: int
    memory_request: int
    memory_limit: int
    gpu: bool

    def as_k8s(self) -> dict:
        requests = {"cpu": str(self.cpu), "memory": _mib(self.memory_request)}
        limits = {"cpu": str(2 * self.cpu), "memory": _mib(self.memory_limit)}
        if self.gpu:  # an extended resource: requests must equal limits
            requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = "1"
        return {"requests": requests, "limits": limits}


def _mib(n: int) -> str:
    return f"{math.ceil(n / (64 * _MI)) * 64}Mi"  # whole 64 MiB steps


def pod_resources(facts: RepositoryFacts) -> _Resources:
    """Requests and limits from the models: one CPU per CPU instance (at least one: Triton's own
    threads), memory for Triton itself (2 GiB with a CUDA context, else 1 GiB) plus twice each
    instance's copy of its model (ORT/TensorRT hold the weights and their working copies), doubled
    for the limit; one GPU when any model runs on one."""
    cpu_instances = sum(m.instances for m in facts.models if not m.gpu)
    base = 2 * _GI if facts.gpu else _GI
    memory = base + 2 * sum(m.instances * m.bytes for m in facts.models)
    return _Resources(cpu=max(1, cpu_instances), memory_request=memory, memory_limit=2 * memory, gpu=facts.gpu)


def _labels(name: str) -> dict:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "triton",
            "app.kubernetes.io/managed-by": "ln-deploy"}


def _metadata(name: str, namespace: str | None, annotations: dict | None = None) -> dict:
    meta: dict = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = _labels(name)
    if annotations:
        meta["annotations"] = annotations
    return meta


def plugin_flag(plugins: list[str], root: str) -> list[str]:
    """Triton's plugin flag for libraries at ``root``/``rel`` (as ``package`` writes tritonserver.args)."""
    if not plugins:
        return []
    return ["--backend-config=tensorrt,plugins=" + ";".join(f"{root.rstrip('/')}/{rel}" for rel in plugins)]


def inference_service(facts: RepositoryFacts, storage: Storage, opts: ManifestOptions, name: str) -> dict:
    model: dict = {
        "modelFormat": {"name": "triton"},  # a whole Triton repository (KServe's runtime lists triton v2)
        "runtime": KSERVE_RUNTIME,
        "runtimeVersion": f"{opts.triton_release}-py3",  # the engines' and the plugin's TensorRT
        "protocolVersion": "v2",
        "storageUri": storage.uri,
    }
    args = plugin_flag(facts.plugins, KSERVE_MODEL_ROOT)
    if args:
        model["args"] = args  # appended to the runtime's `tritonserver --model-store=/mnt/models ...`
    model["resources"] = pod_resources(facts).as_k8s()
    predictor: dict = {"minReplicas": opts.min_replicas, "maxReplicas": opts.max_replicas}
    if opts.kserve_mode == "knative":  # Knative's autoscaler: requests in flight per replica
        predictor.update(scaleMetric="concurrency", scaleTarget=facts.concurrency_target)
    else:  # Standard mode scales with an HPA, which KServe lets use CPU or memory only
        predictor.update(scaleMetric="cpu", scaleTarget=80)
    if opts.service_account:
        predictor["serviceAccountName"] = opts.service_account
    predictor["model"] = model
    # KServe >= 0.16's names (Serverless and RawDeployment before); explicit, since the cluster's default varies
    annotations = {"serving.kserve.io/deploymentMode": "Knative" if opts.kserve_mode == "knative" else "Standard",
                   "serving.kserve.io/enable-prometheus-scraping": "true"}
    if opts.kserve_mode == "standard":
        annotations["serving.kserve.io/autoscalerClass"] = "hpa"
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": _metadata(name, opts.namespace, annotations), "spec": {"predictor": predictor}}


def _security_context() -> dict:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
            "runAsUser": IMAGE_USER, "runAsGroup": IMAGE_USER}


def _repository_volume(facts: RepositoryFacts, storage: Storage, opts: ManifestOptions,
                       root: str) -> tuple[dict, dict, list[dict]]:
    """(volume, the server's volumeMount, init containers): a PVC mounted read-only, or an emptyDir the
    init container fills from object storage, mounted read-only into the server."""
    mount: dict = {"name": "model-repository", "mountPath": root, "readOnly": True}
    if storage.scheme == "pvc":
        volume = {"name": "model-repository",
                  "persistentVolumeClaim": {"claimName": storage.bucket_or_claim, "readOnly": True}}
        if storage.path:
            mount["subPath"] = storage.path
        return volume, mount, []
    size = _mib(facts.bytes + facts.bytes // 4 + 64 * _MI)  # the copy, with room for the CLI's temporaries
    volume = {"name": "model-repository", "emptyDir": {"sizeLimit": size}}
    source = storage.uri
    if storage.scheme == "s3":
        command = ["aws", "s3", "cp", "--recursive", "--only-show-errors", source, root]
        env = [{"name": "HOME", "value": "/tmp"}]
    else:
        command = ["gcloud", "storage", "rsync", "--recursive", source, root]
        env = [{"name": "HOME", "value": "/tmp"}, {"name": "CLOUDSDK_CONFIG", "value": "/tmp/gcloud"}]
    init = {"name": "copy-repository", "image": opts.copy_image or COPY_IMAGES[storage.scheme],
            "command": command, "env": env,
            "volumeMounts": [{"name": "model-repository", "mountPath": root}],
            "resources": {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
            "securityContext": _security_context()}
    return volume, mount, [init]


def kubernetes_objects(facts: RepositoryFacts, storage: Storage, opts: ManifestOptions, name: str) -> list[dict]:
    root = opts.model_root or facts.args_root or "/models"
    if facts.args_root and root != facts.args_root:
        raise BadInputError(f"--model-root {root}: the repository's tritonserver.args names plugins under "
                            f"{facts.args_root} (re-run `ln-deploy package --model-root {root}`)")
    if not root.startswith("/") or root == "/":
        raise BadInputError(f"--model-root must be an absolute path inside the container, got {root!r}")
    labels = _labels(name)
    volume, mount, init = _repository_volume(facts, storage, opts, root)
    probe = {"httpGet": {"path": "/v2/health/live", "port": "http"}}
    server = {
        "name": "triton",
        "image": opts.image,
        "imagePullPolicy": "IfNotPresent",
        # the image's entrypoint passes tritonserver.args' plugin flag; it reads the repository here
        "env": [{"name": "MODEL_REPOSITORY", "value": root}],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
                  {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        # Dockerfile.serve's HEALTHCHECK: start period 120 s, every 15 s, timeout 5 s, 3 retries
        "startupProbe": {**probe, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 12},
        "livenessProbe": {**probe, "periodSeconds": 15, "timeoutSeconds": 5, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"},
                           "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3},
        "resources": pod_resources(facts).as_k8s(),
        "securityContext": _security_context(),
        "volumeMounts": [mount],
    }
    pod_spec: dict = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": IMAGE_USER, "runAsGroup": IMAGE_USER,
                            "fsGroup": IMAGE_USER, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if opts.service_account:
        pod_spec["serviceAccountName"] = opts.service_account
    if facts.gpu:  # GPU nodes are commonly tainted so that only pods asking for a GPU land there
        pod_spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    if init:
        pod_spec["initContainers"] = init
    pod_spec["containers"] = [server]
    pod_spec["volumes"] = [volume]
    prometheus = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                  "prometheus.io/path": "/metrics"}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _metadata(name, opts.namespace),
        "spec": {
            "replicas": opts.min_replicas,
            "selector": {"matchLabels": labels},
            # one new pod before an old one goes: capacity never drops during a rollout
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": labels, "annotations": prometheus}, "spec": pod_spec},
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _metadata(name, opts.namespace, prometheus),
        "spec": {"type": "ClusterIP", "selector": labels,
                 "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                           {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                           {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}]},
    }
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(name, opts.namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": opts.min_replicas, "maxReplicas": opts.max_replicas,
            "metrics": [
                # Triton's queue (served to the HPA by a Prometheus adapter): a full batch waiting per model
                {"type": "Pods", "pods": {"metric": {"name": "nv_inference_pending_request_count"},
                                          "target": {"type": "AverageValue",
                                                     "averageValue": str(facts.pending_target)}}},
                # works with metrics-server alone
                {"type": "Resource", "resource": {"name": "cpu",
                                                  "target": {"type": "Utilization", "averageUtilization": 80}}},
            ],
        },
    }
    pdb = {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": _metadata(name, opts.namespace),
        # maxUnavailable, not minAvailable: with one replica minAvailable 1 would block every node drain
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
    }
    return [deployment, service, hpa, pdb]


# ---- validation ------------------------------------------------------------------------------------

def kubernetes_versions() -> list[str]:
    from packaging.version import Version

    kv = require("kubernetes_validate", "k8s", "kubernetes-validate")
    return sorted({".".join(v.split(".")[:2]) for v in kv.utils.all_versions()}, key=Version)


def check_kubernetes_version(version: str) -> str:
    v = str(version).removeprefix("v")
    m = re.fullmatch(r"(\d+)\.(\d+)(\.\d+)?", v)
    known = kubernetes_versions()
    if not m or f"{m.group(1)}.{m.group(2)}" not in known:
        raise BadInputError(f"--kubernetes-version {version!r}: kubernetes-validate has schemas for "
                            f"{known[0]}..{known[-1]}")
    return f"{m.group(1)}.{m.group(2)}"


def _where(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate_kubernetes(obj: dict, version: str = KUBERNETES_VERSION) -> list[str]:
    """Problems of a Kubernetes object against kubernetes-validate's strict schemas ([] when valid)."""
    kv = require("kubernetes_validate", "k8s", "kubernetes-validate")
    label = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
    try:
        kv.validate(obj, version, strict=True)
    except kv.ValidationError as e:
        return [f"{label}: {_where(e)}: {e.message}"]
    except (kv.SchemaNotFoundError, kv.utils.VersionNotSupportedError) as e:
        return [f"{label}: {e.message}"]
    return []


def load_crd_schema(path: str | os.PathLike, kind: str = "InferenceService",
                    group: str = "serving.kserve.io", version: str = "v1beta1") -> dict:
    """The ``openAPIV3Schema`` of a CRD file (kserve's chart file or ``kubectl get crd NAME -o yaml``),
    made strict (unknown fields refused, as kubectl's strict field validation does)."""
    yaml = require("yaml", "k8s", "PyYAML")

    p = Path(path)
    try:
        if p.stat().st_size > MAX_CRD_BYTES:
            raise BadInputError(f"--kserve-crd {p}: larger than {MAX_CRD_BYTES >> 20} MiB; not a CRD")
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"--kserve-crd {p}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        # An untrusted file: aliases could expand a few KB into gigabytes (and CRDs never use them)
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=loader)):
            raise BadInputError(f"--kserve-crd {p}: uses YAML aliases; a CRD (from kubectl or KServe) has none")
        docs = [d for d in yaml.load_all(text, Loader=loader) if d]
    except yaml.YAMLError as e:
        raise BadInputError(f"--kserve-crd {p}: not YAML ({str(e).splitlines()[0]})") from None
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc.get("spec") or {}
        if not isinstance(spec, dict) or spec.get("group") != group or (spec.get("names") or {}).get("kind") != kind:
            continue
        for v in spec.get("versions") or []:
            schema = (v.get("schema") or {}).get("openAPIV3Schema") if isinstance(v, dict) else None
            if v.get("name") == version and isinstance(schema, dict):
                return strict_schema(schema, in_place=True)  # freshly parsed: nobody else holds it
        raise BadInputError(f"--kserve-crd {p}: the {kind} CRD has no {version} schema")
    raise BadInputError(f"--kserve-crd {p}: no CustomResourceDefinition of {group} {kind} in it")


def strict_schema(schema: dict, in_place: bool = False) -> dict:
    """The schema where every object with listed properties refuses others (unless the schema keeps
    unknown fields): the API server would prune a misspelt field silently; this makes it an error."""
    out = schema if in_place else copy.deepcopy(schema)

    def visit(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    visit(out)
    return out


def validate_against_crd(obj: dict, schema: dict, version: str = KUBERNETES_VERSION) -> list[str]:
    """Problems of a custom resource against its CRD's (strict) schema, plus its metadata against
    Kubernetes' ObjectMeta (a CRD schema leaves metadata to the API server)."""
    jsonschema = require("jsonschema", "k8s")
    label = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
    validator = jsonschema.Draft7Validator(schema)
    problems = [f"{label}: {_where(e)}: {e.message}"
                for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))]
    if isinstance(obj.get("metadata"), dict):  # ObjectMeta, checked through an object that is nothing else
        problems += [p.replace("ConfigMap/", f"{obj.get('kind')}/", 1) for p in validate_kubernetes(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}, version)]
    else:
        problems.append(f"{label}: metadata: missing or not an object")
    return problems


# ---- the command -----------------------------------------------------------------------------------

def prepare(opts: ManifestOptions) -> tuple[Storage, str, dict | None]:
    """Everything about the options that can be refused before anything is written (``package --k8s``
    calls this before packaging): the storage URI, the Kubernetes version, the CRD, the replicas."""
    storage = parse_storage_uri(opts.storage_uri)
    version = check_kubernetes_version(opts.kubernetes_version)
    if opts.min_replicas < 1:
        raise BadInputError(f"--min-replicas must be >= 1, got {opts.min_replicas}")
    if opts.max_replicas < opts.min_replicas:
        raise BadInputError(f"--max-replicas ({opts.max_replicas}) must be >= --min-replicas ({opts.min_replicas})")
    if opts.namespace is not None and not _is_dns_label(opts.namespace):
        raise BadInputError(f"--namespace {opts.namespace!r} is not a Kubernetes namespace name")
    if opts.service_account is not None and not _is_dns_subdomain(opts.service_account):
        raise BadInputError(f"--service-account {opts.service_account!r} is not a ServiceAccount name")
    if not re.fullmatch(r"\d{2}\.\d{2}", opts.triton_release):
        raise BadInputError(f"--triton-release {opts.triton_release!r}: expected an NGC release such as {TRITON_RELEASE}")
    for flag, image in (("--image", opts.image), ("--copy-image", opts.copy_image)):
        if image is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:@-]*", image):
            raise BadInputError(f"{flag} {image!r} is not an image reference")
    if opts.name is not None:
        object_name(opts.name)
    if opts.kserve_mode not in ("knative", "standard"):
        raise BadInputError(f"--kserve-mode must be knative or standard, got {opts.kserve_mode!r}")
    schema = load_crd_schema(opts.kserve_crd) if opts.kserve_crd is not None else None
    return storage, version, schema


def build_manifests(repo: str | os.PathLike, opts: ManifestOptions,
                    storage: Storage | None = None) -> tuple[dict, list[dict], RepositoryFacts]:
    """The InferenceService and the plain Kubernetes objects for ``repo`` (not validated)."""
    storage = storage or prepare(opts)[0]
    facts = read_repository(repo)
    default = facts.models[0].name if len(facts.models) == 1 else Path(repo).resolve().name
    name = object_name(opts.name or default)
    return inference_service(facts, storage, opts, name), kubernetes_objects(facts, storage, opts, name), facts


def check_output_dir(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"manifests directory {out} exists and is not a directory")
    if not out.exists() and not out.parent.is_dir():
        raise BadInputError(f"the parent of the manifests directory {out} does not exist")
    return out


def to_yaml(objects: list[dict], header: str) -> str:
    yaml = require("yaml", "k8s", "PyYAML")

    class Dumper(yaml.SafeDumper):  # no &id001 anchors: each object reads on its own
        def ignore_aliases(self, data):
            return True

    body = yaml.dump_all(objects, Dumper=Dumper, sort_keys=False, default_flow_style=False, explicit_start=True)
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


def generate_manifests(repo: str | os.PathLike, out_dir: str | os.PathLike, opts: ManifestOptions,
                       prepared: tuple | None = None) -> ManifestResult:
    """Build, validate and write ``OUT/kubernetes.yaml`` (and ``OUT/kserve.yaml`` with a CRD).

    Refuses (CheckFailedError, exit 1) when any object fails its schema; then nothing is written.
    ``prepared`` is what ``prepare(opts)`` returned, when the caller checked the options already.
    """
    from ..fileio import atomic_output

    storage, version, schema = prepared or prepare(opts)
    isvc, objects, facts = build_manifests(repo, opts, storage)
    problems = [p for obj in objects for p in validate_kubernetes(obj, version)]
    if schema is not None:
        problems += validate_against_crd(isvc, schema, version)
    if problems:
        raise CheckFailedError(f"the manifests fail their schemas, nothing written: {'; '.join(problems)}")

    out = check_output_dir(out_dir)
    models = ", ".join(f"{m.name} ({m.platform}, max_batch_size {m.max_batch_size}, {m.instances} instance(s))"
                       for m in facts.models)
    common = f"written by ln-deploy for the repository at {storage.uri}: {models}"
    texts = {KUBERNETES_FILE: to_yaml(objects, f"{common}\nvalidated against Kubernetes {version} "
                                               "(kubernetes-validate, strict)\n"
                                               "kubectl apply -f " + KUBERNETES_FILE)}
    if schema is not None:
        texts[KSERVE_FILE] = to_yaml([isvc], f"{common}\nvalidated against the KServe InferenceService CRD "
                                             f"(strict) and Kubernetes {version} ObjectMeta\n"
                                             "kubectl apply -f " + KSERVE_FILE)
    created = not out.exists()
    try:
        out.mkdir(exist_ok=True)
    except OSError as e:
        raise BadInputError(f"cannot create {out}: {e.strerror or type(e).__name__}") from None
    try:
        # every file renamed into place only after all were written (the atomic_output exits)
        with contextlib.ExitStack() as stack:
            tmps = [stack.enter_context(atomic_output(out / n)) for n in texts]
            for tmp, text in zip(tmps, texts.values()):
                tmp.write_text(text)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    skipped = None if schema is not None else (
        "no --kserve-crd given to validate it against (`kubectl get crd inferenceservices.serving.kserve.io "
        "-o yaml > isvc-crd.yaml`, then --kserve-crd isvc-crd.yaml)")
    return ManifestResult([out / n for n in texts], isvc, objects, facts, version, skipped)
