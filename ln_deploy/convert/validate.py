"""Refuse an ill-typed converted graph before it is run, returned or written.

A conversion bug (or a typing rule the conversion does not know) shows up as a graph in which some
node binds one type parameter to two types: ``Mul(fp16, fp32)``. ONNX's checker and its strict shape
inference look at each node's schema only, so they miss the case that actually happened: an op
defined by an ONNX function body (RMSNormalization, LayerNormalization, Gelu...) whose body ties types
its schema declares independent; ONNX Runtime inlines the body when it has no kernel and fails at
session creation. The checks here, in order:

1. ``onnx.checker.check_model`` (structure);
2. strict shape/type inference (``check_type=True, strict_mode=True``), unless the source model
   already fails it (inference then cannot tell the conversion's errors from the model's own);
3. every node with a function body: the body must type-check with the node's actual input types,
   and its output types must be the ones the graph declares;
4. an ONNX Runtime CPU session (``ort="required"``), or one whose only allowed failure is a missing
   kernel (``ort="typing"``: a tensorrt-target graph need not run on ORT's CPU provider), or none;
   ln_deploy's plugin nodes are replaced by their reference expansion first, as ``ln-deploy check``
   does (ONNX Runtime also refuses two nodes of the same name, which the checker allows).

Any failure raises ``InternalError`` (exit 3: a conversion bug) with one line naming the node and a workaround.
"""

from __future__ import annotations

import logging

from ..errors import InternalError
from ..ort import first_line as _first_line
from ..onnx_graph import TYPE_NAMES, all_nodes, infer_types

log = logging.getLogger(__name__)

ORT_MODES = ("required", "typing", "skip")


def _tname(t: int) -> str:
    import onnx

    if t in TYPE_NAMES:
        return TYPE_NAMES[t]
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(t).name
    except Exception:
        return str(t)


def _fail(what: str, detail: str, node: str | None = None, source=None) -> InternalError:
    """An ill-typed conversion is ln_deploy's bug, not the user's model: exit 3, nothing written."""
    known = node and source is not None and node in {n.name for n in all_nodes(source.graph)}
    hint = f" (keep the node in fp32 with --fp32-node {node} meanwhile)" if known else ""
    return InternalError(f"{what} failed validation and was not written: {detail}{hint}")


def _strict_inference_error(model) -> str | None:
    import onnx

    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=False)
        return None
    except Exception as e:
        return _first_line(e)


def check_function_bodies(model) -> tuple[str, str] | None:
    """(node name, problem) for the first node whose ONNX function body rejects its input types or
    yields output types other than the graph's; None when every body agrees."""
    from .node_typing import function_body_types, schema_of

    opsets = {(o.domain if o.domain != "ai.onnx" else ""): o.version for o in model.opset_import}
    types = infer_types(model)
    for node in all_nodes(model.graph):
        schema = schema_of(node, opsets)
        if schema is None or not (schema.has_function or schema.has_context_dependent_function):
            continue
        in_types = [types.get(n, 0) if n else 0 for n in node.input]
        if any(not t for t, n in zip(in_types, node.input) if n):
            continue  # an input of unknown type: nothing to compare
        outs = function_body_types(schema, node, in_types, opsets.get(""))
        shown = ", ".join(_tname(t) if t else "-" for t in in_types)
        if outs is None:
            return node.name, f"node {node.name!r} ({node.op_type}) gets inputs ({shown}) its ONNX function body rejects"
        for name, t in zip(node.output, outs):
            have = types.get(name, 0) if name else 0
            if t and have and t != have:
                return node.name, (f"node {node.name!r} ({node.op_type}) with inputs ({shown}) computes {name!r} "
                                   f"as {_tname(t)} but the graph types it {_tname(have)}")
    return None


def ort_load_error(model, allow_missing_kernels: bool) -> tuple[str | None, str] | None:
    """(node name or None, message) when ONNX Runtime's CPU provider refuses the model; None when it
    loads (or, with ``allow_missing_kernels``, fails only for want of a kernel)."""
    from ..ort import UNOPTIMIZED, open_session, parse_error

    try:
        open_session(model, UNOPTIMIZED.replace(log_level=4))
        return None
    except Exception as e:
        err = parse_error(e)
        if allow_missing_kernels and err.missing_kernel:
            return None
        return err.node, err.message


def validate_converted(model, *, source=None, ort: str = "required", what: str = "the converted model") -> None:
    """Raise ``InternalError`` (one line) unless ``model`` is well typed; see the module docstring.
    ``source``: the model before conversion (to tell its own inference errors from new ones)."""
    import onnx

    from .. import plugin_spec

    if ort not in ORT_MODES:
        raise ValueError(f"ort must be one of {ORT_MODES}")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise _fail(what, f"the ONNX checker refuses it ({_first_line(e)})") from None
    err = _strict_inference_error(model)
    if err is not None:
        if source is not None and _strict_inference_error(source) is not None:
            log.debug("strict inference fails on the source model too; not judging %s by it: %s", what, err)
        else:
            from ..ort import node_name_in

            raise _fail(what, f"ONNX type inference: {err}", node_name_in(err), source)
    bad = check_function_bodies(model)
    if bad is not None:
        raise _fail(what, bad[1], bad[0], source)
    if ort == "skip":
        return
    runnable = model
    if any(plugin_spec.is_plugin_node(n) for n in all_nodes(model.graph)):
        # ORT runs plugin nodes through their reference expansion (what `ln-deploy check` does)
        from ..plugin_reference import expand_plugin_nodes

        try:
            runnable, _ = expand_plugin_nodes(model)
        except Exception as e:
            raise _fail(what, f"its plugin nodes cannot be expanded for ONNX Runtime ({_first_line(e)})") from None
    bad = ort_load_error(runnable, allow_missing_kernels=(ort == "typing"))
    if bad is not None:
        node, msg = bad
        raise _fail(what, f"ONNX Runtime refuses it ({msg})", node, source)
