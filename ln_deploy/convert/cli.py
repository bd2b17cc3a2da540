"""Convert an ONNX model to fp16/bf16, keeping normalization statistics in fp32."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="IN.onnx", help="the fp32 ONNX model")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="where to write the converted model")
    p.add_argument("--precision", required=True, help="fp16 or bf16")
    p.add_argument("--report", metavar="R.json", help="write the conversion report (JSON) here")
    p.add_argument("--keep-io-types", action=argparse.BooleanOptionalAction, default=True,
                   help="keep graph inputs/outputs in their original type (default: yes)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--calibration", metavar="FILE.npz",
                     help="inputs for the measured check (one array per input name); default: random")
    src.add_argument("--spec", metavar="SPEC", help="use this model spec's example inputs for the measured check")
    p.add_argument("--target", default="ort-cpu", choices=("ort-cpu", "tensorrt"),
                   help="ort-cpu (default): nodes without a low-precision ORT CPU kernel compute in fp32 between "
                        "Casts; tensorrt: the pure typed graph for a strongly typed engine")
    p.add_argument("--fp32-op", action="append", default=None, metavar="OP",
                   help="keep this op type in fp32 (repeatable; replaces the default policy list)")
    p.add_argument("--fp32-node", action="append", default=[], metavar="NAME", help="keep this node in fp32")
    p.add_argument("--no-measure", action="store_true", help="policy only: skip the measured check in ORT")
    p.add_argument("--no-fuse", action="store_true", help="do not fuse decomposed normalizations first")
    p.add_argument("--force-norm-fp16", action="store_true",
                   help="DEMONSTRATION ONLY: compute normalization statistics in the low type (overflows)")


def run(args) -> int:
    from .. import progress
    from ..fileio import check_output_path, save_onnx_atomic, write_text_atomic
    from ..pipeline_steps import convert_model  # fuses decomposed norms first (unless --no-fuse)
    from .precision import DEFAULT_FP32_OPS, check_precision

    check_precision(args.precision)
    check_output_path(args.output)
    if args.report:
        check_output_path(args.report)
    with progress.step(f"converting {args.model} to {args.precision}"):
        model, report = convert_model(
            args.model, args.precision, keep_io_types=args.keep_io_types,
            fp32_ops=tuple(args.fp32_op) if args.fp32_op is not None else DEFAULT_FP32_OPS,
            fp32_nodes=tuple(args.fp32_node), calibration=args.calibration, spec=args.spec,
            force_norm_fp16=args.force_norm_fp16, target=args.target, measure=not args.no_measure,
            fuse=not args.no_fuse)
    save_onnx_atomic(model, args.output)
    if args.report:
        write_text_atomic(args.report, json.dumps(report.to_dict(), indent=2) + "\n")
    print(report.summary())
    print(f"wrote {args.output}")
    return 0
