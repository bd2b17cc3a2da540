"""Recurrent export that does not bake in the sequence length.

A Python loop over time unrolls into a graph of fixed length. Here the cell step is exported once
with the dynamo exporter, then wrapped in an ONNX ``Scan`` over the time axis (``scan`` mode), or
kept as a streaming step with explicit state inputs and outputs (``step`` mode).

Protocol (see ``ln_deploy.spec.is_recurrent``): ``step(x_t, *state) -> (y_t, *new_state)``,
``initial_state(batch_size) -> tuple of tensors``, and a batch-first ``forward(x)``.
"""

from __future__ import annotations

import torch

STEP_INPUT = "x_t"
STEP_OUTPUT = "y_t"


def state_names(n: int) -> tuple[list[str], list[str]]:
    return [f"state_{i}" for i in range(n)], [f"state_out_{i}" for i in range(n)]


class StepModule(torch.nn.Module):
    """Exposes a recurrent model's ``step`` as ``forward(x_t, state_0, ..., state_{n-1})``.

    torch.export matches dynamic shapes to forward's signature, so the arity is explicit, not ``*state``.
    """

    def __init__(self, model, n_state: int):
        super().__init__()
        self.model = model
        names = state_names(n_state)[0]
        src = (f"def forward(self, x_t, {', '.join(names)}):\n"
               f"    return tuple(self.model.step(x_t, {', '.join(names)}))\n")
        scope: dict = {}
        exec(src, scope)  # noqa: S102 - our own fixed template; only the arity varies
        self.forward = scope["forward"].__get__(self)


def step_example(model, example_x):
    """Example inputs of the step: the first time step and the initial state for that batch."""
    # Clones: a model may return one zeros tensor for several states, and torch.export would
    # merge aliased inputs into one graph input.
    state = tuple(t.clone() for t in model.initial_state(example_x.shape[0]))
    return (example_x[:, 0].clone(), *state)


def build_scan_model(step_model, input_name: str, output_name: str, state_meta: list[dict]):
    """Wrap an exported step graph (inputs x_t, state_i; outputs y_t, state_out_i) in a Scan over axis 1.

    The initial state is zeros of shape [batch, *trailing] made from the input's batch size, so the
    graph runs for any batch and any sequence length; its size does not depend on either.
    """
    import onnx
    from onnx import TensorProto, helper

    n = len(state_meta)
    body = onnx.GraphProto()
    body.CopyFrom(step_model.graph)
    body.name = "ln_deploy_step"
    by_name_in = {v.name: v for v in body.input}
    by_name_out = {v.name: v for v in body.output}
    s_in, s_out = state_names(n)
    # Scan's body takes the states first, then the scan inputs; it returns states, then scan outputs.
    new_inputs = [by_name_in[s] for s in s_in] + [by_name_in[STEP_INPUT]]
    new_outputs = [by_name_out[s] for s in s_out] + [by_name_out[STEP_OUTPUT]]
    del body.input[:]
    body.input.extend(new_inputs)
    del body.output[:]
    body.output.extend(new_outputs)

    x_step = by_name_in[STEP_INPUT].type.tensor_type
    y_step = by_name_out[STEP_OUTPUT].type.tensor_type
    nodes, inits = [], []
    inits.append(helper.make_tensor("ln_deploy_batch_start", TensorProto.INT64, [1], [0]))
    inits.append(helper.make_tensor("ln_deploy_batch_end", TensorProto.INT64, [1], [1]))
    nodes.append(helper.make_node("Shape", [input_name], ["ln_deploy_x_shape"], name="ln_deploy/shape"))
    nodes.append(helper.make_node("Slice", ["ln_deploy_x_shape", "ln_deploy_batch_start", "ln_deploy_batch_end"],
                                  ["ln_deploy_batch"], name="ln_deploy/batch"))
    init_states = []
    for i, meta in enumerate(state_meta):
        trailing = helper.make_tensor(f"ln_deploy_state_{i}_dims", TensorProto.INT64, [len(meta["shape"])], meta["shape"])
        inits.append(trailing)
        nodes.append(helper.make_node("Concat", ["ln_deploy_batch", trailing.name], [f"ln_deploy_state_{i}_shape"],
                                      axis=0, name=f"ln_deploy/state_{i}_shape"))
        zero = helper.make_tensor("value", meta["onnx_dtype"], [1], [0])
        nodes.append(helper.make_node("ConstantOfShape", [f"ln_deploy_state_{i}_shape"], [f"initial_state_{i}"],
                                      value=zero, name=f"ln_deploy/initial_state_{i}"))
        init_states.append(f"initial_state_{i}")
    nodes.append(helper.make_node(
        "Scan", init_states + [input_name], [f"final_state_{i}" for i in range(n)] + [output_name],
        name="ln_deploy/scan", body=body, num_scan_inputs=1, scan_input_axes=[1], scan_output_axes=[1]))

    x_dims = [_dim(d) for d in x_step.shape.dim]
    y_dims = [_dim(d) for d in y_step.shape.dim]
    graph = helper.make_graph(
        nodes, "ln_deploy_scan",
        [helper.make_tensor_value_info(input_name, x_step.elem_type, [x_dims[0], "seq", *x_dims[1:]])],
        [helper.make_tensor_value_info(output_name, y_step.elem_type, [y_dims[0], "seq", *y_dims[1:]])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=list(step_model.opset_import),
                              producer_name="ln_deploy", producer_version=step_model.producer_version)
    model.ir_version = step_model.ir_version
    model.functions.extend(step_model.functions)
    return model


def _dim(d):
    return d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
