"""The numerics core (plugins/common/normCore.h), compiled for the CPU in libln_norm_host.so and
walking the device's exact chunk order and reduction tree, against a float64 reference."""

import math

import numpy as np
import pytest
import torch

from ln_deploy import kernels

# dtype -> (atol, rtol) on the output, about one or two output ulps at |y| ~ 4
TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (4e-3, 2e-3), torch.bfloat16: (3e-2, 1.6e-2)}
TYPE_PAIRS = [(torch.float32, torch.float32), (torch.float16, torch.float16), (torch.float16, torch.float32),
              (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32)]
# Chosen to hit every strategy: sub-warp groups (1, 3, 8, 33), one warp (768, 1000), odd sizes
# without the vector path (2041), a block per row (4096), register limit of 16-bit types (32768),
# the streaming kernel (fp32 32768, 40000), primes (127, 8191).
HIDDEN = [1, 3, 8, 33, 127, 768, 1000, 2041, 4096, 8191, 32768, 40000]


def reference(x, scale, bias, residual, kind, eps):
    """float64 reference of what the kernels compute: s = x + residual rounded to x's dtype
    (PyTorch's eager `x + r`), then normalization in float64."""
    s = (x.float() + residual.float()).to(x.dtype) if residual is not None else x
    d = s.double()
    if kind == "layer_norm":
        d = d - d.mean(-1, keepdim=True)
    rstd = 1.0 / torch.sqrt((d * d).mean(-1, keepdim=True) + eps)
    y = d * rstd * scale.double()
    if bias is not None:
        y = y + bias.double()
    return y, s


def rows_for(hidden):
    return 5 if hidden <= 8192 else 2  # a few rows: the host emulation walks every thread


@pytest.mark.parametrize("dtype,sdtype", TYPE_PAIRS, ids=lambda t: str(t).replace("torch.", ""))
@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("mode", ["plain", "residual_sum"])
def test_against_float64(host_lib, dtype, sdtype, kind, mode):
    g = torch.Generator().manual_seed(hash((str(dtype), str(sdtype), kind, mode)) % 2**31)
    atol, rtol = TOL[dtype]
    for hidden in HIDDEN:
        rows = rows_for(hidden)
        x = (torch.randn(rows, hidden, generator=g) * 3 + 0.5).to(dtype)
        scale = torch.randn(hidden, generator=g).to(sdtype)
        bias = torch.randn(hidden, generator=g).to(sdtype) if mode == "plain" else None
        residual = torch.randn(rows, hidden, generator=g).to(dtype) if mode == "residual_sum" else None
        out = kernels.host_norm(x, scale, bias, residual=residual, kind=kind, eps=1e-5,
                                return_sum=residual is not None)
        y, s = out if residual is not None else (out, None)
        ref, ref_s = reference(x, scale, bias, residual, kind, 1e-5)
        err = (y.double() - ref).abs()
        bound = atol + rtol * ref.abs()
        assert bool((err <= bound).all()), (
            f"hidden={hidden}: max err {err.max().item():.3g} (bound {bound.min().item():.3g})")
        if s is not None:  # the sum output is exactly PyTorch's x + residual
            assert torch.equal(s, ref_s)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("eps", [0.0 + 1e-12, 1e-5, 1e3])
def test_constant_row_gives_the_bias(host_lib, dtype, eps):
    # mean is accumulated as sum(x - x[0]): exact for a constant row, so y == bias bit for bit
    for hidden, value in [(1, 7.0), (768, 0.1), (4096, -3.3), (40000, 1000.0)]:
        x = torch.full((2, hidden), value).to(dtype)
        scale = torch.randn(hidden).to(dtype)
        bias = torch.randn(hidden).to(dtype)
        y = kernels.host_norm(x, scale, bias, eps=eps)
        assert torch.equal(y, bias.expand(2, hidden)), f"hidden={hidden} value={value}"


@pytest.mark.parametrize("eps", [1e-12, 1e-6, 1e-1, 1e3])
def test_tiny_and_huge_epsilon(host_lib, eps):
    x = torch.randn(4, 1000, dtype=torch.float64).float() * 1e-3  # variance 1e-6: eps dominates at 1e-1+
    scale = torch.rand(1000) + 0.5
    for kind in ("layer_norm", "rms_norm"):
        y = kernels.host_norm(x, scale, kind=kind, eps=eps)
        ref, _ = reference(x, scale, None, None, kind, eps)
        assert torch.allclose(y.double(), ref, atol=1e-6, rtol=1e-5), (kind, eps)


def test_large_magnitudes_in_fp16(host_lib):
    # |x| ~ 1e4 in fp16 (max 65504): x*x overflows fp16, so statistics must stay in fp32
    x = (torch.randn(3, 4096) * 300 + 1e4).to(torch.float16)
    scale = torch.ones(4096, dtype=torch.float16)
    for kind in ("layer_norm", "rms_norm"):
        y = kernels.host_norm(x, scale, kind=kind)
        ref, _ = reference(x, scale, None, None, kind, 1e-5)
        assert torch.isfinite(y).all()
        assert torch.allclose(y.double(), ref, atol=4e-3, rtol=2e-3), kind


def test_variance_is_not_e_x2_minus_mean2(host_lib):
    # a large offset with a small spread: E[x^2] - E[x]^2 in fp32 cancels catastrophically
    # (1e8 - 1e8 for a variance of 1e-4); the two-pass variance keeps full accuracy
    x = (1e4 + 1e-2 * torch.randn(4, 4096, dtype=torch.float64)).float()
    scale = torch.ones(4096)
    y = kernels.host_norm(x, scale)
    ref, _ = reference(x, scale, None, None, "layer_norm", 1e-5)
    assert (y.double() - ref).abs().max().item() < 1e-3
    # ...while the rejected formula, in fp32, loses the variance entirely (relative error > 50%)
    naive_var = ((x * x).mean(-1) - x.mean(-1) ** 2).double()
    true_var = x.double().var(-1, unbiased=False)
    assert (((naive_var - true_var).abs() / true_var) > 0.5).any()


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nan_and_inf_propagate_like_pytorch(host_lib, kind, dtype):
    hidden = 768
    x = torch.randn(4, hidden).to(dtype)
    x[0, 5] = float("nan")
    x[1, 0] = float("inf")   # the shift element itself
    x[2, 100] = float("-inf")
    scale = torch.randn(hidden).to(dtype)
    y = kernels.host_norm(x, scale, kind=kind)
    xf = x.float()
    if kind == "layer_norm":
        ref = torch.nn.functional.layer_norm(xf, (hidden,), scale.float(), eps=1e-5)
    else:
        ref = torch.nn.functional.rms_norm(xf, (hidden,), scale.float(), eps=1e-5)
    assert torch.equal(torch.isnan(y), torch.isnan(ref.to(dtype)))
    assert torch.isfinite(y[3]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_split_row_mode_against_float64(host_lib, dtype):
    # the opt-in split kernel merges per-CTA (sum, M2) with the exact parallel-variance identity
    atol, rtol = TOL[dtype]
    for hidden, rows in [(16384, 1), (16384, 8), (65536, 2), (12345, 3)]:
        x = (torch.randn(rows, hidden) * 2 + 5).to(dtype)
        scale = torch.randn(hidden).to(dtype)
        bias = torch.randn(hidden).to(dtype)
        s = kernels.select_strategy(hidden, dtype, rows, batch_invariant=False, host=True)
        assert s["kernel"] == "split_row", s
        for kind in ("layer_norm", "rms_norm"):
            y = kernels.host_norm(x, scale, bias, kind=kind, batch_invariant=False)
            ref, _ = reference(x, scale, bias, None, kind, 1e-5)
            err = (y.double() - ref).abs()
            assert bool((err <= atol + rtol * ref.abs()).all()), (hidden, rows, kind, err.max().item())


def test_host_rows_are_batch_invariant(host_lib):
    # the same row alone and at the end of a batch gives the same bits (default mode)
    for dtype in (torch.float32, torch.bfloat16):
        for hidden in (33, 1000, 4096, 40000):
            batch = torch.randn(3, hidden).to(dtype)
            scale = torch.randn(hidden).to(dtype)
            together = kernels.host_norm(batch, scale)
            alone = kernels.host_norm(batch[2:].clone(), scale)
            assert torch.equal(together[2], alone[0])
