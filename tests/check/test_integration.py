"""Polygraphy integration (``polygraphy run --torch``), reports, real inputs, fp16 deployments, TensorRT."""

import json
import subprocess
import sys

import numpy as np
import pytest

from models.catalog import BUNDLED, spec_path


# `polygraphy`'s console script, run with this interpreter (the package has no __main__).
POLYGRAPHY = [sys.executable, "-c", "import sys; from polygraphy.tools import main; sys.argv[0] = 'polygraphy'; "
              "sys.exit(main())"]


def test_entry_point_resolves_to_argument_groups():
    from importlib.metadata import entry_points

    from polygraphy.tools.args.base import BaseRunnerArgs

    eps = entry_points(group="polygraphy.run.plugins")
    ep = next(e for e in eps if e.name == "ln_deploy")
    groups = ep.load()()
    assert any(isinstance(g, BaseRunnerArgs) and g.get_name_opt()[1] == "torch" for g in groups)


def test_polygraphy_run_onnxrt_vs_torch(export_spec):
    _, onnx_path = export_spec(BUNDLED["pre_ln_encoder"])
    p = subprocess.run([*POLYGRAPHY, "run", str(onnx_path), "--onnxrt", "--torch",
                        "--input-shapes", "x:[2,8,64]", "--atol", "1e-4", "--rtol", "1e-3"],
                       capture_output=True, text=True, timeout=300)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-3000:]
    assert "torch-runner" in log and "PASSED" in log and "Pass Rate: 100.00%" in log


def test_polygraphy_run_detects_a_damaged_model(export_spec, tmp_path):
    import onnx

    from ln_deploy.check import perturb_scale

    _, onnx_path = export_spec(BUNDLED["pre_ln_encoder"])
    damaged = tmp_path / "damaged.onnx"
    onnx.save(perturb_scale(onnx.load(str(onnx_path)), "final_norm", 1.05), str(damaged))
    p = subprocess.run([*POLYGRAPHY, "run", str(damaged), "--onnxrt", "--torch",
                        "--torch-spec", spec_path(BUNDLED["pre_ln_encoder"]), "--input-shapes", "x:[2,8,64]"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "FAILED" in p.stdout + p.stderr


def test_report_files_and_summary(export_spec, tmp_path):
    from ln_deploy.check import check_model

    loaded, onnx_path = export_spec(BUNDLED["masked_encoder"])
    report = check_model(loaded, onnx_path, report_dir=tmp_path / "r")
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["passed"] and data["reference"] == "pytorch-fp32"
    out = data["comparisons"][0]["outputs"]["output"]
    assert out["stats"]["max_abs"] < 1e-4 and out["checks"][0]["stat"] == "elemwise"
    assert {r["check"] for r in data["invariance"]} >= {"train_eval", "batch_independence", "padding_leak",
                                                        "batch_independence_bitwise"}
    assert set(data["timings_s"]) >= {"pytorch-fp32", "onnxrt-cpu"}
    md = (tmp_path / "r" / "report.md").read_text()
    assert "error_output.png" in md and "## Invariance" in md
    png = (tmp_path / "r" / "error_output.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    line = report.summary_line()
    assert line.startswith("masked_encoder: PASS (fp32)") and "\n" not in line
    # Polygraphy can read back the saved run results
    from polygraphy.comparator import RunResults

    rr = RunResults.load(str(tmp_path / "r" / "run_results.json"))
    assert [name for name, _ in rr.items()] == ["pytorch-fp32", "onnxrt-cpu"]


def test_real_inputs_from_npz(export_spec, tmp_path):
    from ln_deploy.check import check_model

    loaded, onnx_path = export_spec(BUNDLED["masked_encoder"])
    rng = np.random.default_rng(3)
    mask = np.ones((3, 5), np.float32)
    mask[2, 3:] = 0
    npz = tmp_path / "real.npz"
    np.savez(npz, x__0=rng.standard_normal((3, 5, 64)).astype(np.float32), mask__0=mask,
             x__1=rng.standard_normal((1, 7, 64)), mask__1=np.ones((1, 7)))  # float64: cast to the model's dtype
    report = check_model(loaded, onnx_path, inputs=npz, invariance=False)
    assert report.passed and report.inputs["feeds"] == 2
    assert report.comparisons[0]["outputs"]["output"]["iterations"] == 2


def test_generated_masks_are_binary_and_keep_a_real_token(export_spec):
    from ln_deploy.check.inputs import InputGenerator

    loaded, _ = export_spec(BUNDLED["masked_encoder"])
    gen = InputGenerator(loaded, seed=0)
    for _ in range(5):
        feed = gen.feed(batch=6, padded=True)
        m = feed["mask"]
        assert set(np.unique(m)) <= {0.0, 1.0}
        assert (m[:, 0] == 1).all() and (m == 0).any()


@pytest.fixture(scope="module")
def fp16_model(export_spec, tmp_path_factory):
    import onnx
    from onnxconverter_common import float16

    loaded, onnx_path = export_spec(BUNDLED["pre_ln_encoder"])
    m = float16.convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    path = tmp_path_factory.mktemp("fp16") / "fp16.onnx"
    onnx.save(m, str(path))
    return loaded, path


def test_fp16_deployment_uses_the_fp16_profile(fp16_model):
    from ln_deploy.check import check_model

    loaded, path = fp16_model
    report = check_model(loaded, path)  # precision read from the initializers
    assert report.precision == "fp16"
    assert report.passed, report.failures
    stats = report.comparisons[0]["outputs"]["output"]["stats"]
    assert 1e-5 < stats["max_abs"] < 5e-2  # an fp16 error, within the fp16 profile
    assert [c["stat"] for c in report.comparisons[0]["outputs"]["output"]["checks"]] == ["max", "q0.99"]


def test_fp16_deployment_fails_the_fp32_profile(fp16_model):
    from ln_deploy.check import check_model

    loaded, path = fp16_model
    report = check_model(loaded, path, precision="fp32", localise=False, invariance=False)
    assert not report.passed


def test_per_output_tolerance_override(export_spec, tmp_path):
    import onnx

    from ln_deploy.check import check_model, perturb_scale

    loaded, onnx_path = export_spec(BUNDLED["pre_ln_encoder"])
    damaged = tmp_path / "d.onnx"
    onnx.save(perturb_scale(onnx.load(str(onnx_path)), "final_norm", 1.001), str(damaged))
    strict = check_model(loaded, damaged, localise=False, invariance=False)
    loose = check_model(loaded, damaged, localise=False, invariance=False, tolerances={"atol": {"output": 0.05}})
    assert not strict.passed and loose.passed


def _tensorrt_reason():
    from ln_deploy.check.runners import tensorrt_unavailable_reason

    return tensorrt_unavailable_reason("engine.plan")


def test_tensorrt_skipped_with_reason_when_missing(export_spec, tmp_path):
    from ln_deploy.check import check_model

    if _tensorrt_reason() is None:
        pytest.skip("TensorRT and a GPU are present: the skip path is not reachable here")
    loaded, onnx_path = export_spec(BUNDLED["pre_ln_encoder_block"])
    engine = tmp_path / "engine.plan"
    engine.write_bytes(b"placeholder: TensorRT is skipped before the engine is read")
    report = check_model(loaded, onnx_path, engine=engine, localise=False, invariance=False)
    trt = next(r for r in report.runners if r["name"] == "tensorrt")
    assert trt["status"] == "skipped" and trt["reason"] == _tensorrt_reason()
    assert report.passed  # the rest still ran
    assert "tensorrt skipped" in report.summary_line()


@pytest.mark.tensorrt
def test_tensorrt_engine_parity_and_bitwise_batch_invariance(export_spec, tmp_path):
    reason = _tensorrt_reason()
    if reason is not None:
        pytest.skip(f"TensorRT check needs TensorRT and a GPU: {reason}")
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, SaveBytes

    from ln_deploy.check import check_model

    loaded, onnx_path = export_spec(BUNDLED["pre_ln_encoder"])
    engine = tmp_path / "model.plan"
    SaveBytes(EngineBytesFromNetwork(NetworkFromOnnxPath(str(onnx_path)), config=CreateConfig()), str(engine))()
    report = check_model(loaded, onnx_path, engine=engine)
    assert report.passed, report.failures
    bitwise = next(r for r in report.invariance
                   if r["check"] == "batch_independence_bitwise" and r["runtime"] == "tensorrt")
    assert bitwise["status"] == "passed"
