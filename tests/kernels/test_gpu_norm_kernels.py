"""The CUDA kernels on a GPU against float64 PyTorch and bitwise against the host emulation.
Marked `gpu`; skipped with the reason on machines without a CUDA GPU or without nvcc.
Outputs are poisoned with NaN before every launch so an element left unwritten fails."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu

TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (4e-3, 2e-3), torch.bfloat16: (3e-2, 1.6e-2)}
TYPE_PAIRS = [(torch.float32, torch.float32), (torch.float16, torch.float16), (torch.float16, torch.float32),
              (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32)]
# every strategy boundary, odd sizes (no vector path), model widths, and the streaming range
HIDDEN = [1, 2, 3, 7, 8, 9, 31, 32, 33, 63, 64, 100, 127, 128, 129, 255, 256, 257, 511, 512, 513, 768, 1000,
          1023, 1024, 1025, 2040, 2041, 3072, 4095, 4096, 4097, 5120, 8192, 12288, 16383, 16384, 16385,
          32767, 32768, 32769, 65535, 65536]
HIDDEN += random.Random(5).sample(range(1, 65537), 12)  # plus random sizes, fixed seed


def rows_for(hidden: int) -> int:
    # ~4M elements per case at most, at least 1 row; odd counts leave partial blocks/warps
    return max(1, min(4099, (4 << 20) // hidden)) | 1


def reference(x, scale, bias, residual, kind, eps):
    s = (x + residual) if residual is not None else x  # PyTorch eager add in x's dtype
    d = s.double()
    if kind == "layer_norm":
        d = d - d.mean(-1, keepdim=True)
    y = d * torch.rsqrt((d * d).mean(-1, keepdim=True) + eps) * scale.double()
    return (y + bias.double() if bias is not None else y), s


def run(k, x, scale, bias, residual, kind, eps=1e-5, with_sum=False, batch_invariant=True):
    y = torch.full_like(x, float("nan"))
    s = torch.full_like(x, float("nan")) if with_sum else None
    k.norm(x, scale, bias, residual=residual, kind=kind, eps=eps, return_sum=with_sum, out=y, sum_out=s,
           batch_invariant=batch_invariant)
    torch.cuda.synchronize()
    return y, s


def assert_close(y, ref, dtype, what):
    atol, rtol = TOL[dtype]
    assert not torch.isnan(y).any(), f"{what}: NaN left in the output (unwritten elements?)"
    err = (y.double() - ref).abs()
    bad = err > atol + rtol * ref.abs()
    assert not bad.any(), f"{what}: {int(bad.sum())} elements off, max err {err.max().item():.3g}"


@pytest.mark.parametrize("dtype,sdtype", TYPE_PAIRS, ids=lambda t: str(t).replace("torch.", ""))
@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("mode", ["plain_bias", "plain", "residual_sum", "residual_bias"])
def test_against_float64(cuda_kernels, dtype, sdtype, kind, mode):
    g = torch.Generator(device="cuda").manual_seed(1234)
    for hidden in HIDDEN:
        rows = rows_for(hidden)
        x = (torch.randn(rows, hidden, device="cuda", generator=g) * 2 + 1).to(dtype)
        scale = torch.randn(hidden, device="cuda", generator=g).to(sdtype)
        bias = torch.randn(hidden, device="cuda", generator=g).to(sdtype) if mode.endswith("bias") else None
        residual = torch.randn(rows, hidden, device="cuda", generator=g).to(dtype) if "residual" in mode else None
        with_sum = mode == "residual_sum"
        y, s = run(cuda_kernels, x, scale, bias, residual, kind, with_sum=with_sum)
        ref, ref_s = reference(x, scale, bias, residual, kind, 1e-5)
        assert_close(y, ref, dtype, f"hidden={hidden} rows={rows}")
        if with_sum:
            assert torch.equal(s, ref_s), f"hidden={hidden}: sum output differs from x + residual"


@pytest.mark.parametrize("dtype,sdtype", TYPE_PAIRS, ids=lambda t: str(t).replace("torch.", ""))
def test_bitwise_equal_to_host_emulation(cuda_kernels, dtype, sdtype):
    # the CPU tests of the host emulation speak for the device only if the bits agree
    g = torch.Generator().manual_seed(7)
    for hidden in [1, 33, 768, 1000, 2041, 4096, 16384, 40000, 65536]:
        rows = 3
        x = (torch.randn(rows, hidden, generator=g) * 3).to(dtype)
        r = torch.randn(rows, hidden, generator=g).to(dtype)
        scale = torch.randn(hidden, generator=g).to(sdtype)
        bias = torch.randn(hidden, generator=g).to(sdtype)
        for kind in ("layer_norm", "rms_norm"):
            for inv in (True, False):
                host_y, host_s = cuda_kernels.host_norm(x, scale, bias, residual=r, kind=kind, return_sum=True,
                                                        batch_invariant=inv,
                                                        sm_count=torch.cuda.get_device_properties(0).multi_processor_count)
                dev_y, dev_s = run(cuda_kernels, x.cuda(), scale.cuda(), bias.cuda(), r.cuda(), kind, with_sum=True,
                                   batch_invariant=inv)
                assert torch.equal(dev_y.cpu(), host_y), f"hidden={hidden} {kind} batch_invariant={inv}"
                assert torch.equal(dev_s.cpu(), host_s)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_misaligned_pointers_take_the_scalar_path_with_the_same_bits(cuda_kernels, dtype):
    # one element past a 16-byte boundary: every pointer misaligned, so the scalar path runs;
    # its arithmetic is the vector path's, so the bits must match the aligned run exactly
    for hidden in [8, 768, 1024, 4096, 16384, 32768]:
        rows = 37
        x = torch.randn(rows, hidden, device="cuda").to(dtype)
        r = torch.randn(rows, hidden, device="cuda").to(dtype)
        scale = torch.randn(hidden, device="cuda").to(dtype)
        bias = torch.randn(hidden, device="cuda").to(dtype)
        shifted = []
        for t in (x, r, scale, bias):
            buf = torch.empty(t.numel() + 1, device="cuda", dtype=dtype)
            view = buf[1:].view(t.shape)
            view.copy_(t)
            assert view.data_ptr() % 16 != 0
            shifted.append(view)
        y_al, s_al = run(cuda_kernels, x, scale, bias, r, "layer_norm", with_sum=True)
        y_buf = torch.full((rows * hidden + 1,), float("nan"), device="cuda", dtype=dtype)
        s_buf = torch.full((rows * hidden + 1,), float("nan"), device="cuda", dtype=dtype)
        cuda_kernels.norm(shifted[0], shifted[2], shifted[3], residual=shifted[1], return_sum=True,
                          out=y_buf[1:].view(rows, hidden), sum_out=s_buf[1:].view(rows, hidden))
        torch.cuda.synchronize()
        assert torch.equal(y_buf[1:].view(rows, hidden), y_al), f"hidden={hidden}"
        assert torch.equal(s_buf[1:].view(rows, hidden), s_al)
        assert torch.isnan(y_buf[0]), "wrote before the output"


@pytest.mark.parametrize("hidden,dtype", [(1, torch.float16), (8, torch.bfloat16), (64, torch.float32),
                                          (768, torch.float16)])
def test_a_million_rows(cuda_kernels, hidden, dtype):
    # grid-stride loops and sub-warp packing over 1M rows (the grid is capped below the row count)
    rows = 1_000_003
    x = torch.randn(rows, hidden, device="cuda").to(dtype)
    scale = torch.randn(hidden, device="cuda").to(dtype)
    bias = torch.randn(hidden, device="cuda").to(dtype)
    for kind in ("layer_norm", "rms_norm"):
        y, _ = run(cuda_kernels, x, scale, bias, None, kind)
        ref, _ = reference(x, scale, bias, None, kind, 1e-5)
        assert_close(y, ref, dtype, f"{rows} rows x {hidden}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_nan_inf_and_constant_rows(cuda_kernels, dtype):
    hidden = 4096
    x = torch.randn(5, hidden, device="cuda").to(dtype)
    x[0, 17] = float("nan")
    x[1, 0] = float("inf")
    x[2, 4000] = float("-inf")
    x[3] = 0.1  # constant row: output is the bias
    scale = torch.randn(hidden, device="cuda").to(dtype)
    bias = torch.randn(hidden, device="cuda").to(dtype)
    for kind, fn in (("layer_norm", torch.nn.functional.layer_norm), ("rms_norm", torch.nn.functional.rms_norm)):
        y, _ = run(cuda_kernels, x, scale, bias, None, kind)
        args = (x.float(), (hidden,), scale.float()) + ((bias.float(),) if kind == "layer_norm" else ())
        ref = fn(*args, eps=1e-5)
        if kind == "rms_norm":
            ref = ref + bias.float()
        assert torch.equal(torch.isnan(y[:3]), torch.isnan(ref[:3].to(dtype))), kind
        if kind == "layer_norm":
            assert torch.equal(y[3], bias)
        assert torch.isfinite(y[4]).all()


def test_split_row_mode_against_float64(cuda_kernels):
    # the opt-in mode (batch_invariant=False) for few long rows
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for hidden, rows in [(16384, 1), (16384, 8), (65536, 4), (12345, 3)]:
            x = (torch.randn(rows, hidden, device="cuda") + 3).to(dtype)
            r = torch.randn(rows, hidden, device="cuda").to(dtype)
            scale = torch.randn(hidden, device="cuda").to(dtype)
            for kind in ("layer_norm", "rms_norm"):
                y, s = run(cuda_kernels, x, scale, None, r, kind, with_sum=True, batch_invariant=False)
                ref, ref_s = reference(x, scale, None, r, kind, 1e-5)
                assert_close(y, ref, dtype, f"split hidden={hidden} rows={rows}")
                assert torch.equal(s, ref_s)


def test_cuda_errors_become_exceptions(cuda_kernels):
    x = torch.randn(4, 8, device="cuda", dtype=torch.float16)
    with pytest.raises(cuda_kernels.BadInputError):
        cuda_kernels.norm(x, torch.randn(7, device="cuda", dtype=torch.float16))
    with pytest.raises(cuda_kernels.BadInputError):
        cuda_kernels.norm(x, torch.randn(8, device="cuda", dtype=torch.float16), kind="batch_norm")
