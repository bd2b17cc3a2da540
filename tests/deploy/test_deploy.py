"""``ln-deploy deploy``: SPEC → certified Triton model, incremental reruns, failure at the first bad
normalization, ``verify`` against the certificate, and the HTML report in a real browser."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serve.conftest import running_server

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

# three bundled models (pre-LN encoder, RMSNorm decoder, channels-first ConvNeXt) and two public
# architectures: Hugging Face LLaMA (RMSNorm, grouped-query attention) and torch.nn's TransformerEncoder
MODELS = {
    "pre_ln_encoder": "models/transformer.py:pre_ln_encoder",
    "rms_decoder_block": "models/llama.py:rms_decoder_block",
    "convnext_block": "models/convnext.py:convnext_block",
    "llama": "tests/hf_specs.py:llama",
    "torch_encoder": "tests/deploy/specs.py:torch_encoder",
}
CASES = [(name, prec) for name in MODELS for prec in ("fp32", "fp16")]


def _deploy(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "ln_deploy", "deploy", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """Every case deployed into one shared repository (one work folder each)."""
    base = tmp_path_factory.mktemp("deploy")
    repo = base / "repo"
    out = {}
    for name, prec in CASES:
        work = base / f"{name}_{prec}"
        r = _deploy(MODELS[name], "-o", work, "--precision", prec, "--name", f"{name}_{prec}", "--repo", repo)
        out[(name, prec)] = (work, r)
    return repo, out


@pytest.mark.parametrize("name,prec", CASES)
def test_deploy_certifies(deployed, name, prec):
    repo, out = deployed
    work, r = out[(name, prec)]
    assert r.returncode == 0, r.stderr[-3000:]
    assert "CERTIFIED" in r.stdout
    stages = [line for line in r.stderr.splitlines() if line.startswith("[deploy]")]
    assert any(line.startswith("[deploy] check: passed") for line in stages), r.stderr
    model_dir = repo / f"{name}_{prec}"
    cert = json.loads((model_dir / "parity.json").read_text())
    assert cert["passed"] and cert["precision"] == prec and cert["spec"] == MODELS[name]
    assert cert["verified_shapes"] and cert["weights_sha256"]
    config = (model_dir / "config.pbtxt").read_text()
    batch = int(config.split("max_batch_size:")[1].split()[0])
    assert 1 <= batch <= cert["max_batch_size"]
    # check verified the batch axis at --max-batch-size (default 8), so the package accepts it
    assert batch == cert["max_batch_size"] == 8, (batch, cert["max_batch_size"])
    assert any(s["inputs"] and all(v[0] == 8 for v in s["inputs"].values()) for s in cert["verified_shapes"])
    assert (work / "report.html").is_file() and (work / "deploy.json").is_file()


def test_served_answers_match_pytorch(deployed):
    """The shared repository served by ``ln-deploy serve``, every model queried with tritonclient."""
    import torch
    import tritonclient.http as th

    from ln_deploy.spec import load_spec

    repo, out = deployed
    ok = [(n, p) for (n, p), (_, r) in out.items() if r.returncode == 0]
    assert len(ok) == len(CASES)
    with running_server(str(repo)) as server:
        client = server.client()
        for name, prec in ok:
            loaded = load_spec(str(ROOT / MODELS[name]))
            x = loaded.example_inputs
            with torch.no_grad():
                want = loaded.module(*x)
            want = want[0] if isinstance(want, (tuple, list)) else want
            meta = client.get_model_metadata(f"{name}_{prec}")
            inputs = []
            for spec, t in zip(meta["inputs"], x):
                arr = t.numpy()
                inp = th.InferInput(spec["name"], list(arr.shape), spec["datatype"])
                inp.set_data_from_numpy(arr.astype(th.triton_to_np_dtype(spec["datatype"])))
                inputs.append(inp)
            res = client.infer(f"{name}_{prec}", inputs)
            got = res.as_numpy(meta["outputs"][0]["name"]).astype(np.float32)
            tol = 2e-4 if prec == "fp32" else 5e-2
            np.testing.assert_allclose(got, want.float().numpy(), atol=tol, rtol=tol,
                                       err_msg=f"{name} {prec} served != PyTorch")


def test_second_run_reuses_every_stage(deployed):
    repo, out = deployed
    work, _ = out[("pre_ln_encoder", "fp16")]
    r = _deploy(MODELS["pre_ln_encoder"], "-o", work, "--precision", "fp16", "--name", "pre_ln_encoder_fp16",
                "--repo", repo)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((work / "deploy.json").read_text())
    lines = [line for line in r.stderr.splitlines() if line.startswith("[deploy]") and ": " in line]
    for stage in ("export", "fuse", "convert", "build", "check", "package"):
        assert f"[deploy] {stage}: unchanged, reused" in lines, r.stderr
        assert manifest["stages"][stage]["status"] == "passed"


def test_changed_checkpoint_redoes_everything(tmp_path):
    """New weights: export and every later stage run again (none is reused)."""
    import torch
    from safetensors.torch import save_file

    from ln_deploy.spec import load_spec

    spec = MODELS["pre_ln_encoder"]
    work = tmp_path / "out" / "work"  # missing parents are created, as on a fresh clone's `-o out/quickstart`
    first = _deploy(spec, "-o", work)
    assert first.returncode == 0, first.stderr
    loaded = load_spec(str(ROOT / spec))
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in loaded.module.state_dict().items()}
    ckpt = tmp_path / "new.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt))
    second = _deploy(spec, "-o", work, "--checkpoint", ckpt)
    assert second.returncode == 0, second.stderr
    assert "reused" not in second.stderr
    for stage in ("export", "fuse", "check", "package"):
        assert f"[deploy] {stage}: passed" in second.stderr, second.stderr
    cert = json.loads((work / "repo" / "pre_ln_encoder" / "parity.json").read_text())
    assert cert["weights_sha256"] == json.loads((work / "export.json").read_text()).get("weights_sha256", cert["weights_sha256"])


def test_perturbed_norm_fails_naming_the_module(tmp_path):
    """The ONNX file (exported, then one LayerNorm's scale changed by 1%) deployed with --onnx: check fails
    at that normalization, exit 1, and nothing is packaged."""
    import onnx

    from ln_deploy.check import perturb_scale
    from ln_deploy.export import export_model

    spec = str(ROOT / MODELS["pre_ln_encoder"])
    good = tmp_path / "good.onnx"
    export_model(spec, good)
    bad = tmp_path / "bad.onnx"
    onnx.save(perturb_scale(onnx.load(str(good)), "blocks.1.norm1", 1.01), str(bad))
    work = tmp_path / "work"
    r = _deploy(spec, "-o", work, "--onnx", bad)
    assert r.returncode == 1, r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("ln-deploy deploy: error")]
    assert len(err) == 1 and "blocks.1.norm1" in err[0] and "check failed" in err[0], r.stderr
    assert not (work / "repo").exists()
    assert "FAILED at check" in (work / "report.html").read_text()


def test_verify_detects_changed_model_and_edited_certificate(deployed, tmp_path):
    repo, _ = deployed
    model_dir = tmp_path / "m"
    shutil.copytree(repo / "pre_ln_encoder_fp32", model_dir)

    def verify(*extra):
        return subprocess.run([sys.executable, "-m", "ln_deploy", "verify", str(model_dir), *extra], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)

    r = verify()
    assert r.returncode == 0 and "VERIFIED" in r.stdout, r.stdout + r.stderr
    cert_path = model_dir / "parity.json"
    cert = json.loads(cert_path.read_text())
    edited = dict(cert, max_batch_size=cert["max_batch_size"] + 64)
    cert_path.write_text(json.dumps(edited))
    r = verify("--hash-only")
    assert r.returncode == 1 and "certificate was edited" in r.stdout, r.stdout
    cert_path.write_text(json.dumps(cert))
    model = model_dir / cert["model_file"]
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    r = verify("--hash-only")
    assert r.returncode == 1 and "FAIL model file" in r.stdout, r.stdout


def test_workdir_of_the_user_is_refused(tmp_path):
    work = tmp_path / "mine"
    work.mkdir()
    (work / "notes.txt").write_text("keep me")
    r = _deploy(MODELS["pre_ln_encoder"], "-o", work)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "holds no deploy.json" in r.stderr
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]


def test_workdir_under_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("a file, not a folder")
    r = _deploy(MODELS["pre_ln_encoder"], "-o", tmp_path / "out" / "work")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "cannot create WORKDIR" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium installed (apt-get install chromium)")
def test_report_renders_in_a_browser(deployed, tmp_path):
    _, out = deployed
    work, _ = out[("rms_decoder_block", "fp16")]
    page = work / "report.html"
    r = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                        "--enable-logging=stderr", "--v=0", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'id="verdict"' in r.stdout and "CERTIFIED" in r.stdout
    assert "<svg" in r.stdout  # the per-normalization plot is inline
    console_errors = [line for line in r.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()]
    assert not console_errors, console_errors
    html = page.read_text()
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
