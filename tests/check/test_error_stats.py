"""Error statistics against an fp64 reference: NaN on one side only fails, and is said in words."""

import numpy as np

from ln_deploy.check.tolerances import StatCheck, describe_error, error_stats, stat_passes


def test_nan_on_one_side_fails_and_is_named_not_reported_as_max_abs_zero():
    ref = np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4)
    out = ref.copy()
    out[1, 2] = np.nan  # a runtime's NaN where PyTorch has a number
    stats = error_stats(out, ref, atol=1e-3, rtol=1e-3)
    assert stats["nan_mismatch"] == 1 and stats["max_abs"] == 0.0
    assert not stat_passes(stats, StatCheck("elemwise", 1e-3, 1e-3))
    words = describe_error(stats)
    assert "NaN at 1 of 12 positions" in words, words


def test_numbers_only_are_described_by_their_max_abs():
    ref = np.zeros((2, 3), np.float64)
    stats = error_stats(ref + 0.25, ref)
    assert describe_error(stats) == "max abs 0.25"
