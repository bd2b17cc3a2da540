"""The KServe v2 inference protocol (what Triton speaks over HTTP), request and response bodies.

Both tensor encodings are supported: JSON ``data`` lists, and the binary tensor data extension,
where the JSON header is followed by raw little-endian tensor bytes. The header's length comes in
the ``Inference-Header-Content-Length`` HTTP header, each binary input says its size in
``parameters.binary_data_size``, and an output is returned in binary when the request asks with
``outputs[i].parameters.binary_data`` or the request-level ``parameters.binary_data_output``.

Parsing is strict, because a lenient parser turns a client's mistake into wrong answers: JSON
``data`` elements must be of the declared datatype's kind (numbers for FP*, integers for INT*/UINT*,
``true``/``false`` for BOOL; strings, ``null``, booleans in a number tensor, ``NaN``/``Infinity``
literals and values out of the type's range are refused), nested ``data`` may be no deeper than
the tensor's rank, and a body nested deeper than Python's JSON decoder allows is a 400, not a
``RecursionError``. Every malformed request raises ``ProtocolError`` with a message for the client.

Cost: a binary input is a NumPy view of the request body (no copy, no per-element work); the
response header is assembled from per-model fragments encoded once, and a binary response is one
buffer the outputs are copied into once.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

import numpy as np

from .runtime import ServedModel
from ..signature import numpy_dtype

HEADER_LENGTH = "Inference-Header-Content-Length"


class ProtocolError(Exception):
    status = 400


class PayloadTooLarge(ProtocolError):
    status = 413


@dataclass
class InferRequest:
    id: str | None
    feeds: dict  # input name -> np.ndarray, validated against the model
    batch: int  # rows along the batch axis (1 for models served without batching)
    outputs: list  # (name, binary: bool), in the order to return them


def _fail(msg: str):
    raise ProtocolError(msg)


def _refuse_constant(name: str):
    _fail(f"the request body holds {name}, which is not JSON (non-finite values cannot be sent as JSON data)")


# What a JSON data element may be, by NumPy dtype kind. bool is a subclass of int in Python, so the
# sets are compared by exact type.
_ELEMENT_TYPES = {"f": ({int, float}, "numbers"), "i": ({int}, "integers"), "u": ({int}, "integers"),
                  "b": ({bool}, "true/false")}
_JSON_NAMES = {str: "a string", type(None): "null", bool: "true/false", float: "a non-integer number",
               dict: "an object", int: "an integer"}


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)  # one instance: json.loads(..., hook) builds one per call


def _load_header(header) -> dict:
    try:
        req = _DECODER.decode(header.decode("utf-8") if not isinstance(header, str) else header)
    except UnicodeDecodeError:
        _fail("the request header is not UTF-8 JSON (binary tensors need the "
              f"{HEADER_LENGTH} header)")
    except json.JSONDecodeError as e:
        _fail(f"the request body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
              "a truncated body reads this way too")
    except RecursionError:
        _fail("the request body is nested too deeply")
    if not isinstance(req, dict):
        _fail("the request body must be a JSON object")
    return req


class _Specs:
    """Per-model facts the parser and encoder need, computed once per model."""

    def __init__(self, model: ServedModel):
        self.inputs = {t.name: (t, numpy_dtype(t.datatype).newbyteorder("<")) for t in model.signature.inputs}
        self.output_types = {t.name: t.datatype for t in model.signature.outputs}
        self.output_prefix = {t.name: '{"name":%s,"datatype":"%s","shape":[' % (json.dumps(t.name), t.datatype)
                              for t in model.signature.outputs}
        self.head = '{"model_name":%s,"model_version":%s,' % (json.dumps(model.name), json.dumps(model.version))
        self.plans: dict[bytes, _Plan] = {}  # header bytes of an all-binary request -> what it parsed to


# A client sends the same JSON header again and again (same shapes, same outputs; tritonclient sends
# no id unless asked): an all-binary request whose header bytes were parsed and validated before
# reuses that result, and only its binary data is looked at. Bounded per model.
_PLAN_MAX_HEADER = 4096
_PLAN_MAX_ENTRIES = 256


@dataclass(frozen=True)
class _Plan:
    id: str | None
    inputs: tuple  # (name, dtype, shape, count, offset)
    binary_size: int
    batch: int
    outputs: tuple  # (name, binary)


_SPECS: dict[int, tuple[ServedModel, _Specs]] = {}


def _specs(model: ServedModel) -> _Specs:
    hit = _SPECS.get(id(model))
    if hit is None or hit[0] is not model:
        hit = _SPECS[id(model)] = (model, _Specs(model))
    return hit[1]


def parse_infer_request(body, header_length: str | None, model: ServedModel) -> InferRequest:
    """``body``: bytes or bytearray (binary inputs become views of it, not copies)."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            _fail(f"{HEADER_LENGTH} must be an integer, got {header_length[:40]!r}")
        if n < 0 or n > len(body):
            _fail(f"{HEADER_LENGTH} is {n} but the body has {len(body)} bytes")
        view = memoryview(body)
        header, binary = view[:n], view[n:]
        header = bytes(header)  # json.loads takes bytes, not a memoryview; headers are small
        plan = _specs(model).plans.get(header)
        if plan is not None and plan.binary_size == len(binary):
            return _planned(plan, binary)
    else:
        header, binary = body, memoryview(b"")
    req = _load_header(header)
    params = req.get("parameters") or {}
    if not isinstance(params, dict):
        _fail("'parameters' must be an object")
    if "sequence_id" in params and params["sequence_id"] not in (0, ""):
        _fail("sequence batching is not supported by this server")
    req_id = req.get("id")
    if req_id is not None and not isinstance(req_id, str):
        _fail("'id' must be a string")

    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        _fail("'inputs' must be a non-empty list")
    specs = _specs(model)
    feeds: dict = {}
    offset = 0
    planned = []  # (name, dtype, shape, count, offset) of each binary input
    for i, item in enumerate(inputs):
        if not isinstance(item, dict):
            _fail(f"inputs[{i}] must be an object")
        name = item.get("name")
        if not isinstance(name, str):
            _fail(f"inputs[{i}] needs a 'name'")
        found = specs.inputs.get(name)
        if found is None:
            _fail(f"unexpected input '{name}': model '{model.name}' takes {sorted(specs.inputs)}")
        spec, dtype = found
        if name in feeds:
            _fail(f"input '{name}' appears twice")
        datatype = item.get("datatype")
        if datatype != spec.datatype:
            _fail(f"input '{name}': datatype {datatype!r} does not match the model's {spec.datatype}")
        shape = item.get("shape")
        if (not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape)):
            _fail(f"input '{name}': 'shape' must be a list of non-negative integers")
        _check_shape(name, shape, spec.shape, model)
        count = math.prod(shape)
        iparams = item.get("parameters") or {}
        if not isinstance(iparams, dict):
            _fail(f"input '{name}': 'parameters' must be an object")
        size = iparams.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                _fail(f"input '{name}': binary_data_size must be a non-negative integer")
            if "data" in item:
                _fail(f"input '{name}' has both 'data' and binary_data_size")
            expected = count * dtype.itemsize
            if size != expected:
                _fail(f"input '{name}': binary_data_size {size} does not match shape {shape} of "
                      f"{spec.datatype} ({expected} bytes)")
            if offset + size > len(binary):
                _fail(f"input '{name}': the body is truncated (binary data ends at byte {len(binary)}, "
                      f"this input needs bytes {offset}..{offset + size})")
            arr = _binary_input(binary, name, dtype, shape, count, offset)
            planned.append((name, dtype, tuple(shape), count, offset))
            offset += size
        else:
            if "data" not in item or item["data"] is None:
                _fail(f"input '{name}' has no 'data' and no binary_data_size")
            arr = _json_tensor(name, item["data"], dtype, spec.datatype, shape, count)
        feeds[name] = arr
    if offset != len(binary):
        _fail(f"{len(binary) - offset} bytes of binary data follow the inputs that declared binary data")
    missing = [n for n in specs.inputs if n not in feeds]
    if missing:
        _fail(f"missing inputs {missing} for model '{model.name}'")

    batch = 1
    if model.max_batch_size > 0:
        sizes = {n: a.shape[0] for n, a in feeds.items()}
        batch = next(iter(sizes.values()))
        if any(b != batch for b in sizes.values()):
            _fail(f"inputs disagree on the batch size: {sizes}")
        if batch < 1:
            _fail("the batch size must be at least 1")
        if batch > model.max_batch_size:
            _fail(f"batch size {batch} exceeds the maximum of {model.max_batch_size} for model '{model.name}'")

    default_binary = params.get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        _fail("'binary_data_output' must be true or false")
    req_outputs = req.get("outputs")
    outputs = []
    if req_outputs is None:
        outputs = [(n, default_binary) for n in specs.output_types]
    else:
        if not isinstance(req_outputs, list):
            _fail("'outputs' must be a list")
        for j, o in enumerate(req_outputs):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                _fail(f"outputs[{j}] needs a 'name'")
            if o["name"] not in specs.output_types:
                _fail(f"unexpected output '{o['name']}': model '{model.name}' returns {list(specs.output_types)}")
            oparams = o.get("parameters") or {}
            if not isinstance(oparams, dict):
                _fail(f"output '{o['name']}': 'parameters' must be an object")
            if oparams.get("classification"):
                _fail("the classification extension is not supported")
            binary_out = oparams.get("binary_data", default_binary)
            if not isinstance(binary_out, bool):
                _fail(f"output '{o['name']}': binary_data must be true or false")
            outputs.append((o["name"], binary_out))
    if header_length is not None and len(planned) == len(feeds) and len(header) <= _PLAN_MAX_HEADER:
        plans = specs.plans
        if len(plans) >= _PLAN_MAX_ENTRIES:
            plans.clear()
        plans[header] = _Plan(req_id, tuple(planned), offset, batch, tuple(outputs))
    return InferRequest(req_id, feeds, batch, outputs)


def _planned(plan: _Plan, binary) -> InferRequest:
    """A request whose header was parsed before: only the binary data is new."""
    feeds = {}
    for name, dtype, shape, count, offset in plan.inputs:
        feeds[name] = _binary_input(binary, name, dtype, shape, count, offset)
    return InferRequest(plan.id, feeds, plan.batch, list(plan.outputs))


def _binary_input(binary, name: str, dtype, shape, count: int, offset: int):
    """A view of the body (no copy); BOOL bytes must be 0 or 1."""
    arr = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
    if dtype.kind == "b" and count and arr.view(np.uint8).max() > 1:
        _fail(f"input '{name}': BOOL binary data must be bytes 0 or 1")
    return arr


def _check_shape(name: str, shape: list, model_shape: tuple, model: ServedModel) -> None:
    expected_rank = len(model_shape)
    if model.max_batch_size > 0:
        described = ["batch"] + [("-1" if d == -1 else str(d)) for d in model_shape[1:]]
        fixed = list(enumerate(model_shape))[1:]
    else:
        described = [("-1" if d == -1 else str(d)) for d in model_shape]
        fixed = list(enumerate(model_shape))
    if len(shape) != expected_rank:
        _fail(f"input '{name}': rank {len(shape)} (shape {shape}) but the model expects rank {expected_rank} "
              f"[{', '.join(described)}]")
    for axis, d in fixed:
        if d != -1 and shape[axis] != d:
            _fail(f"input '{name}': shape {shape} but axis {axis} must be {d} [{', '.join(described)}]")


def _json_tensor(name: str, data, dtype, datatype: str, shape: list, count: int):
    """A JSON ``data`` list (flat, or nested no deeper than the rank) as an array of ``dtype``."""
    if not isinstance(data, list):
        _fail(f"input '{name}': 'data' must be a list")
    flat, depth = data, 1
    types = set(map(type, flat))
    while list in types:
        if len(types) > 1:
            _fail(f"input '{name}': 'data' mixes lists and values at nesting level {depth}")
        depth += 1
        if depth > max(1, len(shape)):
            _fail(f"input '{name}': 'data' is nested {depth} deep, deeper than the tensor's rank {len(shape)}")
        flat = list(itertools.chain.from_iterable(flat))
        types = set(map(type, flat))
    allowed, what = _ELEMENT_TYPES.get(dtype.kind, (set(), "?"))
    bad = types - allowed
    if bad:
        found = ", ".join(sorted(_JSON_NAMES.get(t, t.__name__) for t in bad))
        _fail(f"input '{name}': {datatype} 'data' must hold {what}, got {found}")
    if len(flat) != count:
        _fail(f"input '{name}': 'data' holds {len(flat)} values but shape {shape} needs {count}")
    try:
        with np.errstate(over="raise"):
            arr = np.array(flat, dtype=dtype)
    except (OverflowError, FloatingPointError):
        _fail(f"input '{name}': a value in 'data' is out of the range of {datatype}")
    if dtype.kind == "f" and count and not np.isfinite(arr).all():
        _fail(f"input '{name}': a value in 'data' is out of the range of {datatype}")
    return arr.reshape(shape)


def encode_infer_response(model: ServedModel, req: InferRequest, results: dict) -> tuple[bytes, dict]:
    """Body and headers of a successful response; binary outputs follow the JSON header."""
    specs = _specs(model)
    parts, blobs = [], []
    for name, binary in req.outputs:
        arr = results[name]
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        shape = ",".join(map(str, arr.shape))
        if binary:
            arr = np.ascontiguousarray(arr)
            parts.append(f'{specs.output_prefix[name]}{shape}],"parameters":{{"binary_data_size":{arr.nbytes}}}}}')
            blobs.append(arr)
        else:
            data = json.dumps(arr.ravel().tolist(), separators=(",", ":"))
            parts.append(f'{specs.output_prefix[name]}{shape}],"data":{data}}}')
    rid = f',"id":{json.dumps(req.id)}' if req.id is not None else ""
    header = f'{specs.head}"outputs":[{",".join(parts)}]{rid}}}'.encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    # One buffer, each output copied into it once: join takes the arrays' buffers as they are
    # (tobytes first would copy every output twice; a bytearray(n) to fill would be zeroed first).
    body = b"".join([header, *(memoryview(arr.reshape(-1)).cast("B") for arr in blobs)])
    return body, {"content-type": "application/octet-stream", HEADER_LENGTH.lower(): str(len(header))}


def model_metadata(model: ServedModel, parameters: dict | None = None) -> dict:
    def tensors(specs):
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in specs]

    meta = {"name": model.name, "versions": [model.version], "platform": "onnxruntime_onnx",
            "inputs": tensors(model.signature.inputs), "outputs": tensors(model.signature.outputs)}
    if parameters:
        meta["parameters"] = parameters
    return meta
