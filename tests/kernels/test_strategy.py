"""The launch strategy is a pure host function of (hidden, dtype, mode): in the default mode it
never depends on the number of rows, which is what makes a row's bits batch-invariant."""

import pytest

from ln_deploy import kernels

DTYPES = ("float32", "float16", "bfloat16")
# 1..64 every size (sub-warp packing boundaries), then powers of two and their neighbours,
# model widths, and the streaming-kernel range up to 65536 and beyond.
HIDDEN = sorted(set(list(range(1, 65)) + [p + d for p in (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
                                          for d in (-1, 0, 1)]
                    + [768, 1000, 2040, 2041, 3072, 5120, 12288, 14336, 100000, 1 << 20, 1 << 24]))
ROW_COUNTS = (1, 2, 7, 1000, 10**6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_default_strategy_ignores_row_count(host_lib, dtype):
    for hidden in HIDDEN:
        chosen = {tuple(sorted(kernels.select_strategy(hidden, dtype, rows, host=True).items())) for rows in ROW_COUNTS}
        assert len(chosen) == 1, f"hidden={hidden} {dtype}: strategy depends on rows: {chosen}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_strategy_covers_the_row(host_lib, dtype):
    for hidden in HIDDEN:
        s = kernels.select_strategy(hidden, dtype, 1, host=True)
        g = s["threads_per_row"]
        assert g & (g - 1) == 0 and 1 <= g <= 1024
        assert s["vec"] == (4 if dtype == "float32" else 8)  # 16 bytes of the input type
        assert g * s["iters"] * s["vec"] >= hidden, f"hidden={hidden}: {s} leaves elements unowned"
        assert s["block_threads"] % g == 0 and s["rows_per_block"] == s["block_threads"] // g
        if s["kernel"] == "register":
            assert s["iters"] in (1, 2, 4) and g <= 1024  # <= 4 chunks held: the 64-register budget
            # no thread owns only padding in its last chunk slot beyond one wasted power-of-two step
            assert g * s["iters"] * s["vec"] < 4 * hidden + 4 * s["vec"]
        else:
            assert s["kernel"] == "multipass" and g == 1024


def test_kernel_choice_by_size(host_lib):
    # several rows per warp for small rows, a warp per row for medium, a block for long rows
    assert kernels.select_strategy(64, "float16", 1, host=True)["threads_per_row"] == 8
    assert kernels.select_strategy(768, "float16", 1, host=True)["threads_per_row"] == 32
    assert kernels.select_strategy(8192, "float16", 1, host=True)["threads_per_row"] == 256
    assert kernels.select_strategy(32768, "float16", 1, host=True)["kernel"] == "register"
    assert kernels.select_strategy(32768, "float32", 1, host=True)["kernel"] == "multipass"
    assert kernels.select_strategy(65536, "bfloat16", 1, host=True)["kernel"] == "multipass"


def test_opt_in_split_depends_on_rows(host_lib):
    # the opt-in mode splits few long rows over several CTAs; the split count follows the row
    # count, so this mode is not batch-invariant (documented, off by default)
    few = kernels.select_strategy(16384, "float16", 64, batch_invariant=False, host=True)
    one = kernels.select_strategy(16384, "float16", 1, batch_invariant=False, host=True)
    many = kernels.select_strategy(16384, "float16", 1000, batch_invariant=False, host=True)
    assert few["kernel"] == one["kernel"] == "split_row"
    assert one["splits"] > few["splits"] >= 2
    assert many == kernels.select_strategy(16384, "float16", 1000, host=True)
    for rows in (1, 2, 8, 64, 200):
        s = kernels.select_strategy(65536, "float32", rows, batch_invariant=False, host=True)
        assert s["splits"] * rows <= 1024  # fixed workspace bound
    assert kernels.select_strategy(768, "float16", 1, batch_invariant=False, host=True)["kernel"] == "register"


@pytest.mark.parametrize("hidden,dtype,name", [(0, "float16", "LN_ERR_HIDDEN_RANGE"),
                                               ((1 << 24) + 1, "float32", "LN_ERR_HIDDEN_RANGE")])
def test_strategy_rejects(host_lib, hidden, dtype, name):
    with pytest.raises(kernels.KernelError, match=name):
        kernels.select_strategy(hidden, dtype, 1, host=True)


def test_device_library_agrees_with_host(kernels_lib, host_lib):
    # libln_kernels.so and libln_norm_host.so compile the same selectStrategy
    for dtype in DTYPES:
        for hidden in HIDDEN:
            for rows, inv in ((1, True), (8, False), (64, False)):
                assert kernels.select_strategy(hidden, dtype, rows, inv) == \
                    kernels.select_strategy(hidden, dtype, rows, inv, host=True)
