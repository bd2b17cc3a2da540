"""Report the normalizations whose inputs would overflow fp16, and what the conversion does about each."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx", help="the fp32 ONNX model")
    from ..cli_args import add_inputs, add_precision, add_report

    src = p.add_mutually_exclusive_group()
    add_inputs(p, "calibration (default: random)", group=src)
    src.add_argument("--spec", metavar="SPEC", help="use this model spec's example inputs")
    p.add_argument("--scale", type=float, default=1.0, help="multiply float calibration inputs by this (default 1)")
    add_precision(p, ("fp16", "bf16"), "the conversion to judge (default fp16)", default="fp16")
    p.add_argument("--force-norm-fp16", action="store_true",
                   help="judge a conversion that computes normalization statistics in fp16")
    add_report(p, "advice")
    p.add_argument("--fail-on-overflow", action="store_true",
                   help="exit 1 when a normalization would overflow under the judged conversion")


def run(args) -> int:
    from .advisor import advise_file

    rep = advise_file(args.model, report_path=args.report, calibration=args.inputs, spec=args.spec,
                      precision=args.precision, force_norm_fp16=args.force_norm_fp16, scale=args.scale)
    print(f"calibration: {rep.calibration}; judged conversion: {rep.precision}"
          + (" with statistics forced to fp16" if rep.force_norm_fp16 else ""))
    print(rep.table())
    at_risk = rep.would_overflow_fp16()
    if at_risk:
        print(f"{len(at_risk)} normalization(s) would overflow with fp16 statistics, first: {at_risk[0].label}")
    if rep.flagged:
        print(f"OVERFLOW under this conversion: {', '.join(n.label for n in rep.flagged)}")
    else:
        print("no normalization overflows under this conversion")
    for n in rep.notes:
        print(f"note: {n}")
    return 1 if (args.fail_on_overflow and rep.flagged) else 0
