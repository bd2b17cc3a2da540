"""The kernel benchmark is runnable as one command; without a GPU only its dry run can be checked."""

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_norm_kernels.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_norm_kernels", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_configurations_cover_the_targets(capsys):
    bench = _load()
    assert bench.main(["--dry-run"]) == 0
    cfgs = bench.configs()
    # the >= 70% target: hidden 768/1024 at 4096 rows; the >= 90% target: 2048..16384 at >= 16M elements
    for h in (768, 1024):
        assert any(c.hidden == h and c.rows == 4096 for c in cfgs)
    for h in (2048, 4096, 8192, 16384):
        assert any(c.hidden == h and c.rows * h >= 16 << 20 for c in cfgs)
    assert {c.op for c in cfgs} == {"layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"}
    assert {(c.rows) for c in bench.few_row_configs()} == {8, 64}
    out = capsys.readouterr().out
    assert f"{len(cfgs)} bandwidth + {len(bench.few_row_configs())} invariance configurations" in out
