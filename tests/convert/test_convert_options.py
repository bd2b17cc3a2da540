"""``ConvertOptions`` (one validated set of settings for ``convert_model``) and the conversion plan built
by pure functions (``typed_plan``, ``cpu_plan``: new plans from the planner's, nothing mutated and restored)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


@pytest.mark.parametrize("field, value, needle", [
    ("precision", "fp8", "unknown precision 'fp8' (choose from fp16, bf16)"),
    ("target", "onnxrt", "unknown target 'onnxrt' (choose from ort-cpu, tensorrt)"),
    ("fp32_ops", "Exp", "fp32_ops must be a list of names, not one string"),
    ("fp32_nodes", [1, 2], "fp32_nodes must hold names"),
    ("calibration", 3.0, "calibration must be a .npz path or a dict"),
    ("spec", 7, "spec must be a SPEC string"),
    ("measure", "no", "measure must be True or False"),
    ("data_max", 0, "data_max must be a finite number > 0"),
    ("data_max", float("inf"), "data_max must be a finite number > 0"),
    ("tolerance", -1e-3, "tolerance must be None or a finite number > 0"),
    ("max_rounds", -1, "max_rounds must be an integer >= 0"),
    ("fuser", "fuse_model", "fuser must be a callable"),
])
def test_bad_option_is_one_bad_input_error(field, value, needle):
    from ln_deploy.convert.options import ConvertOptions
    from ln_deploy.errors import BadInputError

    with pytest.raises(BadInputError) as e:
        ConvertOptions(**{field: value})
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_convert_model_validates_before_loading_and_merges_options():
    from ln_deploy.convert.options import ConvertOptions
    from ln_deploy.convert.precision import convert_model
    from ln_deploy.errors import BadInputError

    with pytest.raises(BadInputError, match="unknown precision 'fp8'"):
        convert_model("/no/such/model.onnx", "fp8")
    with pytest.raises(BadInputError, match="max_rounds"):
        convert_model("/no/such/model.onnx", options=ConvertOptions(), max_rounds=-1)
    with pytest.raises(TypeError, match="unexpected keyword argument.*keep_io_type"):
        convert_model("/no/such/model.onnx", keep_io_type=False)
    base = ConvertOptions(precision="bf16", fp32_ops=["Exp"], target="tensorrt")
    assert base.fp32_ops == ("Exp",)
    merged = ConvertOptions.from_call(base, "fp16", {"measure": False})
    assert (merged.precision, merged.target, merged.measure, merged.fp32_ops) == ("fp16", "tensorrt", False, ("Exp",))
    assert ConvertOptions.from_call(base, None, {}) is base
    assert ConvertOptions().to_dict()["fuser"] is None and len(ConvertOptions().to_dict()) == 14


def _ln_matmul_model():
    """x -> LayerNormalization -> MatMul -> Exp -> y (opset 17)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.ones(8, np.float32), "scale"),
             numpy_helper.from_array(np.zeros(8, np.float32), "bias"),
             numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")]
    nodes = [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["n"], name="ln", axis=-1),
             helper.make_node("MatMul", ["n", "w"], ["m"], name="mm"),
             helper.make_node("Exp", ["m"], ["y"], name="exp")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return m


def test_plans_are_built_without_touching_the_planner():
    from ln_deploy.convert.node_typing import PRECISIONS, Typer
    from ln_deploy.convert.planning import Planner
    from ln_deploy.convert.precision import cpu_plan, typed_plan
    from ln_deploy.convert.report import ConversionReport
    from ln_deploy.onnx_graph import infer_types

    model = _ln_matmul_model()
    opsets = {o.domain: o.version for o in model.opset_import}
    typer = Typer(PRECISIONS["bf16"], opsets, infer_types(model))
    planner = Planner(model, typer, {"fp32_ops": ("Exp",), "fp32_nodes": ()},
                      ConversionReport("bf16", True, "ort-cpu", False))
    planner.policy(model.graph)
    before = (dict(planner.plan), dict(planner.reason))
    assert before[0] == {"ln": "low", "mm": "low", "exp": "fp32"}
    cpu, reasons = cpu_plan(planner, model.graph)
    # ORT's CPU provider has no bf16 MatMul: the ort-cpu plan computes it in fp32, with the reason
    assert cpu["mm"] == "fp32" and "CPU provider" in reasons["mm"]
    assert (planner.plan, planner.reason) == before  # the planner is only read
    typed = typed_plan({**cpu, "ln": "emulate"})
    assert typed["ln"] == "low" and cpu["ln"] != "emulate"  # a new dict; its input unchanged


def test_same_inputs_same_conversion():
    """Nothing carries over from one conversion (or one measured round) to the next."""
    from ln_deploy.convert.precision import convert_model

    model = _ln_matmul_model()
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)}
    a, ra = convert_model(model, "fp16", calibration=feeds, fp32_ops=())
    b, rb = convert_model(model, "fp16", calibration=feeds, fp32_ops=())
    assert a.SerializeToString() == b.SerializeToString() and ra.to_dict() == rb.to_dict()
    assert model.SerializeToString() == _ln_matmul_model().SerializeToString()  # the input is not modified
