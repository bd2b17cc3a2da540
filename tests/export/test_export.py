"""Real exports of the bundled models, checked in ONNX Runtime against PyTorch."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ln_deploy.export import export_model, read_metadata
from models.catalog import BUNDLED

ATOL = 1e-4  # the parity bar for fp32


def _inputs_like(loaded, batch, seq, seed=0):
    """Random inputs shaped like the example inputs with another batch and sequence length."""
    g = torch.Generator().manual_seed(seed)
    ins = []
    for name, e in zip(loaded.input_names, loaded.example_inputs):
        shape = list(e.shape)
        shape[0] = batch
        if e.dim() in (2, 3):
            shape[1] = seq
        elif e.dim() == 4:
            shape[2] = shape[3] = 2 * seq  # the ConvNeXt stem downsamples by 2
        if name == "mask":
            m = (torch.rand(*shape, generator=g) > 0.3).float()
            m[:, 0] = 1  # every sequence keeps at least one real token
            ins.append(m)
        else:
            ins.append(torch.randn(*shape, generator=g))
    return ins


@pytest.mark.parametrize("name", list(BUNDLED))
def test_bundled_model_matches_pytorch_across_batch_and_sequence(exported_bundled, name):
    loaded, res = exported_bundled[name]
    sess = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        for seq in (1, 7, 64):  # one export serves every shape
            ins = _inputs_like(loaded, batch, seq)
            with torch.no_grad():
                ref = loaded.module(*ins).numpy()
            (out,) = sess.run(None, {n: t.numpy() for n, t in zip(res.input_names, ins)})
            assert out.shape == ref.shape
            assert np.abs(out - ref).max() <= ATOL, (name, batch, seq)


@pytest.mark.parametrize("name", list(BUNDLED))
def test_metadata_records_the_export(exported_bundled, name):
    loaded, res = exported_bundled[name]
    meta = read_metadata(onnx.load(res.path, load_external_data=False))
    assert meta["ln_deploy.spec"] == loaded.spec
    assert meta["ln_deploy.torch_version"] == torch.__version__
    assert int(meta["ln_deploy.opset"]) >= 17
    assert int(meta["ln_deploy.norm_count"]) == res.norm_count
    assert "batch" in meta["ln_deploy.dynamic_axes"]


def test_layer_norm_exports_as_single_ops(exported_bundled):
    # pre-LN, 2 blocks: 2 norms each + the final norm
    assert exported_bundled["pre_ln_encoder"][1].norm_count == 5
    assert exported_bundled["post_ln_encoder"][1].norm_count == 4
    assert exported_bundled["stacked_ln_lstm"][1].norm_count == 9  # 3 per LN-LSTM cell


def test_scan_graph_size_does_not_depend_on_sequence_length(tmp_path):
    from ln_deploy.spec import load_spec
    from models.catalog import spec_path

    loaded = load_spec(spec_path(BUNDLED["ln_lstm"]))
    short = export_model(loaded, tmp_path / "short.onnx", rnn_mode="scan")
    loaded.example_inputs = (torch.randn(2, 33, loaded.example_inputs[0].shape[-1]),)
    long = export_model(loaded, tmp_path / "long.onnx", rnn_mode="scan")
    assert short.node_count == long.node_count
    # unroll bakes the length in: more steps, more nodes
    unrolled = export_model(loaded, tmp_path / "unroll.onnx", rnn_mode="unroll")
    assert unrolled.node_count > 10 * short.node_count // 2


def test_scan_runs_every_sequence_length_from_1_to_200(exported_bundled):
    loaded, res = exported_bundled["ln_lstm"]
    assert res.rnn_mode == "scan"
    sess = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
    x = torch.randn(2, 200, loaded.example_inputs[0].shape[-1], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = loaded.module(x).numpy()  # causal: the output for x[:, :t] is ref[:, :t]
    worst = 0.0
    for t in range(1, 201):
        (out,) = sess.run(None, {"x": x[:, :t].numpy()})
        worst = max(worst, float(np.abs(out - ref[:, :t]).max()))
    assert worst <= ATOL


@pytest.mark.parametrize("name", ["ln_lstm", "ln_gru", "stacked_ln_lstm"])
def test_step_mode_reproduces_the_full_sequence(tmp_path, exported_bundled, name):
    loaded, _ = exported_bundled[name]
    res = export_model(loaded, tmp_path / "step.onnx", rnn_mode="step")
    assert res.input_names[0] == "x_t" and len(res.state) >= 1
    sess = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
    x = torch.randn(3, 50, loaded.example_inputs[0].shape[-1], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = loaded.module(x).numpy()
    state = [np.zeros((3, *s["shape"]), np.float32) for s in res.state]
    for t in range(x.shape[1]):
        y, *state = sess.run(None, {"x_t": x[:, t].numpy(), **{s["name"]: v for s, v in zip(res.state, state)}})
        assert np.abs(y - ref[:, t]).max() <= ATOL, t


def test_dynamic_axes_override_makes_an_axis_static(tmp_path, exported_bundled):
    loaded, _ = exported_bundled["pre_ln_encoder_block"]
    res = export_model(loaded, tmp_path / "m.onnx", dynamic_axes={"x": {0: "batch"}})
    dims = onnx.load(res.path).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 8


def test_failed_verification_writes_nothing_and_leaves_an_existing_file_as_it_was(tmp_path, exported_bundled):
    """Issue 16: a failed export writes nothing and removes nothing (the file at -o may not be ours)."""
    from ln_deploy.errors import CheckFailedError

    loaded, _ = exported_bundled["pre_ln_encoder_block"]
    out = tmp_path / "m.onnx"
    out.write_bytes(b"stale output of an earlier run")
    with pytest.raises(CheckFailedError):
        export_model(loaded, out, atol=0.0)  # no export is bit-exact, so this must fail
    assert out.read_bytes() == b"stale output of an earlier run"
    assert list(tmp_path.iterdir()) == [out]
