"""Bad requests get a 4xx and a message, and the server answers a valid request right after each."""

from __future__ import annotations

import http.client
import json
import socket

import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

INFER = "/v2/models/pre_ln_encoder/infer"


def _post(server, path, body: bytes, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _json_body(inputs, **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def _x(shape, datatype="FP32", data=None, name="x"):
    n = int(np.prod(shape))
    return {"name": name, "shape": shape, "datatype": datatype, "data": data if data is not None else [0.5] * n}


def _assert_still_serving(server):
    """A valid request through the official client, right after the bad one."""
    c = server.client()
    x = np.random.default_rng(0).standard_normal((2, 4, 64)).astype(np.float32)
    i = th.InferInput("x", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    y = c.infer("pre_ln_encoder", [i]).as_numpy("output")
    assert y.shape == (2, 4, 64) and np.isfinite(y).all()


def _binary_body(shape, declared_size: int, actual: bytes):
    header = json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32",
                                     "parameters": {"binary_data_size": declared_size}}]}).encode()
    return header + actual, {"Inference-Header-Content-Length": str(len(header))}


CASES = {
    "wrong input name": (_json_body([_x([1, 8, 64], name="y")]), {}, 400, "unexpected input 'y'"),
    "wrong dtype": (_json_body([_x([1, 8, 64], datatype="FP64")]), {}, 400, "datatype 'FP64' does not match"),
    "unknown dtype": (_json_body([_x([1, 8, 64], datatype="FLOAT")]), {}, 400, "does not match the model's FP32"),
    "wrong rank": (_json_body([_x([8, 64])]), {}, 400, "rank 2"),
    "wrong fixed dim": (_json_body([_x([1, 8, 63])]), {}, 400, "axis 2 must be 64"),
    "data count differs from shape": (_json_body([_x([1, 8, 64], data=[1.0] * 10)]), {}, 400, "holds 10 values"),
    "data not numbers": (_json_body([_x([1, 1, 64], data=["a"] * 64)]), {}, 400, "must hold numbers, got a string"),
    # Strict element types: each of these used to be accepted (null gave an all-NaN answer, status 200).
    "FP32 data as strings of numbers": (_json_body([_x([1, 1, 64], data=["0.5"] * 64)]), {}, 400,
                                        "FP32 'data' must hold numbers, got a string"),
    "FP32 data with a null": (_json_body([_x([1, 1, 64], data=[0.5] * 63 + [None])]), {}, 400, "got null"),
    "FP32 data as booleans": (_json_body([_x([1, 1, 64], data=[True] * 64)]), {}, 400, "got true/false"),
    "FP32 data mixing numbers and a boolean": (_json_body([_x([1, 1, 64], data=[1.0] * 63 + [False])]), {}, 400,
                                               "got true/false"),
    "NaN literal (not JSON)": (_json_body([_x([1, 1, 64])]).replace(b"0.5", b"NaN", 1), {}, 400, "not JSON"),
    "value out of FP32 range": (_json_body([_x([1, 1, 64], data=[1e39] + [0.5] * 63)]), {}, 400,
                                "out of the range of FP32"),
    "data nested deeper than the rank": (_json_body([_x([1, 1, 64], data=[[[[0.5]] * 64]])]), {}, 400,
                                         "deeper than the tensor's rank 3"),
    "data mixing lists and values": (_json_body([_x([1, 1, 64], data=[[0.5] * 63, 0.5])]), {}, 400,
                                     "mixes lists and values"),
    "body nested 100k levels deep": (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}, 400,
                                     "nested too deeply"),
    "shape with a boolean dim": (_json_body([_x([1, True, 64], data=[0.5] * 64)]), {}, 400,
                                 "non-negative integers"),
    "negative dim": (_json_body([_x([1, -8, 64], data=[])]), {}, 400, "non-negative integers"),
    "batch over the limit": (_json_body([_x([9, 1, 64])]), {}, 400, "batch size 9 exceeds the maximum of 8"),
    "empty batch": (_json_body([_x([0, 1, 64], data=[])]), {}, 400, "at least 1"),
    "no inputs": (_json_body([]), {}, 400, "'inputs' must be a non-empty list"),
    "unknown output": (_json_body([_x([1, 1, 64])], outputs=[{"name": "logits"}]), {}, 400,
                       "unexpected output 'logits'"),
    "not JSON": (b"hello, server", {}, 400, "not valid JSON"),
    "JSON but not an object": (b"[1, 2, 3]", {}, 400, "must be a JSON object"),
    "truncated JSON": (_json_body([_x([1, 8, 64])])[:700], {}, 400, "not valid JSON"),
    "truncated binary tensor": (*_binary_body([1, 8, 64], 2048, b"\0" * 1000), 400, "truncated"),
    "binary size disagrees with shape": (*_binary_body([1, 8, 64], 1000, b"\0" * 1000), 400,
                                         "does not match shape"),
    "trailing binary bytes": (*_binary_body([1, 8, 64], 2048, b"\0" * 2100), 400, "52 bytes of binary data"),
    "header length beyond body": (b'{"inputs": []}', {"Inference-Header-Content-Length": "999"}, 400,
                                  "but the body has"),
    "binary without header length": (_binary_body([1, 8, 64], 2048, b"\xff" * 2048)[0], {}, 400,
                                      "not UTF-8 JSON"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_request_is_answered_4xx_and_server_keeps_serving(shared_server, case):
    body, headers, status, message = CASES[case]
    got_status, got_body = _post(shared_server, INFER, body, headers)
    assert got_status == status, got_body
    assert message in json.loads(got_body)["error"]
    _assert_still_serving(shared_server)


def test_nested_data_up_to_the_rank_is_the_flat_tensor(shared_server):
    x = np.random.default_rng(1).standard_normal((2, 3, 64)).astype(np.float32)
    answers = []
    for data in (x.ravel().tolist(), x.tolist(), [row.ravel().tolist() for row in x]):
        status, body = _post(shared_server, INFER, _json_body([_x([2, 3, 64], data=data)]))
        assert status == 200, body
        answers.append(json.loads(body)["outputs"][0]["data"])
    assert answers[0] == answers[1] == answers[2]


def _request(server, method: str, path: str):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, r.getheader("content-type"), r.read()
    finally:
        conn.close()


@pytest.mark.parametrize("method, path, status, message", [
    ("GET", "/v2/nope", 404, "Not Found: GET /v2/nope"),
    ("GET", "/", 404, "Not Found"),
    ("POST", "/v2/models/pre_ln_encoder/infer/extra", 404, "Not Found"),
    ("GET", INFER, 405, "allowed: POST"),
    ("DELETE", "/v2/health/live", 405, "Method Not Allowed"),
    ("PUT", "/v2/models/pre_ln_encoder", 405, "Method Not Allowed"),
])
def test_unknown_routes_and_wrong_methods_answer_json(shared_server, method, path, status, message):
    got, ctype, body = _request(shared_server, method, path)
    assert got == status
    assert ctype == "application/json"
    assert message in json.loads(body)["error"]
    _assert_still_serving(shared_server)


def test_missing_input_and_unknown_model(shared_server):
    status, body = _post(shared_server, "/v2/models/masked_encoder/infer", _json_body([_x([1, 2, 64])]))
    assert status == 400 and "missing inputs ['mask']" in json.loads(body)["error"]
    status, body = _post(shared_server, "/v2/models/nope/infer", _json_body([_x([1, 2, 64])]))
    assert status == 404 and "unknown model" in json.loads(body)["error"]
    status, body = _post(shared_server, "/v2/models/pre_ln_encoder/versions/7/infer", _json_body([_x([1, 2, 64])]))
    assert status == 404
    _assert_still_serving(shared_server)


def test_tritonclient_sees_the_message(shared_server):
    c = shared_server.client()
    x = np.zeros((1, 4, 32), np.float32)
    i = th.InferInput("x", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match="axis 2 must be 64") as e:
        c.infer("pre_ln_encoder", [i])
    assert e.value.status() == "400"
    _assert_still_serving(shared_server)


def _raw_exchange(port: int, head: bytes, body_parts=(), shutdown_write=False) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.sendall(head)
        for part in body_parts:
            s.sendall(part)
        if shutdown_write:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                break
        return b"".join(chunks)
    finally:
        s.close()


def _complete(resp: bytes) -> bool:
    head, _, body = resp.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def test_huge_body_refused_from_content_length_before_reading(shared_server):
    head = (f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {10 ** 10}\r\n\r\n").encode()
    resp = _raw_exchange(shared_server.port, head)  # the 10 GB never follow: refused on the header alone
    assert resp.startswith(b"HTTP/1.1 413"), resp[:200]
    assert b"exceeds the limit" in resp
    _assert_still_serving(shared_server)


def test_huge_chunked_body_refused_while_streaming(shared_server):
    head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    chunk = b"A" * 65536
    parts = [b"%x\r\n" % len(chunk) + chunk + b"\r\n"] * (shared_server.max_body // len(chunk) + 1)  # just over the limit
    resp = _raw_exchange(shared_server.port, head, parts)
    assert resp.startswith(b"HTTP/1.1 413"), resp[:200]
    _assert_still_serving(shared_server)


def test_connection_closed_mid_body(shared_server):
    head = (f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: 5000\r\n\r\n").encode()
    resp = _raw_exchange(shared_server.port, head, [b'{"inputs": [{"name": "x", '], shutdown_write=True)
    # The client is gone; whatever uvicorn answers (a 4xx or nothing), it is never a success.
    assert not resp.startswith(b"HTTP/1.1 2")
    _assert_still_serving(shared_server)


def test_a_header_seen_before_still_has_its_binary_data_checked(shared_server):
    """The parser reuses what an all-binary request's header parsed to when the same header comes
    again: the binary data must still be read afresh and its size checked against that header."""
    rng = np.random.default_rng(3)
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 8, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 2048}}],
                         "parameters": {"binary_data_output": True}}).encode()
    hdr = {"Inference-Header-Content-Length": str(len(header))}
    for _ in range(3):  # the same header, new data each time: each answer is that data's answer
        x = rng.standard_normal((1, 8, 64)).astype(np.float32)
        status, body = _post(shared_server, INFER, header + x.tobytes(), hdr)
        assert status == 200, body[:200]
        n = int(json.loads(body[:body.index(b"}]}") + 3])["outputs"][0]["parameters"]["binary_data_size"])
        y = np.frombuffer(body[-n:], np.float32).reshape(1, 8, 64)
        status, ref = _post(shared_server, INFER, _json_body([_x([1, 8, 64], data=x.ravel().tolist())]))
        assert status == 200
        assert np.allclose(y, np.array(json.loads(ref)["outputs"][0]["data"], np.float32).reshape(1, 8, 64),
                           atol=1e-5)
    for actual, message in ((b"\0" * 1000, "truncated"), (b"\0" * 2100, "52 bytes of binary data")):
        status, body = _post(shared_server, INFER, header + actual, hdr)
        assert status == 400 and message in json.loads(body)["error"]
    _assert_still_serving(shared_server)
