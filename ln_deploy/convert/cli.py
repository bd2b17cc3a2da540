"""Convert an ONNX model to fp16/bf16, keeping normalization statistics in fp32."""

from __future__ import annotations

import argparse


# The shared target names (ln_deploy.cli_args.TARGETS) as convert_model spells them: "ort-cpu" is
# the graph ONNX Runtime runs, whichever provider (serve, Triton's onnxruntime backend, ORT CUDA).
API_TARGETS = {"onnx": "ort-cpu", "tensorrt": "tensorrt"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="IN.onnx", help="the fp32 ONNX model")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="where to write the converted model")
    from ..cli_args import add_inputs, add_precision, add_report, add_target

    add_precision(p, ("fp16", "bf16"), "the precision to convert to (normalization statistics stay fp32)",
                  required=True)
    add_report(p, "conversion")
    p.add_argument("--keep-io-types", action=argparse.BooleanOptionalAction, default=True,
                   help="keep graph inputs/outputs in their original type (default: yes)")
    src = p.add_mutually_exclusive_group()
    add_inputs(p, "calibration for the measured check (default: random)", group=src,
               deprecated=("--calibration",))
    src.add_argument("--spec", metavar="SPEC", help="use this model spec's example inputs for the measured check")
    add_target(p, "Here: onnx writes the typed graph ONNX Runtime runs (nodes without a low-precision ORT CPU "
                  "kernel compute in fp32 between Casts); tensorrt the pure typed graph for a strongly typed "
                  "engine", deprecated_values={"ort-cpu": "onnx"})
    p.add_argument("--fp32-op", action="append", default=None, metavar="OP",
                   help="keep this op type in fp32 (repeatable; replaces the default policy list)")
    p.add_argument("--fp32-node", action="append", default=[], metavar="NAME", help="keep this node in fp32")
    p.add_argument("--no-measure", action="store_true", help="policy only: skip the measured check in ORT (it moves nodes that overflow or lose "
                        "accuracy to fp32, so this changes the result)")
    p.add_argument("--no-fuse", action="store_true", help="do not fuse decomposed normalizations first")
    p.add_argument("--force-norm-fp16", action="store_true",
                   help="DEMONSTRATION ONLY: compute normalization statistics in the low type (overflows)")


def run(args) -> int:
    from ..pipeline_steps import convert_file  # fuses decomposed norms first (unless --no-fuse)
    from .precision import DEFAULT_FP32_OPS

    report = convert_file(
        args.model, args.output, args.precision, report_path=args.report, keep_io_types=args.keep_io_types,
        fp32_ops=tuple(args.fp32_op) if args.fp32_op is not None else DEFAULT_FP32_OPS,
        fp32_nodes=tuple(args.fp32_node), calibration=args.inputs, spec=args.spec,
        force_norm_fp16=args.force_norm_fp16, target=API_TARGETS[args.target], measure=not args.no_measure,
        fuse=not args.no_fuse)
    print(report.summary())
    print(f"wrote {args.output}")
    return 0
