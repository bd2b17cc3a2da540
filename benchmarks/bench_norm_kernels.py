"""Bandwidth of ln_deploy's normalization kernels against a device-to-device copy and PyTorch.

One command (needs a CUDA GPU and libln_kernels.so from scripts/build_plugins.sh):

    python benchmarks/bench_norm_kernels.py                # full sweep, writes out/bench/norm_kernels-<time>.json
    python benchmarks/bench_norm_kernels.py --dry-run      # list the configurations; no GPU needed

Reports, per (op, dtype, hidden, rows): time (median of --iters timed runs, CUDA events), achieved
GB/s (bytes the op must move: read inputs once, write outputs once), % of the measured copy
bandwidth, and the speed-up over PyTorch eager (F.layer_norm / F.rms_norm; x + r then the norm).
A second table gives the cost of batch invariance: the default kernels vs the opt-in split-row
mode (batch_invariant=False) at 8 and 64 rows.

Targets on H200 (docs/kernels.md): >= 90% of copy bandwidth at hidden 2048..16384 with >= 16M
elements; >= 70% at hidden 768/1024 with 4096 rows; add+LayerNorm >= 2x PyTorch eager.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HIDDEN = (768, 1024, 2048, 4096, 8192, 16384)
DTYPES = ("float16", "bfloat16", "float32")
OPS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm")
FEW_ROWS = (8, 64)
FEW_ROWS_HIDDEN = (4096, 8192, 16384, 65536)


@dataclass(frozen=True)
class Config:
    op: str
    dtype: str
    hidden: int
    rows: int


def configs(hidden=HIDDEN, dtypes=DTYPES, ops=OPS) -> list[Config]:
    """4096 rows (the 768/1024 target) and >= 16M elements (the large-tensor target)."""
    out = []
    for op in ops:
        for dtype in dtypes:
            for h in hidden:
                for rows in sorted({4096, max(4096, (16 << 20) // h)}):
                    out.append(Config(op, dtype, h, rows))
    return out


def few_row_configs(dtypes=DTYPES) -> list[Config]:
    return [Config(op, d, h, r) for op in ("layer_norm", "add_layer_norm") for d in dtypes
            for h in FEW_ROWS_HIDDEN for r in FEW_ROWS]


def _time(fn, iters: int, warmup: int) -> float:
    """Median seconds per call, CUDA events around each call."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def setup(cfg: Config, batch_invariant: bool = True):
    """(bytes moved, {provider: callable}) for one configuration."""
    import torch
    import torch.nn.functional as F

    from ln_deploy import kernels

    dt = getattr(torch, cfg.dtype)
    x = torch.randn(cfg.rows, cfg.hidden, device="cuda", dtype=dt)
    w = torch.randn(cfg.hidden, device="cuda", dtype=dt)
    b = torch.randn(cfg.hidden, device="cuda", dtype=dt)
    y = torch.empty_like(x)
    skip = cfg.op.startswith("add_")
    kind = cfg.op.removeprefix("add_")
    r = torch.randn_like(x) if skip else None
    s = torch.empty_like(x) if skip else None
    bias = b if kind == "layer_norm" else None
    elem = x.element_size()
    tensors = (3 if skip else 1) + 1  # x (+ r, sum) read/written once, y written once
    nbytes = tensors * x.numel() * elem + (2 if bias is not None else 1) * cfg.hidden * elem

    def ours():
        kernels.norm(x, w, bias, residual=r, kind=kind, return_sum=skip, out=y, sum_out=s,
                     batch_invariant=batch_invariant)

    def torch_norm(inp):
        if kind == "layer_norm":
            return F.layer_norm(inp, (cfg.hidden,), w, b)
        return F.rms_norm(inp, (cfg.hidden,), w)

    def torch_eager():
        if skip:
            sum_ = x + r
            return torch_norm(sum_), sum_
        return torch_norm(x)

    # a copy of nbytes/2 reads and writes nbytes in total: the same traffic as the op
    copy_src = torch.empty(nbytes // (2 * elem), device="cuda", dtype=dt)
    copy_dst = torch.empty_like(copy_src)
    providers = {"ln_deploy": ours, "torch": torch_eager, "copy": lambda: copy_dst.copy_(copy_src)}
    return nbytes, providers


def run(cfgs: list[Config], iters: int, warmup: int, batch_invariant: bool = True) -> list[dict]:
    import torch

    rows = []
    for cfg in cfgs:
        nbytes, providers = setup(cfg, batch_invariant)
        t = {name: _time(fn, iters, warmup) for name, fn in providers.items()}
        gbps = {name: nbytes / sec / 1e9 for name, sec in t.items()}
        rows.append({**asdict(cfg), "bytes": nbytes, "batch_invariant": batch_invariant,
                     **{f"{k}_us": v * 1e6 for k, v in t.items()}, **{f"{k}_GBps": v for k, v in gbps.items()},
                     "pct_of_copy": 100 * gbps["ln_deploy"] / gbps["copy"],
                     "speedup_vs_torch": t["torch"] / t["ln_deploy"]})
        print(f"{cfg.op:15s} {cfg.dtype:9s} h={cfg.hidden:6d} rows={cfg.rows:8d}  "
              f"{gbps['ln_deploy']:7.0f} GB/s  {rows[-1]['pct_of_copy']:5.1f}% of copy  "
              f"x{rows[-1]['speedup_vs_torch']:.2f} vs torch", flush=True)
        torch.cuda.empty_cache()
    return rows


def invariance_cost(iters: int, warmup: int, dtypes=DTYPES) -> list[dict]:
    """Default (batch-invariant) kernels vs the opt-in split-row mode at few rows."""
    out = []
    for cfg in few_row_configs(dtypes):
        nbytes, default = setup(cfg, True)
        _, opt_in = setup(cfg, False)
        t_def = _time(default["ln_deploy"], iters, warmup)
        t_opt = _time(opt_in["ln_deploy"], iters, warmup)
        out.append({**asdict(cfg), "default_us": t_def * 1e6, "split_opt_in_us": t_opt * 1e6,
                    "invariance_cost_pct": 100 * (t_def / t_opt - 1)})
        print(f"{cfg.op:15s} {cfg.dtype:9s} h={cfg.hidden:6d} rows={cfg.rows:3d}  default {t_def*1e6:7.1f} us  "
              f"opt-in split {t_opt*1e6:7.1f} us  ({out[-1]['invariance_cost_pct']:+.0f}%)", flush=True)
    return out


def environment() -> dict:
    import torch

    from ln_deploy import kernels

    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "sm_count": props.multi_processor_count, "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(),
            "library": str(kernels.library_path()), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, nargs="+", default=list(HIDDEN))
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    ap.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--skip-invariance", action="store_true", help="skip the default vs opt-in few-rows table")
    ap.add_argument("--out", type=Path, default=None, help="results file (default out/bench/norm_kernels-<time>.json)")
    ap.add_argument("--dry-run", action="store_true", help="print the configurations and exit (no GPU needed)")
    args = ap.parse_args(argv)

    cfgs = configs(args.hidden, args.dtypes, args.ops)
    few = [] if args.skip_invariance else few_row_configs(args.dtypes)
    if args.dry_run:
        for c in cfgs:
            print(f"bandwidth  {c.op:15s} {c.dtype:9s} hidden={c.hidden:6d} rows={c.rows}")
        for c in few:
            print(f"invariance {c.op:15s} {c.dtype:9s} hidden={c.hidden:6d} rows={c.rows}")
        print(f"{len(cfgs)} bandwidth + {len(few)} invariance configurations")
        return 0

    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA GPU (torch.cuda.is_available() is False); use --dry-run to list configs",
              file=sys.stderr)
        return 2
    env = environment()
    print(json.dumps(env))
    results = {"environment": env, "bandwidth": run(cfgs, args.iters, args.warmup),
               "invariance_cost": invariance_cost(args.iters, args.warmup, args.dtypes) if few else []}
    out = args.out or Path("out/bench") / f"norm_kernels-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
