"""Done-when of the precision issue, end to end on PyTorch's own blocks: export -> convert (fp16, bf16)
-> check (strict CPU reference) -> package -> serve + a tritonclient request; no native crash anywhere
(their fp16 graphs hit ONNX Runtime's NchwcTransformer segfault at ORT_ENABLE_ALL on ORT 1.24-1.32).
And the overflow block: a naive fp16 conversion fails `ln-deploy check --precision fp16` on the CPU,
ln_deploy's passes. About 40 s on 2 cores in all (one export per model, one server for every model)."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SPECS = Path(__file__).with_name("precision_models.py")
DEPLOYED = ("transformer_encoder_pre", "transformer_encoder_post", "mha_block")
PRECISIONS = ("fp16", "bf16")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("precision_deploy")


@pytest.fixture(scope="module")
def exported(work):
    from ln_deploy.export import export_model
    from ln_deploy.spec import load_spec

    out = {}
    for name in (*DEPLOYED, "overflow_rms_block"):
        loaded = load_spec(f"{SPECS}:{name}")
        out[name] = (loaded, export_model(loaded, work / f"{name}.onnx").path)
    return out


@pytest.fixture(scope="module")
def converted(work, exported):
    """(name, precision) -> (path, check report): converted by ln_deploy and checked on the CPU."""
    return {}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", DEPLOYED)
def test_convert_and_check_pytorch_blocks(name, precision, exported, converted, work):
    from ln_deploy.check import check_model
    from ln_deploy.pipeline_steps import convert_model

    loaded, path = exported[name]
    model, report = convert_model(path, precision, spec=loaded.spec)
    out = work / f"{name}_{precision}.onnx"
    onnx.save(model, out)
    result = check_model(loaded, out, precision=precision, plots=False, invariance=False)
    assert result.passed, (name, precision, result.failures)
    casts = sum(n.op_type == "Cast" for n in model.graph.node)
    assert casts <= 21, (name, precision, casts)  # no more than the anchors' 1-21
    converted[(name, precision)] = out


def test_package_and_serve_every_converted_block(exported, converted, work):
    """One repository holding every converted block, one `ln-deploy serve`, a tritonclient request each:
    the answers agree with PyTorch within the check's profile for the precision."""
    import tritonclient.http as th

    from ln_deploy.check.tolerances import make_profile
    from ln_deploy.serve import package_model

    if len(converted) != len(DEPLOYED) * len(PRECISIONS):
        pytest.skip("the conversions above did not all pass")
    repo = work / "repo"
    for (name, precision), path in converted.items():
        package_model(path, repo, f"{name}_{precision}", max_batch_size=0)
    cmd = [sys.executable, "-m", "ln_deploy", "serve", str(repo), "--host", "127.0.0.1", "--port", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port, lines, deadline = None, [], time.time() + 180
        while time.time() < deadline and port is None:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"serving \d+ model\(s\) on http://127\.0\.0\.1:(\d+)", line)
            port = int(m.group(1)) if m else None
        assert port is not None, "".join(lines)
        client = th.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=30, network_timeout=60)
        for (name, precision), path in converted.items():
            loaded, _ = exported[name]
            x = loaded.example_inputs[0]
            with torch.no_grad():
                ref = loaded.module(x).numpy()
            model = onnx.load(path)
            inp = th.InferInput(model.graph.input[0].name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x.numpy())
            got = client.infer(f"{name}_{precision}", [inp]).as_numpy(model.graph.output[0].name)
            profile = make_profile(precision, None)
            atol, rtol = _tolerances(profile)
            err = np.abs(got.astype(np.float64) - ref)
            assert np.all(err <= atol + rtol * np.abs(ref)), (name, precision, float(err.max()))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode is not None and proc.returncode >= 0, "the server died of a signal"


def _tolerances(profile):
    """The profile's bound on the largest error (fp16/bf16 profiles check error statistics)."""
    c = next(c for c in profile.checks if c.stat in ("max", "elemwise"))
    return c.atol, c.rtol


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ln_deploy", "-q", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_overflow_block_naive_fp16_fails_check_and_ln_deploys_passes(exported, work):
    from onnxconverter_common import float16

    loaded, path = exported["overflow_rms_block"]
    spec = f"{SPECS}:overflow_rms_block"
    naive = float16.convert_float_to_float16(onnx.load(path), keep_io_types=True)
    onnx.save(naive, work / "overflow_naive.onnx")
    r = _cli("check", spec, "--onnx", str(work / "overflow_naive.onnx"), "--precision", "fp16", "--no-invariance")
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:], r.stdout[-2000:])
    r = _cli("convert", str(path), "-o", str(work / "overflow_ln.onnx"), "--precision", "fp16", "--spec", spec)
    assert r.returncode == 0, r.stderr
    r = _cli("check", spec, "--onnx", str(work / "overflow_ln.onnx"), "--precision", "fp16", "--no-invariance")
    assert r.returncode == 0, (r.stderr[-2000:], r.stdout[-2000:])
