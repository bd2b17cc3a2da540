"""Every LayerNorm spelling fuses to exactly one normalization op, at opsets 17-23, in float32 and
in float16 with the upcast, for both targets; and the fused model matches the original."""

import pytest

from _helpers import DTYPES, NORM_OP, OPSETS, TARGETS, fuse_checked, ops
from graphs import LAYER_NORM_SPELLINGS


def expected_ops(spelling, dtype, target):
    norm = NORM_OP[(target, "ln")]
    if spelling == "channels_first":
        return ["Transpose", norm, "Transpose"]
    if spelling == "intermediate_used":  # the mean is a graph output: its ReduceMean stays
        return (["Cast"] if dtype == "float16" else []) + ["ReduceMean", norm]
    if spelling == "scale_before_division" and dtype == "float16":
        return ["Cast", norm, "Cast"]  # float32 scale inside the norm: the Casts stay around it
    return [norm]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("spelling", sorted(LAYER_NORM_SPELLINGS))
def test_layer_norm_spelling_fuses(spelling, opset, dtype, target):
    fused, report = fuse_checked(LAYER_NORM_SPELLINGS[spelling](opset, dtype), target)
    assert ops(fused) == expected_ops(spelling, dtype, target)
    assert report.fused["LayerNormalization"] == 1 and report.fused["RMSNormalization"] == 0
    assert report.rejected == []
    assert report.verified


@pytest.mark.parametrize("dtype", DTYPES)
def test_upcast_keeps_original_precision_input_with_fp32_stash(dtype):
    fused, _ = fuse_checked(LAYER_NORM_SPELLINGS["pow_div_sqrt"](20, dtype))
    (ln,) = fused.graph.node
    assert ln.input[0] == "x"  # the float16 input itself, no Cast in front
    assert {a.name: a.i for a in ln.attribute if a.name == "stash_type"} == {"stash_type": 1}


def test_two_trailing_axes_use_axis_minus_two():
    fused, _ = fuse_checked(LAYER_NORM_SPELLINGS["two_trailing_axes"](18))
    (ln,) = fused.graph.node
    assert {a.name: a.i for a in ln.attribute}["axis"] == -2


def test_channels_first_transposes_around_last_axis_norm():
    fused, report = fuse_checked(LAYER_NORM_SPELLINGS["channels_first"](20))
    perms = [list(n.attribute[0].ints) for n in fused.graph.node if n.op_type == "Transpose"]
    assert perms == [[0, 2, 3, 1], [0, 3, 1, 2]]
    assert report.channels_first == 1
