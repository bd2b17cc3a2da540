"""What users' specs do that the bundled models do not: factories with unseeded random weights,
weights that changed since export, dropout reached only through a functional call, and public
Hugging Face architectures (built from tiny configs, no download) checked end to end."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SPEC = textwrap.dedent('''
    import torch
    from torch import nn
    import torch.nn.functional as F


    class Block(nn.Module):
        def __init__(self, p_functional=0.0):
            super().__init__()
            self.fc = nn.Linear(16, 16)
            self.norm = nn.LayerNorm(16)
            self.drop = nn.Dropout(0.2)
            self.p_functional = p_functional
            with torch.no_grad():  # non-trivial norm parameters, drawn without a seed
                self.norm.weight.normal_()
                self.norm.bias.normal_()

        def forward(self, x):
            # Hugging Face style: the dropout module's rate, passed to a functional call
            h = F.dropout(self.fc(x), p=self.drop.p, training=self.training)
            h = F.dropout(h, p=self.p_functional, training=self.training)  # a rate the check cannot reach
            return self.norm(x + h)


    def unseeded():
        return Block(), (torch.randn(2, 5, 16),)


    def hard_coded_dropout():
        return Block(p_functional=0.1), (torch.randn(2, 5, 16),)
''')


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("user") / "user_model.py"
    p.write_text(SPEC)
    return p


def test_unseeded_factory_builds_the_same_weights_each_time(spec_file):
    from ln_deploy.spec import load_spec, weights_fingerprint

    state = torch.random.get_rng_state()
    a = load_spec(f"{spec_file}:unseeded")
    b = load_spec(f"{spec_file}:unseeded")
    assert weights_fingerprint(a.module) == weights_fingerprint(b.module)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left as it was
    b.module.norm.bias.data[0] += 1e-3
    assert weights_fingerprint(a.module) != weights_fingerprint(b.module)


def test_export_then_check_of_an_unseeded_factory_passes(spec_file, tmp_path):
    from ln_deploy.check import check_model
    from ln_deploy.export import export_model
    from ln_deploy.spec import load_spec

    out = tmp_path / "m.onnx"
    export_model(load_spec(f"{spec_file}:unseeded"), out)
    report = check_model(f"{spec_file}:unseeded", out)  # loads the SPEC again, as `ln-deploy check` does
    assert report.passed, report.failures
    train_eval = next(r for r in report.invariance if r["check"] == "train_eval")
    assert train_eval["status"] == "passed", train_eval  # the functional dropout took the module's rate (0)


def test_train_mode_randomness_out_of_reach_is_skipped_not_failed(spec_file, tmp_path):
    from ln_deploy.check import check_model
    from ln_deploy.export import export_model
    from ln_deploy.spec import load_spec

    out = tmp_path / "m.onnx"
    export_model(load_spec(f"{spec_file}:hard_coded_dropout"), out)
    report = check_model(f"{spec_file}:hard_coded_dropout", out)
    train_eval = next(r for r in report.invariance if r["check"] == "train_eval")
    assert train_eval["status"] == "skipped" and "two runs" in train_eval["message"], train_eval
    assert report.passed


def test_check_refuses_weights_other_than_the_exported_ones(spec_file, tmp_path):
    from safetensors.torch import save_file

    from ln_deploy.export import export_model
    from ln_deploy.spec import load_spec

    loaded = load_spec(f"{spec_file}:unseeded")
    out = tmp_path / "m.onnx"
    export_model(loaded, out)
    state = {k: v.clone() for k, v in loaded.module.state_dict().items()}
    state["norm.weight"] += 0.5
    save_file(state, str(tmp_path / "other.safetensors"))
    r = subprocess.run([sys.executable, "-m", "ln_deploy", "-q", "check", f"{spec_file}:unseeded", "--onnx", str(out),
                        "--checkpoint", str(tmp_path / "other.safetensors"), "--report-dir", str(tmp_path / "rep")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "other weights" in r.stderr
    assert not (tmp_path / "rep").exists()


@pytest.mark.hf
@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_public_architecture_exports_and_checks(name, tmp_path):
    """The user's path on a public architecture: export, then check (dropout inside attention is
    switched off for train/eval, the norms are localised, everything passes)."""
    pytest.importorskip("transformers")
    spec = Path(__file__).resolve().parents[1] / "hf_specs.py"
    out = tmp_path / f"{name}.onnx"
    for cmd in (["export", f"{spec}:{name}", "-o", str(out)],
                ["check", f"{spec}:{name}", "--onnx", str(out), "--report-dir", str(tmp_path / "rep"), "--no-plots"]):
        r = subprocess.run([sys.executable, "-m", "ln_deploy", "-q", *cmd], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (cmd[0], r.stdout[-2000:], r.stderr[-2000:])
    import json

    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    norms = report["localisation"]["onnxrt-cpu"]["norms"]
    assert len(norms) == 5 and all(n["passed"] for n in norms), norms
    assert {r["check"]: r["status"] for r in report["invariance"]}["train_eval"] == "passed"
