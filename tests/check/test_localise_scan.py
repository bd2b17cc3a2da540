"""Localisation inside Scan/Loop bodies: the bundled recurrent models exported in scan mode have every
normalization in the Scan body; each one's value is exposed per iteration (an extra scan output) and
compared with PyTorch's call of the same index. Damage to one body normalization is localised to that
module at the earliest call where it shows. Nested Scans and Loop bodies (which the exporter does not
produce) are checked on hand-built graphs against numpy."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from models.catalog import BUNDLED, HANDWRITTEN

# PyTorch finishing order of the norms within one time step.
ORDER = {
    "ln_lstm": ["cells.0.norm_ih", "cells.0.norm_hh", "cells.0.norm_c"],
    "ln_gru": ["cell.norm_ih", "cell.norm_hh"],
    "stacked_ln_lstm": [f"cells.{i}.{n}" for i in range(3) for n in ("norm_ih", "norm_hh", "norm_c")],
}


def _scan_export(export_spec, spec):
    return export_spec(spec, rnn_mode="scan")  # explicit: exports only this model when run alone


def _check(loaded, path):
    from ln_deploy.check import check_model

    return check_model(loaded, path, invariance=False)


@pytest.mark.parametrize("name", sorted(ORDER))
def test_scan_body_norms_localised_per_step(name, export_spec):
    loaded, path = _scan_export(export_spec, BUNDLED[name])
    scans = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Scan"]
    assert len(scans) == 1  # what the scan export produces: one top-level Scan, no Loop
    report = _check(loaded, path)
    assert report.passed, report.failures
    assert report.first_divergence is None
    loc = report.localisation["onnxrt-cpu"]
    assert loc["notes"] == []
    steps = report.inputs["shapes"]["x"][1]
    expected = [p if t == 0 else f"{p}#{t}" for t in range(steps) for p in ORDER[name]]
    assert [n["key"] for n in loc["norms"]] == expected
    for n in loc["norms"]:
        assert n["passed"] and n["stats"]["max_abs"] < 1e-5, n
        assert n["onnx_loop"] == ["ln_deploy/scan"] and n["iteration"] == n["call"]
        assert n["onnx_ops"] == ["LayerNormalization"]


def test_iteration_t_is_pytorch_call_t(export_spec):
    """Only iteration t of the stacked body value matches PyTorch's call t (the alignment is real)."""
    import onnxruntime as ort
    import torch

    from ln_deploy.check.localise import NormRecorder, find_norm_calls, norm_modules, with_extra_outputs

    loaded, path = _scan_export(export_spec, BUNDLED["stacked_ln_lstm"])
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(1))
    with NormRecorder(loaded.module) as rec, torch.inference_mode():
        loaded.module(x)
    counts = {}
    for k in rec.outputs:
        counts[k.partition("#")[0]] = counts.get(k.partition("#")[0], 0) + 1
    model = onnx.load(str(path))
    calls, notes = find_norm_calls(model, list(norm_modules(loaded.module)), counts)
    assert not notes and len(calls) == len(rec.outputs) == 6 * 9
    marked, exposed = with_extra_outputs(model, [c.exposed for c in calls])
    sess = ort.InferenceSession(marked.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x.numpy()})))
    call = next(c for c in calls if c.key == "cells.1.norm_c#3")
    stacked = outs[exposed[call.exposed]]
    assert stacked.shape == (6, 2, 32)
    err = [float(np.abs(stacked[t] - rec.outputs["cells.1.norm_c#3"]).max()) for t in range(6)]
    assert err[3] < 1e-5 and min(e for t, e in enumerate(err) if t != 3) > 0.1, err
    assert len(set(exposed.values())) == 9  # one stacked output per body value, not per step


DAMAGE = [
    # (spec, module, perturbation, kwargs, earliest diverging call)
    (BUNDLED["ln_lstm"], "cells.0.norm_c", "epsilon", {"epsilon": 0.1}, 0),
    (BUNDLED["ln_gru"], "cell.norm_hh", "scale", {"factor": 1.01}, 0),
    (BUNDLED["stacked_ln_lstm"], "cells.1.norm_ih", "epsilon", {"epsilon": 0.1}, 0),
    (BUNDLED["stacked_ln_lstm"], "cells.2.norm_c", "scale", {"factor": 1.01}, 0),
    (HANDWRITTEN["ln_gru"], "cell.norm_hh", "epsilon", {"epsilon": 0.1}, 0),  # decomposed norm in the body
    # The LSTM's recurrent projection has no bias and h starts at 0: norm_hh normalizes an all-zero vector
    # at step 0 (output = its bias), so a scale change first shows at call 1.
    (BUNDLED["ln_lstm"], "cells.0.norm_hh", "scale", {"factor": 1.01}, 1),
    (BUNDLED["stacked_ln_lstm"], "cells.1.norm_hh", "scale", {"factor": 1.01}, 1),
]


@pytest.mark.parametrize("spec,target,kind,kw,first_call", DAMAGE)
def test_damaged_body_norm_is_localised(spec, target, kind, kw, first_call, export_spec, tmp_path):
    from ln_deploy.check import perturb_epsilon, perturb_scale

    loaded, path = _scan_export(export_spec, spec)
    damaged = (perturb_epsilon if kind == "epsilon" else perturb_scale)(onnx.load(str(path)), target, **kw)
    out = tmp_path / "damaged.onnx"
    onnx.save(damaged, str(out))
    report = _check(loaded, out)
    assert not report.passed
    fd = report.first_divergence
    assert (fd["module_path"], fd["call"], fd["iteration"]) == (target, first_call, first_call), fd
    assert fd["onnx_loop"] == ["ln_deploy/scan"]
    assert fd["stats"]["max_abs"] > 5e-3
    norms = report.localisation["onnxrt-cpu"]["norms"]
    first_bad = next(i for i, n in enumerate(norms) if not n["passed"])
    assert norms[first_bad]["key"] == (target if first_call == 0 else f"{target}#{first_call}")
    assert all(n["passed"] for n in norms[:first_bad])
    if first_call:
        same = [n for n in norms if n["module_path"] == target]
        assert same[0]["stats"]["max_abs"] == 0.0  # step 0 untouched by the damage


def test_perturb_reaches_into_scan_body(export_spec):
    from ln_deploy.check import perturb_epsilon, perturb_scale
    from ln_deploy.errors import BadInputError

    _, path = _scan_export(export_spec, BUNDLED["ln_gru"])
    model = onnx.load(str(path))
    m = perturb_epsilon(model, "cell.norm_ih", 0.25)
    body = m.graph.node[-1].attribute[0].g
    ln = next(n for n in body.node if n.op_type == "LayerNormalization")
    assert next(a.f for a in ln.attribute if a.name == "epsilon") == pytest.approx(0.25)
    perturb_scale(model, "cell.norm_hh", 2.0)
    with pytest.raises(BadInputError, match="no normalization op"):
        perturb_epsilon(model, "cell.norm_xx", 0.1)


# ----------------------------------------------------------------------------- hand-built loops

D = 4


def _scoped(node, *scopes):
    node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=repr(["", *scopes, node.output[0]]))
    return node


def _ln_nodes(x, out, prefix, tag=""):
    """LayerNormalization of ``x`` (module ``prefix + 'blk.norm'``) then Tanh (module ``prefix + 'blk'``)."""
    blk, norm = prefix + "blk", prefix + "blk.norm"
    return [
        _scoped(helper.make_node("Mul", [x, "two"], ["pre" + tag]), blk),
        _scoped(helper.make_node("LayerNormalization", ["pre" + tag, "gamma", "beta"], ["normed" + tag], axis=-1,
                                 epsilon=1e-5), blk, norm),
        _scoped(helper.make_node("Tanh", ["normed" + tag], [out]), blk),
    ]


def _ln(x, gamma, beta):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * gamma + beta


def _params(rng):
    return rng.normal(size=D).astype(np.float32), rng.normal(size=D).astype(np.float32)


def _inits(gamma, beta):
    return [onnx.numpy_helper.from_array(np.float32(2.0).reshape(()), "two"),
            onnx.numpy_helper.from_array(gamma, "gamma"), onnx.numpy_helper.from_array(beta, "beta")]


def _run_exposed(model, calls, feed):
    import onnxruntime as ort

    from ln_deploy.check.localise import with_extra_outputs

    onnx.checker.check_model(model, full_check=True)
    marked, exposed = with_extra_outputs(model, [c.exposed for c in calls])
    sess = ort.InferenceSession(marked.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
    return {c.key: outs[exposed[c.exposed]] for c in calls}


def test_nested_scan_body_norm():
    """A Scan inside a Scan body: the value is stacked [outer, inner, ...]; call i is iteration i of the
    flattened (row-major) loops. Module paths carry a "model." prefix, as in the scan export."""
    from ln_deploy.check.localise import find_norm_calls

    rng = np.random.default_rng(0)
    gamma, beta = _params(rng)
    T_OUT, T_IN, B = 3, 5, 2
    inner = helper.make_graph(_ln_nodes("xi", "yi", "model."), "inner",
                              [helper.make_tensor_value_info("xi", TensorProto.FLOAT, [B, D])],
                              [helper.make_tensor_value_info("yi", TensorProto.FLOAT, [B, D])], _inits(gamma, beta))
    outer = helper.make_graph(
        [helper.make_node("Scan", ["xo"], ["yo"], body=inner, num_scan_inputs=1, scan_output_axes=[0])], "outer",
        [helper.make_tensor_value_info("xo", TensorProto.FLOAT, [T_IN, B, D])],
        [helper.make_tensor_value_info("yo", TensorProto.FLOAT, [T_IN, B, D])])
    graph = helper.make_graph(
        [helper.make_node("Scan", ["X"], ["Y"], name="outer_scan", body=outer, num_scan_inputs=1)], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T_OUT, T_IN, B, D])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [T_OUT, T_IN, B, D])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    calls, notes = find_norm_calls(model, ["blk", "blk.norm"], {"blk.norm": T_OUT * T_IN})
    assert notes == [] and len(calls) == T_OUT * T_IN
    assert calls[7].loop_names == ("outer_scan", "Scan_0") and calls[7].iteration == 7
    x = rng.normal(size=(T_OUT, T_IN, B, D)).astype(np.float32)
    got = _run_exposed(model, calls, {"X": x})
    for c in calls:
        stacked = got[c.key]
        assert stacked.shape == (T_OUT, T_IN, B, D)
        o, i = divmod(c.iteration, T_IN)
        np.testing.assert_allclose(stacked.reshape(-1, B, D)[c.iteration], _ln(2 * x[o, i], gamma, beta),
                                   rtol=1e-5, atol=1e-5)


def test_loop_body_norm():
    """A Loop body's extra output after the loop-carried ones is a per-iteration scan output."""
    from ln_deploy.check.localise import find_norm_calls

    rng = np.random.default_rng(1)
    gamma, beta = _params(rng)
    T, B = 4, 3
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]), *_ln_nodes("s", "s_out", "")], "body",
        [helper.make_tensor_value_info("it", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [B, D])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [B, D])], _inits(gamma, beta))
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "", "S0"], ["S"], name="loop", body=body)], "g",
        [helper.make_tensor_value_info("n", TensorProto.INT64, []),
         helper.make_tensor_value_info("S0", TensorProto.FLOAT, [B, D])],
        [helper.make_tensor_value_info("S", TensorProto.FLOAT, [B, D])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    calls, notes = find_norm_calls(model, ["blk", "blk.norm"], {"blk.norm": T})
    assert notes == [] and [c.key for c in calls] == ["blk.norm", "blk.norm#1", "blk.norm#2", "blk.norm#3"]
    s = rng.normal(size=(B, D)).astype(np.float32)
    got = _run_exposed(model, calls, {"n": np.array(T, dtype=np.int64), "S0": s})
    for c in calls:
        expected = _ln(2 * s, gamma, beta)
        np.testing.assert_allclose(got[c.key][c.iteration], expected, rtol=1e-5, atol=1e-5)
        s = np.tanh(expected)


def _twice_per_iteration_loop():
    """A Loop whose body calls blk.norm twice per iteration."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]), *_ln_nodes("s", "mid", ""),
         *_ln_nodes("mid", "s_out", "", tag="_2")], "body",
        [helper.make_tensor_value_info("it", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, D])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1, D])],
        _inits(*_params(np.random.default_rng(2))))
    graph = helper.make_graph([helper.make_node("Loop", ["n", "", "S0"], ["S"], name="loop", body=body)], "g",
                              [helper.make_tensor_value_info("n", TensorProto.INT64, []),
                               helper.make_tensor_value_info("S0", TensorProto.FLOAT, [1, D])],
                              [helper.make_tensor_value_info("S", TensorProto.FLOAT, [1, D])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_two_calls_per_iteration():
    """k calls per iteration: PyTorch call i is the body's call i % k in iteration i // k."""
    from ln_deploy.check.localise import find_norm_calls

    model = _twice_per_iteration_loop()
    calls, notes = find_norm_calls(model, ["blk.norm"], {"blk.norm": 6})
    assert notes == []
    assert [(c.key, c.value, c.iteration, c.iterations) for c in calls] == [
        ("blk.norm", "normed", 0, 3), ("blk.norm#1", "normed_2", 0, 3), ("blk.norm#2", "normed", 1, 3),
        ("blk.norm#3", "normed_2", 1, 3), ("blk.norm#4", "normed", 2, 3), ("blk.norm#5", "normed_2", 2, 3)]
    s = np.random.default_rng(3).normal(size=(1, D)).astype(np.float32)
    got = _run_exposed(model, calls, {"n": np.array(3, dtype=np.int64), "S0": s})
    gamma, beta = _params(np.random.default_rng(2))
    for c in calls:
        expected = _ln(2 * s, gamma, beta)
        np.testing.assert_allclose(got[c.key][c.iteration], expected, rtol=1e-5, atol=1e-5)
        s = np.tanh(expected)


def test_unalignable_body_norms_are_noted():
    from ln_deploy.check.localise import find_norm_calls

    model = _twice_per_iteration_loop()
    calls, notes = find_norm_calls(model, ["blk.norm"], {"blk.norm": 5})
    assert calls == [] and "not a multiple of its 2 call(s) per iteration of loop" in notes[0]
    calls, notes = find_norm_calls(model, ["blk.norm"], None)
    assert calls == [] and "call counts were not given" in notes[0]


def test_converted_scan_model_localises_in_its_precision(export_spec):
    """A bf16 conversion of a scan-mode LN-LSTM: the precision is read from the Scan body's initializers,
    and the body's bf16 normalization outputs are exposed through a Cast to fp32."""
    from ln_deploy.check.api import detect_precision
    from ln_deploy.pipeline_steps import convert_model
    from models.catalog import spec_path

    loaded, path = _scan_export(export_spec, BUNDLED["ln_lstm"])
    converted, _ = convert_model(str(path), "bf16", spec=spec_path(BUNDLED["ln_lstm"]))
    assert detect_precision(converted) == "bf16"
    out = path.parent / "ln_lstm_scan_bf16.onnx"
    onnx.save(converted, str(out))
    report = _check(loaded, out)
    assert report.precision == "bf16" and report.passed, report.failures
    norms = report.localisation["onnxrt-cpu"]["norms"]
    assert len(norms) == 3 * report.inputs["shapes"]["x"][1] and all(n["passed"] for n in norms)
    assert max(n["stats"]["max_abs"] for n in norms) > 1e-3  # really bf16 values, not fp32 ones
