"""``CheckOptions`` (one validated set of settings) and the deployed-runtime registry
(``runners.DEPLOYED_RUNTIMES``: one class per backend, so adding a runtime is one class)."""

import pytest

from models.catalog import BUNDLED


@pytest.mark.parametrize("field, value, needle", [
    ("precision", "fp8", "precision must be auto, fp32, fp16, bf16; not 'fp8'"),
    ("batch_size", 1, "batch_size must be at least 2"),
    ("batch_size", 2.5, "batch_size must be at least 2"),
    ("seed", -1, "seed must be an integer >= 0"),
    ("threads", -2, "threads must be an integer >= 0"),
    ("max_batch", 0, "max_batch must be an integer >= 1"),
    ("torch_device", "tpu", "torch_device must be one of cpu, cuda"),
    ("plugins", "/lib/one.so", "plugins must be a list of library paths"),
    ("inputs", 3, "inputs must be None"),
    ("tolerances", {"atol": -1}, "must be a finite number >= 0"),
    ("tolerances", {"btol": 1e-3}, "unknown key"),
    ("tolerances", 1e-3, "tolerances must be a dict"),
    ("localise", "yes", "localise must be True or False"),
])
def test_bad_option_is_one_bad_input_error(field, value, needle):
    from ln_deploy.check.options import CheckOptions
    from ln_deploy.errors import BadInputError

    with pytest.raises(BadInputError) as e:
        CheckOptions(**{field: value})
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_check_model_validates_its_keywords_before_loading_anything():
    from ln_deploy.check import check_model
    from ln_deploy.errors import BadInputError

    # neither file exists: the options are refused first, naming the option
    with pytest.raises(BadInputError, match="batch_size must be at least 2"):
        check_model("/no/such/model.py:make", "/no/such/model.onnx", batch_size=1)
    with pytest.raises(TypeError, match="unexpected keyword argument.*batchsize"):
        check_model("/no/such/model.py:make", "/no/such/model.onnx", batchsize=4)


def test_keywords_apply_over_options_and_are_validated_again():
    from ln_deploy.check.options import CheckOptions
    from ln_deploy.errors import BadInputError

    base = CheckOptions(plugins=["a.so"], seed=3)
    assert base.plugins == ("a.so",)  # a list becomes a tuple: the options are frozen
    merged = CheckOptions.from_call(base, {"seed": 5, "localise": False})
    assert (merged.seed, merged.localise, merged.plugins) == (5, False, ("a.so",)) and base.seed == 3
    assert CheckOptions.from_call(base, {}) is base
    with pytest.raises(BadInputError, match="seed"):
        CheckOptions.from_call(base, {"seed": -1})
    assert CheckOptions().to_dict()["plugins"] == [] and set(CheckOptions().to_dict()) == {
        "checkpoint", "engine", "plugins", "precision", "report_dir", "inputs", "seed", "tolerances", "localise",
        "invariance", "batch_size", "threads", "plots", "torch_device", "max_batch"}


def test_registry_builds_each_backend(export_spec):
    import numpy as np

    from ln_deploy.check.inputs import onnx_inputs
    from ln_deploy.check.runners import (DEPLOYED_RUNTIMES, DeployedRuntime, OnnxrtRuntime, RuntimeSetup, Skipped,
                                         deployed_runtimes)
    from ln_deploy.fileio import load_onnx

    assert list(DEPLOYED_RUNTIMES) == ["onnxrt", "tensorrt"]
    assert all(issubclass(c, DeployedRuntime) for c in DEPLOYED_RUNTIMES.values())
    loaded, path = export_spec(BUNDLED["pre_ln_encoder"])
    model = load_onnx(path)
    found = deployed_runtimes(RuntimeSetup(model.SerializeToString(), onnx_inputs(model)))
    ort_cpu = next(r for r in found if r.name == "onnxrt-cpu")
    assert isinstance(ort_cpu, OnnxrtRuntime) and ort_cpu.provider == "CPUExecutionProvider"
    assert ort_cpu.sweeps_shapes and not ort_cpu.require_bitwise and ort_cpu.not_localised is None
    trt = next(r for r in found if r.name == "tensorrt")
    assert isinstance(trt, Skipped) and trt.reason.startswith("no engine given") and trt.note is None
    feed = {"x": loaded.example_inputs[0].numpy()}
    with ort_cpu.runner as r:
        out = r.infer(feed)
    with ort_cpu.localisation_runner(model.SerializeToString(), None) as r:  # the same graph: same output
        again = r.infer(feed)
    np.testing.assert_array_equal(out["output"], again["output"])


def _unoptimised_class():
    """A runtime added by one class: ONNX Runtime with every graph optimisation off (its own kernels, no
    fusions), compared with PyTorch like any other deployed runtime."""
    from polygraphy.backend.onnxrt import OnnxrtRunner

    from ln_deploy.check.runners import DeployedRuntime
    from ln_deploy.ort import SessionConfig, open_session

    class Unoptimised(DeployedRuntime):
        label = "ONNX Runtime (no graph optimisation)"

        @classmethod
        def create(cls, setup):
            sess = setup.timed("onnxrt-unoptimised", "session", open_session, setup.model_bytes,
                               SessionConfig(level="disable"))
            return [cls("onnxrt-unoptimised", OnnxrtRunner(sess, name="onnxrt-unoptimised"), setup.inputs,
                        {"name": "onnxrt-unoptimised", "role": "deployed", "status": "ran"})]

    return Unoptimised


def test_a_new_runtime_is_one_registered_class(export_spec, monkeypatch):
    from ln_deploy.check import check_model, runners

    monkeypatch.setitem(runners.DEPLOYED_RUNTIMES, "onnxrt-unoptimised", _unoptimised_class())
    loaded, path = export_spec(BUNDLED["pre_ln_encoder"])
    report = check_model(loaded, path, invariance=False, plots=False)
    names = [r["name"] for r in report.runners]
    assert names[0] == "pytorch-fp32" and "onnxrt-cpu" in names and names[-1] == "onnxrt-unoptimised"
    comp = next(c for c in report.comparisons if c["runner"] == "onnxrt-unoptimised")
    assert comp["passed"] and comp["reference"] == "pytorch-fp32"
    # localisation asked the class, not its name: the default says why it is not localised
    assert report.localisation["onnxrt-unoptimised"]["norms"] == []
    assert report.localisation["onnxrt-cpu"]["norms"]
    assert report.passed, report.failures
    assert "onnxrt-unoptimised" in report.timings_s and "session" in report.timings_s["onnxrt-unoptimised"]
