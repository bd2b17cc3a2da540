"""`ln-deploy package --k8s` / `ln-deploy manifests`: Kubernetes and KServe manifests from a package,
validated against the official schemas (kubernetes-validate's bundled Kubernetes schemas; KServe's
InferenceService CRD from ../shared/k8s_schemas/), and broken manifests shown to fail the same checks."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from ln_deploy.cli import main
from ln_deploy.serve import manifests as mf
from ln_deploy.serve.repository import ARGS_FILE, read_model_config

kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT.parent / "shared" / "k8s_schemas"
ISVC_CRD = SCHEMAS / "serving.kserve.io_inferenceservices.yaml"
needs_crd = pytest.mark.skipif(not ISVC_CRD.is_file(),
                               reason="KServe's CRD (../shared/k8s_schemas/) is not beside the repository")
LATEST = kubernetes_validate.latest_version()


# ---- packages the manifests are made from ----------------------------------------------------------

def tiny_onnx(path: Path) -> Path:
    """LayerNormalization over a dynamic batch (the kind of model ln_deploy packages)."""
    scale = numpy_helper.from_array(np.linspace(0.5, 1.5, 16, dtype=np.float32), "scale")
    bias = numpy_helper.from_array(np.zeros(16, np.float32), "bias")
    g = helper.make_graph([helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"], axis=-1)], "ln",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])], [scale, bias])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def engine_with_plugin(where: Path) -> tuple[Path, Path]:
    """An engine as `ln-deploy build` leaves it (the JSON sidecar is what package reads: TensorRT is
    absent here) and a stand-in for the plugin library (package checks the ELF header and reads its
    dynamic section: this one has none). Sizes are fixed, so the manifests are reproducible."""
    engine = where / "enc.plan"
    engine.write_bytes(b"stand-in engine bytes: TensorRT is absent, only the sidecar is read")
    engine.with_name("enc.plan.json").write_text(json.dumps({
        "inputs": [{"name": "x", "dtype": "float16", "shape": [-1, -1, 64]}],
        "outputs": [{"name": "output", "dtype": "float16", "shape": [-1, -1, 64]}],
        "profiles": [{"x": {"min": [1, 1, 64], "opt": [8, 64, 64], "max": [32, 512, 64]}}],
    }))
    plugin = where / "libln_deploy_trt_plugin.so"
    plugin.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(57))  # ELF64 LSB header, no sections
    return engine, plugin


# The example of docs/scaling.md, run verbatim (in a folder holding enc.plan, its sidecar, the plugin
# and the cluster's CRD as isvc-crd.yaml).
DOC_COMMAND = ("package enc.plan --repo repo --name enc --plugin libln_deploy_trt_plugin.so "
               "--k8s k8s --storage-uri s3://models-bucket/ln-deploy/repo --kserve-crd isvc-crd.yaml")


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def isvc_schema():
    """The CRD's openAPIV3Schema as published (read here independently of ln_deploy's loader)."""
    if not ISVC_CRD.is_file():
        pytest.skip("KServe's CRD (../shared/k8s_schemas/) is not beside the repository")
    crd = yaml.load(ISVC_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    return version["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def strict_isvc_schema():
    if not ISVC_CRD.is_file():
        pytest.skip("KServe's CRD (../shared/k8s_schemas/) is not beside the repository")
    return mf.load_crd_schema(ISVC_CRD)


def assert_valid_kubernetes(objects: list[dict]) -> None:
    """Straight through kubernetes-validate, strict, at the documented version and the newest bundled."""
    assert [o["kind"] for o in objects] == ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
    for obj in objects:
        for version in (mf.KUBERNETES_VERSION, LATEST):
            kubernetes_validate.validate(obj, version, strict=True)  # raises on any problem


def assert_valid_isvc(isvc: dict, schema: dict, strict_schema: dict) -> None:
    assert list(jsonschema.Draft7Validator(schema).iter_errors(isvc)) == []
    assert mf.validate_against_crd(isvc, strict_schema) == []


# ---- the manifests of the two kinds of package -----------------------------------------------------

@needs_crd
def test_onnx_package_manifests(tmp_path, capsys, isvc_schema, strict_isvc_schema):
    model = tiny_onnx(tmp_path / "ln.onnx")
    repo, k8s = tmp_path / "repo", tmp_path / "k8s"
    assert main(["-q", "package", str(model), "--repo", str(repo), "--name", "tiny_ln.v1", "--instances", "2",
                 "--k8s", str(k8s), "--storage-uri", "gs://bucket/team/repo", "--kserve-crd", str(ISVC_CRD)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {k8s / 'kubernetes.yaml'} (validated)" in out and f"wrote {k8s / 'kserve.yaml'} (validated)" in out
    config = read_model_config(repo / "tiny_ln.v1" / "config.pbtxt")
    assert config.max_batch_size == 8 and config.instance_group[0].count == 2

    (isvc,) = load(k8s / "kserve.yaml")
    assert_valid_isvc(isvc, isvc_schema, strict_isvc_schema)
    assert isvc["metadata"]["name"] == "tiny-ln-v1"  # the model name as a DNS label
    predictor = isvc["spec"]["predictor"]
    model_spec = predictor["model"]
    assert model_spec["modelFormat"] == {"name": "triton"} and model_spec["runtime"] == "kserve-tritonserver"
    assert model_spec["storageUri"] == "gs://bucket/team/repo" and model_spec["protocolVersion"] == "v2"
    assert "args" not in model_spec  # no plugin
    assert predictor["scaleMetric"] == "concurrency"
    assert predictor["scaleTarget"] == config.max_batch_size * config.instance_group[0].count == 16
    resources = model_spec["resources"]
    assert mf.GPU_RESOURCE not in resources["limits"]  # ONNX with KIND_AUTO: no GPU asked for
    assert resources["requests"]["cpu"] == "2"  # one per CPU instance

    objects = load(k8s / "kubernetes.yaml")
    assert_valid_kubernetes(objects)
    deployment, service, hpa, pdb = objects
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": "8002",
                                              "prometheus.io/path": "/metrics"}
    (server,) = pod["spec"]["containers"]
    assert server["image"] == mf.IMAGE
    assert {p["name"]: p["containerPort"] for p in server["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert pod["spec"]["securityContext"]["runAsUser"] == server["securityContext"]["runAsUser"] == 10001
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert server["resources"] == resources  # the same sizing for both ways of running
    # gs://: an init container copies the repository into an emptyDir, mounted read-only in the server
    (init,) = pod["spec"]["initContainers"]
    assert init["command"][:3] == ["gcloud", "storage", "rsync"] and init["command"][-2:] == ["gs://bucket/team/repo",
                                                                                            "/models"]
    assert server["volumeMounts"] == [{"name": "model-repository", "mountPath": "/models", "readOnly": True}]
    assert "emptyDir" in pod["spec"]["volumes"][0] and "tolerations" not in pod["spec"]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"] == "tiny-ln-v1"
    pending = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"][0]["pods"]
    assert pending["metric"]["name"] == "nv_inference_pending_request_count"
    assert pending["target"]["averageValue"] == str(config.max_batch_size)
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": deployment["spec"]["selector"]}


@needs_crd
def test_engine_with_plugin_manifests(tmp_path, capsys, isvc_schema, strict_isvc_schema):
    engine, plugin = engine_with_plugin(tmp_path)
    repo, k8s = tmp_path / "repo", tmp_path / "k8s"
    assert main(["-q", "package", str(engine), "--repo", str(repo), "--name", "enc", "--plugin", str(plugin),
                 "--model-root", "/srv/models", "--k8s", str(k8s), "--storage-uri", "pvc://model-store/repos/enc",
                 "--kserve-crd", str(ISVC_CRD), "--namespace", "inference", "--max-replicas", "6"]) == 0
    capsys.readouterr()
    config = read_model_config(repo / "enc" / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 8

    (isvc,) = load(k8s / "kserve.yaml")
    assert_valid_isvc(isvc, isvc_schema, strict_isvc_schema)
    model_spec = isvc["spec"]["predictor"]["model"]
    # KServe puts the repository at /mnt/models: the plugin flag is rewritten for it
    assert model_spec["args"] == ["--backend-config=tensorrt,plugins=/mnt/models/enc/1/libln_deploy_trt_plugin.so"]
    assert model_spec["runtimeVersion"] == f"{mf.TRITON_RELEASE}-py3"
    assert model_spec["resources"]["limits"][mf.GPU_RESOURCE] == model_spec["resources"]["requests"][mf.GPU_RESOURCE] == "1"
    assert model_spec["storageUri"] == "pvc://model-store/repos/enc"
    assert isvc["metadata"]["namespace"] == "inference" and isvc["spec"]["predictor"]["maxReplicas"] == 6

    objects = load(k8s / "kubernetes.yaml")
    assert_valid_kubernetes(objects)
    pod = objects[0]["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    # The image's entrypoint passes tritonserver.args' flag: the mount point is the one it names.
    assert (repo / ARGS_FILE).read_text() == "--backend-config=tensorrt,plugins=/srv/models/enc/1/libln_deploy_trt_plugin.so\n"
    assert server["env"] == [{"name": "MODEL_REPOSITORY", "value": "/srv/models"}]
    assert server["volumeMounts"] == [{"name": "model-repository", "mountPath": "/srv/models", "readOnly": True,
                                       "subPath": "repos/enc"}]
    assert pod["volumes"] == [{"name": "model-repository",
                               "persistentVolumeClaim": {"claimName": "model-store", "readOnly": True}}]
    assert "initContainers" not in pod  # a PVC needs no copy
    assert server["resources"]["limits"][mf.GPU_RESOURCE] == "1"
    assert pod["tolerations"] == [{"key": mf.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    assert all(o["metadata"]["namespace"] == "inference" for o in objects)

    # `manifests` over the same repository writes the same objects (one API behind both commands).
    again = tmp_path / "again"
    assert main(["-q", "manifests", str(repo), "-o", str(again), "--storage-uri", "pvc://model-store/repos/enc",
                 "--kserve-crd", str(ISVC_CRD), "--namespace", "inference", "--max-replicas", "6"]) == 0
    assert load(again / "kubernetes.yaml") == objects and load(again / "kserve.yaml") == [isvc]


def test_kubernetes_only_without_a_crd_and_several_models(tmp_path, capsys):
    """Without --kserve-crd only kubernetes.yaml is written (and said so); a repository of several
    models is one pod serving all of them: resources and targets add up."""
    model = tiny_onnx(tmp_path / "ln.onnx")
    engine, plugin = engine_with_plugin(tmp_path)
    repo = tmp_path / "Fleet_Repo"
    assert main(["-q", "package", str(model), "--repo", str(repo), "--name", "ln", "--max-batch-size", "4"]) == 0
    assert main(["-q", "package", str(engine), "--repo", str(repo), "--name", "enc", "--plugin", str(plugin)]) == 0
    capsys.readouterr()
    assert main(["-q", "manifests", str(repo), "-o", str(tmp_path / "k8s"), "--storage-uri", "s3://b/fleet"]) == 0
    out = capsys.readouterr().out
    assert "kserve.yaml not written: no --kserve-crd" in out
    assert sorted(p.name for p in (tmp_path / "k8s").iterdir()) == ["kubernetes.yaml"]
    objects = load(tmp_path / "k8s" / "kubernetes.yaml")
    assert_valid_kubernetes(objects)
    deployment, _, hpa, _ = objects
    assert deployment["metadata"]["name"] == "fleet-repo"  # the repository folder's name
    pod = deployment["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["command"][:3] == ["aws", "s3", "cp"]
    server = pod["containers"][0]
    assert server["resources"]["limits"][mf.GPU_RESOURCE] == "1"  # the engine needs one
    assert server["resources"]["requests"]["cpu"] == "1"  # the ONNX model's one CPU instance
    pending = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"][0]["pods"]["target"]["averageValue"]
    assert pending == str(4 + 8)  # a full batch waiting for each model
    isvc, _, facts = mf.build_manifests(repo, mf.ManifestOptions(storage_uri="s3://b/fleet"))
    assert isvc["spec"]["predictor"]["scaleTarget"] == facts.concurrency_target == 4 * 1 + 8 * 1


# ---- the validators are real: broken manifests fail them -------------------------------------------

@needs_crd
def test_broken_manifests_fail_the_same_validation(tmp_path, isvc_schema, strict_isvc_schema):
    engine, plugin = engine_with_plugin(tmp_path)
    from ln_deploy.serve.repository import package_model

    package_model(engine, tmp_path / "repo", "enc", plugin=plugin)
    isvc, objects, _ = mf.build_manifests(tmp_path / "repo", mf.ManifestOptions(storage_uri="s3://b/r"))
    assert [p for o in objects for p in mf.validate_kubernetes(o)] == []
    assert mf.validate_against_crd(isvc, strict_isvc_schema) == []

    def broken(obj, edit):
        obj = copy.deepcopy(obj)
        edit(obj)
        return obj

    deployment, _, hpa, _ = objects
    k8s_cases = {
        "spec.replicas": broken(deployment, lambda d: d["spec"].__setitem__("replicas", "two")),  # wrong type
        "containers.0.ports.0.containerPort": broken(
            deployment, lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].__setitem__(
                "containerPort", "8000")),
        "'name' is a required property": broken(  # a container without its required name
            deployment, lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name")),
        "'scaleTargetRef' is a required property": broken(hpa, lambda h: h["spec"].pop("scaleTargetRef")),
        "livenesProbe": broken(  # a misspelt field: strict validation refuses what the API server would drop
            deployment, lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__(
                "livenesProbe", d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"])),
    }
    for needle, obj in k8s_cases.items():
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(obj, mf.KUBERNETES_VERSION, strict=True)
        problems = mf.validate_kubernetes(obj)
        assert len(problems) == 1 and needle in problems[0], (needle, problems)

    isvc_cases = {
        # wrong type
        "scaleTarget": (broken(isvc, lambda i: i["spec"]["predictor"].__setitem__("scaleTarget", "8")), True),
        "args": (broken(isvc, lambda i: i["spec"]["predictor"]["model"].__setitem__("args", "--x")), True),
        # missing required fields
        "'name' is a required property": (broken(isvc, lambda i: i["spec"]["predictor"]["model"]["modelFormat"].pop(
            "name")), True),
        "'predictor' is a required property": (broken(isvc, lambda i: i["spec"].pop("predictor")), True),
        # a misspelt field: the published schema lets the API server prune it silently; strict refuses it
        "storageURI": (broken(isvc, lambda i: i["spec"]["predictor"]["model"].__setitem__(
            "storageURI", i["spec"]["predictor"]["model"].pop("storageUri"))), False),
        # metadata is Kubernetes' ObjectMeta, checked with kubernetes-validate's schema
        "metadata.labels": (broken(isvc, lambda i: i["metadata"].__setitem__("labels", ["enc"])), False),
    }
    for needle, (obj, published_refuses) in isvc_cases.items():
        published = list(jsonschema.Draft7Validator(isvc_schema).iter_errors(obj))
        assert bool(published) == published_refuses, needle
        problems = mf.validate_against_crd(obj, strict_isvc_schema)
        assert problems and any(needle in p for p in problems), (needle, problems)


@needs_crd
def test_the_command_refuses_manifests_that_fail(tmp_path, capsys):
    """A CRD without a field the manifests use (as an older KServe's): exit 1, one line, nothing written;
    files already in the output folder are left as they were."""
    crd = yaml.load(ISVC_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    for v in crd["spec"]["versions"]:
        del v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["predictor"]["properties"]["model"][
            "properties"]["runtimeVersion"]
    old_crd = tmp_path / "old-crd.yaml"
    old_crd.write_text(json.dumps(crd))  # JSON is YAML
    engine, plugin = engine_with_plugin(tmp_path)
    from ln_deploy.serve.repository import package_model

    package_model(engine, tmp_path / "repo", "enc", plugin=plugin)
    out = tmp_path / "k8s"
    assert main(["-q", "manifests", str(tmp_path / "repo"), "-o", str(out), "--storage-uri", "s3://b/r",
                 "--kserve-crd", str(old_crd)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "runtimeVersion" in err and "nothing written" in err and "Traceback" not in err
    assert not out.exists()
    out.mkdir()
    (out / "kubernetes.yaml").write_text("# the user's earlier file\n")
    assert main(["-q", "manifests", str(tmp_path / "repo"), "-o", str(out), "--storage-uri", "s3://b/r",
                 "--kserve-crd", str(old_crd)]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["kubernetes.yaml"]
    assert (out / "kubernetes.yaml").read_text() == "# the user's earlier file\n"


BAD_INPUTS = {
    "storage scheme": (["--storage-uri", "ftp://host/repo"], "--storage-uri"),
    "storage path escapes": (["--storage-uri", "s3://b/../x"], "'..'"),
    "no storage": ([], "--k8s needs --storage-uri"),
    "not a CRD": (["--storage-uri", "s3://b/r", "--kserve-crd", "{runtimes}"], "no CustomResourceDefinition"),
    "missing CRD": (["--storage-uri", "s3://b/r", "--kserve-crd", "{missing}"], "cannot read"),
    "CRD with aliases": (["--storage-uri", "s3://b/r", "--kserve-crd", "{laughs}"], "aliases"),
    "CRD not YAML": (["--storage-uri", "s3://b/r", "--kserve-crd", "{garbage}"], "not YAML"),
    "zero replicas": (["--storage-uri", "s3://b/r", "--min-replicas", "0"], "--min-replicas"),
    "max below min": (["--storage-uri", "s3://b/r", "--min-replicas", "3", "--max-replicas", "2"], "--max-replicas"),
    "unknown Kubernetes": (["--storage-uri", "s3://b/r", "--kubernetes-version", "1.99"], "--kubernetes-version"),
    "bad namespace": (["--storage-uri", "s3://b/r", "--namespace", "Not_A_Namespace"], "--namespace"),
    "k8s dir is a file": (["--storage-uri", "s3://b/r", "--k8s-dir-file"], "not a directory"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_manifest_options_are_refused_before_packaging(tmp_path, capsys, case):
    args, needle = BAD_INPUTS[case]
    model = tiny_onnx(tmp_path / "ln.onnx")
    (tmp_path / "afile").write_text("x")
    laughs = tmp_path / "laughs.yaml"  # "billion laughs": each line ten times the one before
    laughs.write_text("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)))
    garbage = tmp_path / "garbage.yaml"
    garbage.write_text("kind: [unclosed\n")
    k8s = str(tmp_path / "k8s")
    if "--k8s-dir-file" in args:
        args = [a for a in args if a != "--k8s-dir-file"]
        k8s = str(tmp_path / "afile")
    args = [a.replace("{runtimes}", str(SCHEMAS / "serving.kserve.io_servingruntimes.yaml"))
             .replace("{missing}", str(tmp_path / "missing.yaml")).replace("{laughs}", str(laughs))
             .replace("{garbage}", str(garbage)) for a in args]
    if case == "not a CRD" and not (SCHEMAS / "serving.kserve.io_servingruntimes.yaml").is_file():
        (tmp_path / "other.yaml").write_text("kind: ConfigMap\n")
        args[-1] = str(tmp_path / "other.yaml")
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = main(["-q", "package", str(model), "--repo", str(tmp_path / "repo"), "--name", "ln", "--k8s", k8s, *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and needle in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no repository, no manifests


def test_manifest_options_need_k8s_and_a_repository(tmp_path, capsys):
    model = tiny_onnx(tmp_path / "ln.onnx")
    assert main(["-q", "package", str(model), "--repo", str(tmp_path / "repo"), "--name", "ln",
                 "--storage-uri", "s3://b/r"]) == 2
    assert "are for --k8s DIR" in capsys.readouterr().err and not (tmp_path / "repo").exists()
    (tmp_path / "empty").mkdir()
    assert main(["-q", "manifests", str(tmp_path / "empty"), "-o", str(tmp_path / "k8s"), "--storage-uri", "s3://b/r"]) == 2
    assert "no model folder" in capsys.readouterr().err and not (tmp_path / "k8s").exists()
    # a repository whose tritonserver.args no longer names its plugins (edited by hand): refused
    engine, plugin = engine_with_plugin(tmp_path)
    assert main(["-q", "package", str(engine), "--repo", str(tmp_path / "repo"), "--name", "enc", "--plugin",
                 str(plugin)]) == 0
    (tmp_path / "repo" / ARGS_FILE).write_text("--backend-config=tensorrt,plugins=/models/other.so\n")
    capsys.readouterr()
    assert main(["-q", "manifests", str(tmp_path / "repo"), "-o", str(tmp_path / "k8s"), "--storage-uri", "s3://b/r"]) == 2
    assert "does not list the repository's plugins" in capsys.readouterr().err and not (tmp_path / "k8s").exists()


def test_storage_uris_and_names():
    assert mf.parse_storage_uri("s3://bucket").path == "" and mf.parse_storage_uri("s3://bucket/").uri == "s3://bucket"
    pvc = mf.parse_storage_uri("pvc://claim/a/b/")
    assert (pvc.scheme, pvc.bucket_or_claim, pvc.path, pvc.uri) == ("pvc", "claim", "a/b", "pvc://claim/a/b")
    for bad in ("s3:/b", "http://b/r", "pvc://Bad_Claim/r", "gs://b/a//c", "s3://b/ x"):
        with pytest.raises(mf.BadInputError):
            mf.parse_storage_uri(bad)
    assert mf.object_name("LN_Encoder.v2") == "ln-encoder-v2"
    assert mf.object_name("7b") == "m-7b"  # DNS-1035: a letter first
    assert len(mf.object_name("x" * 100)) == 45


def test_constants_match_the_image_of_docker():
    """The manifests run docker/Dockerfile.serve's image: its release, user, ports and entrypoint."""
    dockerfile = (ROOT / "docker" / "Dockerfile.serve").read_text()
    entrypoint = (ROOT / "docker" / "serve-entrypoint.sh").read_text()
    assert re.search(r"^ARG NGC_RELEASE=(\S+)$", dockerfile, re.M).group(1) == mf.TRITON_RELEASE
    assert f"--uid {mf.IMAGE_USER} " in dockerfile and re.search(rf"^USER {mf.IMAGE_USER}$", dockerfile, re.M)
    assert re.search(r"^EXPOSE (.+)$", dockerfile, re.M).group(1).split() == [
        str(p) for p in (mf.HTTP_PORT, mf.GRPC_PORT, mf.METRICS_PORT)]
    assert f"-t {mf.IMAGE} " in dockerfile
    assert "/v2/health/ready" in dockerfile  # the same readiness the probes use
    assert 'repo="${MODEL_REPOSITORY:-/models}"' in entrypoint


@needs_crd
def test_docs_scaling_matches_the_generated_manifests(tmp_path, capsys, monkeypatch):
    """docs/scaling.md shows the example's command and the files it writes: run it and compare."""
    doc = (ROOT / "docs" / "scaling.md").read_text()
    assert f"ln-deploy {DOC_COMMAND}" in " ".join(doc.replace("\\\n", " ").split())
    engine_with_plugin(tmp_path)
    shutil.copyfile(ISVC_CRD, tmp_path / "isvc-crd.yaml")
    monkeypatch.chdir(tmp_path)
    assert main(["-q", *DOC_COMMAND.split()]) == 0
    capsys.readouterr()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    documented = [[d for d in yaml.safe_load_all(b) if d] for b in blocks]
    assert load(tmp_path / "k8s" / "kserve.yaml") in documented
    assert load(tmp_path / "k8s" / "kubernetes.yaml") in documented
    for fact in (f"Kubernetes {mf.KUBERNETES_VERSION}", mf.TRITON_RELEASE, "aaac4e294dae2c7b1aa1886447793f3aa1c30912",
                 mf.COPY_IMAGES["s3"], mf.COPY_IMAGES["gs"]):
        assert fact in doc, fact


@needs_crd
def test_validation_needs_no_network(tmp_path, monkeypatch, strict_isvc_schema):
    """kubernetes-validate's schemas and the CRD are read from disk: with every connection refused the
    validators still run (and still refuse what is broken)."""
    import socket

    def refused(*args, **kwargs):
        raise OSError("network disabled for this test")

    engine, plugin = engine_with_plugin(tmp_path)
    from ln_deploy.serve.repository import package_model

    package_model(engine, tmp_path / "repo", "enc", plugin=plugin)
    isvc, objects, _ = mf.build_manifests(tmp_path / "repo", mf.ManifestOptions(storage_uri="gs://b/r"))
    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refused)
    monkeypatch.setattr(socket, "getaddrinfo", refused)
    monkeypatch.setattr(socket, "create_connection", refused)
    for version in (mf.KUBERNETES_VERSION, LATEST):
        assert [p for o in objects for p in mf.validate_kubernetes(o, version)] == []
    assert mf.validate_against_crd(isvc, strict_isvc_schema) == []
    objects[0]["spec"]["replicas"] = -1.5
    assert mf.validate_kubernetes(objects[0])


def test_kserve_values_match_kserves_triton_runtime():
    """The InferenceService names KServe's Triton ClusterServingRuntime: its name, the model format and
    protocol it serves, the model store the plugin paths are rewritten for, its metrics port."""
    runtime_file = SCHEMAS / "kserve-tritonserver-runtime.yaml"
    if not runtime_file.is_file():
        pytest.skip("KServe's runtime (../shared/k8s_schemas/) is not beside the repository")
    runtime = yaml.safe_load(runtime_file.read_text())
    assert runtime["kind"] == "ClusterServingRuntime" and runtime["metadata"]["name"] == mf.KSERVE_RUNTIME
    assert "triton" in [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
    assert "v2" in runtime["spec"]["protocolVersions"]
    (container,) = runtime["spec"]["containers"]
    assert f"--model-store={mf.KSERVE_MODEL_ROOT}" in container["args"]
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == str(mf.METRICS_PORT)
