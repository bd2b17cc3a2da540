"""Fuse normalization patterns (LayerNorm, RMSNorm, residual + norm) into single operators or plugin ops.

Writes OUT only after the fused model passed the safety check in ONNX Runtime (exit 1 otherwise).
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("input", metavar="IN.onnx", help="model to fuse")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="where to write the fused model")
    from ..cli_args import add_no_verify, add_report, add_target

    add_target(parser, "Here: onnx writes standard LayerNormalization/RMSNormalization (the default); "
                       "tensorrt writes LnDeployNorm/LnDeploySkipNorm plugin nodes")
    parser.add_argument("--opset", type=int, default=None,
                        help="raise the model to at least this opset first (23 enables RMSNormalization)")
    add_report(parser, "fusion")
    add_no_verify(parser, "the input model", deprecated=("--no-check",))


def run(args) -> int:
    from .api import fuse_file

    report = fuse_file(args.input, args.output, args.target, report_path=args.report,
                       opset=args.opset, verify=not args.no_verify)
    print(report.summary())
    print(f"wrote {args.output}" + (f" and {args.report}" if args.report else ""))
    return 0
