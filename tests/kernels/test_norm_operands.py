"""kernels.norm / host_norm refuse outputs they would write out of bounds or while reading them:
wrong shape, dtype, device or layout of out/sum_out, and any overlap of an output with an operand.
The checks are shared by both entry points (kernels._check_operands); exercised here on the CPU
through host_norm, whose refusals come before any computation."""

import pytest
import torch

from ln_deploy import BadInputError, kernels


@pytest.fixture()
def t():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, generator=g).half()
    return {"x": x, "r": torch.randn(4, 64, generator=g).half(), "w": torch.randn(64, generator=g).half(),
            "b": torch.randn(64, generator=g).half()}


def _refused(match, **kw):
    with pytest.raises(BadInputError, match=match) as e:
        kernels.host_norm(**kw)
    assert isinstance(e.value, kernels.LnDeployError) and e.value.exit_code == 2  # an exception, not an exit
    return str(e.value)


def test_valid_out_and_sum_out_are_written(host_lib, t):
    out, s = torch.empty_like(t["x"]), torch.empty_like(t["x"])
    y, ss = kernels.host_norm(t["x"], t["w"], t["b"], residual=t["r"], return_sum=True, out=out, sum_out=s)
    assert y is out and ss is s
    assert torch.equal(s, t["x"] + t["r"])
    ref = torch.nn.functional.layer_norm((t["x"] + t["r"]).float(), (64,), t["w"].float(), t["b"].float())
    assert (y.float() - ref).abs().max() < 1e-2


@pytest.mark.parametrize("name", ["out", "sum_out"])
def test_wrong_output_shape_dtype_layout(host_lib, t, name):
    base = dict(x=t["x"], scale=t["w"], residual=t["r"], return_sum=True)
    for bad, match in [(torch.empty(4, 63, dtype=torch.half), "shape"), (torch.empty(64, 4, dtype=torch.half), "shape"),
                       (torch.empty(4, 64, dtype=torch.float32), "dtype"),
                       (torch.empty(64, 4, dtype=torch.half).t(), "contiguous")]:
        msg = _refused(match, **base, **{name: bad})
        assert msg.startswith(name), msg


def test_wrong_output_device(host_lib, t):
    meta = torch.empty(4, 64, dtype=torch.half, device="meta")
    assert _refused("device", x=t["x"], scale=t["w"], out=meta).startswith("out is on meta")


@pytest.mark.parametrize("out_of,victim", [("out", "x"), ("out", "residual"), ("sum_out", "x"), ("sum_out", "residual"),
                                           ("sum_out", "out")])
def test_aliasing_is_refused(host_lib, t, out_of, victim):
    operands = {"x": t["x"], "residual": t["r"], "out": torch.empty_like(t["x"])}
    kw = dict(x=operands["x"], scale=t["w"], residual=operands["residual"], return_sum=True, out=operands["out"])
    kw[out_of] = operands[victim]
    msg = _refused("overlaps", **kw)
    assert f"{out_of} overlaps {victim}" in msg or f"{victim} overlaps {out_of}" in msg, msg


def test_partial_overlap_and_scale_aliasing_are_refused(host_lib, t):
    big = torch.empty(5, 64, dtype=torch.half)
    x = big[:4]  # rows 0..3
    out = big[1:]  # rows 1..4: shares three rows with x
    x.copy_(t["x"])
    assert "out overlaps x" in _refused("overlaps", x=x, scale=t["w"], out=out)
    flat = torch.empty(4 * 64, dtype=torch.half)
    out2 = flat.view(4, 64)
    assert "out overlaps scale" in _refused("overlaps", x=t["x"], scale=flat[:64], out=out2)


def test_other_operand_refusals(host_lib, t):
    _refused("return_sum is False", x=t["x"], scale=t["w"], residual=t["r"], sum_out=torch.empty_like(t["x"]))
    _refused("needs a residual", x=t["x"], scale=t["w"], return_sum=True)
    _refused("scale must be", x=t["x"], scale=t["w"].bfloat16())
    _refused("whole number of rows", x=t["x"], scale=torch.ones(60, dtype=torch.half))
