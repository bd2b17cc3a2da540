"""The KServe v2 inference protocol (what Triton speaks over HTTP), request and response bodies.

Both tensor encodings are supported: JSON ``data`` lists, and the binary tensor data extension,
where the JSON header is followed by raw little-endian tensor bytes. The header's length comes in
the ``Inference-Header-Content-Length`` HTTP header, each binary input says its size in
``parameters.binary_data_size``, and an output is returned in binary when the request asks with
``outputs[i].parameters.binary_data`` or the request-level ``parameters.binary_data_output``.

Every malformed request raises ``ProtocolError`` with a message meant for the client.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from .runtime import ServedModel
from .signature import numpy_dtype

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


def parse_infer_request(body: bytes, header_length: str | None, model: ServedModel) -> InferRequest:
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            _fail(f"{HEADER_LENGTH} must be an integer, got {header_length[:40]!r}")
        if n < 0 or n > len(body):
            _fail(f"{HEADER_LENGTH} is {n} but the body has {len(body)} bytes")
        header, binary = body[:n], memoryview(body)[n:]
    else:
        header, binary = body, memoryview(b"")
    try:
        req = json.loads(header)
    except UnicodeDecodeError:
        _fail("the request header is not UTF-8 JSON (binary tensors need the "
              f"{HEADER_LENGTH} header)")
    except json.JSONDecodeError as e:
        _fail(f"the request body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
              "a truncated body reads this way too")
    if not isinstance(req, dict):
        _fail("the request body must be a JSON object")
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
    specs = {t.name: t for t in model.signature.inputs}
    feeds: dict = {}
    offset = 0
    for i, item in enumerate(inputs):
        if not isinstance(item, dict):
            _fail(f"inputs[{i}] must be an object")
        name = item.get("name")
        if not isinstance(name, str):
            _fail(f"inputs[{i}] needs a 'name'")
        spec = specs.get(name)
        if spec is None:
            _fail(f"unexpected input '{name}': model '{model.name}' takes {sorted(specs)}")
        if name in feeds:
            _fail(f"input '{name}' appears twice")
        datatype = item.get("datatype")
        if datatype != spec.datatype:
            _fail(f"input '{name}': datatype {datatype!r} does not match the model's {spec.datatype}")
        shape = item.get("shape")
        if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                       for d in shape)):
            _fail(f"input '{name}': 'shape' must be a list of non-negative integers")
        _check_shape(name, shape, spec.shape, model)
        dtype = numpy_dtype(spec.datatype)
        count = math.prod(shape)
        iparams = item.get("parameters") or {}
        if not isinstance(iparams, dict):
            _fail(f"input '{name}': 'parameters' must be an object")
        size = iparams.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
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
            arr = np.frombuffer(binary[offset:offset + size], dtype=dtype.newbyteorder("<")).reshape(shape)
            offset += size
        else:
            data = item.get("data")
            if data is None:
                _fail(f"input '{name}' has no 'data' and no binary_data_size")
            arr = _json_tensor(name, data, dtype, shape, count)
        feeds[name] = arr
    if offset != len(binary):
        _fail(f"{len(binary) - offset} bytes of binary data follow the inputs that declared binary data")
    missing = [n for n in specs if n not in feeds]
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
    out_names = model.output_names
    req_outputs = req.get("outputs")
    outputs = []
    if req_outputs is None:
        outputs = [(n, default_binary) for n in out_names]
    else:
        if not isinstance(req_outputs, list):
            _fail("'outputs' must be a list")
        for j, o in enumerate(req_outputs):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                _fail(f"outputs[{j}] needs a 'name'")
            if o["name"] not in out_names:
                _fail(f"unexpected output '{o['name']}': model '{model.name}' returns {out_names}")
            oparams = o.get("parameters") or {}
            if not isinstance(oparams, dict):
                _fail(f"output '{o['name']}': 'parameters' must be an object")
            if oparams.get("classification"):
                _fail("the classification extension is not supported")
            binary_out = oparams.get("binary_data", default_binary)
            if not isinstance(binary_out, bool):
                _fail(f"output '{o['name']}': binary_data must be true or false")
            outputs.append((o["name"], binary_out))
    return InferRequest(req_id, feeds, batch, outputs)


def _check_shape(name: str, shape: list, model_shape: tuple, model: ServedModel) -> None:
    if model.max_batch_size > 0:
        expected_rank = len(model_shape)
        described = ["batch"] + [("-1" if d == -1 else str(d)) for d in model_shape[1:]]
        fixed = list(enumerate(model_shape))[1:]
    else:
        expected_rank = len(model_shape)
        described = [("-1" if d == -1 else str(d)) for d in model_shape]
        fixed = list(enumerate(model_shape))
    if len(shape) != expected_rank:
        _fail(f"input '{name}': rank {len(shape)} (shape {shape}) but the model expects rank {expected_rank} "
              f"[{', '.join(described)}]")
    for axis, d in fixed:
        if d != -1 and shape[axis] != d:
            _fail(f"input '{name}': shape {shape} but axis {axis} must be {d} [{', '.join(described)}]")


def _json_tensor(name: str, data, dtype, shape: list, count: int):
    if not isinstance(data, list):
        _fail(f"input '{name}': 'data' must be a list")
    try:
        if dtype.kind in "iub":
            arr = np.array(data, dtype=object).ravel()
            if arr.size == count and not all(isinstance(v, (int, bool)) and (dtype.kind == "b") == isinstance(v, bool)
                                             for v in arr.tolist()):
                _fail(f"input '{name}': 'data' must hold {'booleans' if dtype.kind == 'b' else 'integers'}")
            arr = arr.astype(dtype)
        else:
            arr = np.array(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as e:
        _fail(f"input '{name}': 'data' is not a list of numbers ({str(e)[:120]})")
    if arr.size != count:
        _fail(f"input '{name}': 'data' holds {arr.size} values but shape {shape} needs {count}")
    return arr.reshape(shape)


def encode_infer_response(model: ServedModel, req: InferRequest, results: dict) -> tuple[bytes, dict]:
    """Body and headers of a successful response; binary outputs follow the JSON header."""
    outputs, blobs = [], []
    for name, binary in req.outputs:
        arr = np.ascontiguousarray(results[name])
        spec_type = next(t.datatype for t in model.signature.outputs if t.name == name)
        entry = {"name": name, "datatype": spec_type, "shape": list(arr.shape)}
        if binary:
            raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = arr.ravel().tolist()
        outputs.append(entry)
    resp = {"model_name": model.name, "model_version": model.version, "outputs": outputs}
    if req.id is not None:
        resp["id"] = req.id
    header = json.dumps(resp, separators=(",", ":")).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return b"".join([header, *blobs]), {"content-type": "application/octet-stream",
                                         HEADER_LENGTH.lower(): str(len(header))}


def model_metadata(model: ServedModel) -> dict:
    def tensors(specs):
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in specs]

    return {"name": model.name, "versions": [model.version], "platform": "onnxruntime_onnx",
            "inputs": tensors(model.signature.inputs), "outputs": tensors(model.signature.outputs)}
