"""`ln-deploy serve` answers the official tritonclient for every bundled model, matching PyTorch."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import tritonclient.http as th


def _inputs_for(loaded, batch: int, seq: int, seed: int):
    """Inputs shaped like the model's example, with another batch and (where dynamic) sequence length."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for name, ex in zip(loaded.input_names, loaded.example_inputs):
        shape = list(ex.shape)
        shape[0] = batch
        if ex.dim() >= 3 and ex.dim() != 4:  # [batch, seq, feat]: vary seq (convnext keeps its image)
            shape[1] = seq
        if name == "mask":  # [batch, seq]: 1 = token, 0 = padding, first token always real
            shape[1] = seq
            t = (torch.rand(shape, generator=g) > 0.3).float()
            t[:, 0] = 1
        else:
            t = torch.randn(shape, generator=g)
        out.append(t)
    return out


def _torch_reference(loaded, inputs):
    with torch.no_grad():
        y = loaded.module(*inputs)
    return y[0] if isinstance(y, (tuple, list)) else y


def _infer(client, model, names, tensors, binary=True, output="output"):
    inputs = []
    for name, t in zip(names, tensors):
        a = t.numpy()
        i = th.InferInput(name, list(a.shape), "FP32")
        i.set_data_from_numpy(a, binary_data=binary)
        inputs.append(i)
    r = client.infer(model, inputs, outputs=[th.InferRequestedOutput(output, binary_data=binary)])
    return r.as_numpy(output)


def test_health_and_metadata(shared_server, exported_bundled):
    c = shared_server.client()
    assert c.is_server_live() and c.is_server_ready()
    meta = c.get_server_metadata()
    assert "binary_tensor_data" in meta["extensions"]
    index = {m["name"] for m in c.get_model_repository_index()}
    assert index == set(exported_bundled)
    for name, (_, result) in exported_bundled.items():
        assert c.is_model_ready(name)
        md = c.get_model_metadata(name)
        assert [i["name"] for i in md["inputs"]] == result.input_names
        assert all(i["datatype"] == "FP32" and i["shape"][0] == -1 for i in md["inputs"])
        cfg = c.get_model_config(name)
        assert int(cfg["max_batch_size"]) == 8
    assert not c.is_model_ready("no_such_model")


@pytest.mark.parametrize("batch, seq", [(1, 8), (3, 5)])
def test_every_bundled_model_matches_pytorch(shared_server, exported_bundled, batch, seq):
    c = shared_server.client()
    for i, (name, (loaded, result)) in enumerate(sorted(exported_bundled.items())):
        tensors = _inputs_for(loaded, batch, seq, seed=i)
        expected = _torch_reference(loaded, tensors).numpy()
        got = _infer(c, name, result.input_names, tensors, binary=True)
        assert got.shape == expected.shape, name
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4, err_msg=name)


def test_json_tensors_without_binary_extension(shared_server, exported_bundled):
    loaded, result = exported_bundled["masked_encoder"]
    tensors = _inputs_for(loaded, 2, 6, seed=7)
    got = _infer(shared_server.client(), "masked_encoder", result.input_names, tensors, binary=False)
    np.testing.assert_allclose(got, _torch_reference(loaded, tensors).numpy(), atol=1e-4, rtol=1e-4)


def test_concurrent_clients_get_their_own_answers(shared_server, exported_bundled):
    """8 clients x 2 s of batch-1 requests: nothing lost, no error, every answer is its own request's."""
    import time

    loaded, result = exported_bundled["pre_ln_encoder"]
    payloads = [_inputs_for(loaded, 1, 8, seed=100 + k) for k in range(8)]
    references = [_torch_reference(loaded, p).numpy() for p in payloads]
    tally = {"sent": 0, "ok": 0, "bad": []}
    lock = threading.Lock()

    def client(k):
        c = shared_server.client()
        end = time.time() + 2.0
        n = 0
        while time.time() < end and n < 500:
            j = (k + n) % len(payloads)
            n += 1
            with lock:
                tally["sent"] += 1
            try:
                got = _infer(c, "pre_ln_encoder", result.input_names, payloads[j])
                good = np.allclose(got, references[j], atol=1e-4, rtol=1e-4)
            except Exception as e:  # noqa: BLE001 - every failure is recorded
                good = False
                with lock:
                    tally["bad"].append(repr(e))
            with lock:
                tally["ok"] += good

    before = shared_server.client().get_inference_statistics("pre_ln_encoder")["model_stats"][0]
    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    after = shared_server.client().get_inference_statistics("pre_ln_encoder")["model_stats"][0]
    assert tally["bad"] == [] and tally["sent"] > 0
    assert tally["ok"] == tally["sent"]
    served = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    assert served == tally["sent"]  # the server counted exactly the requests the clients sent
