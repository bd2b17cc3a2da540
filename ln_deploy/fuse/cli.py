"""Fuse normalization patterns (LayerNorm, RMSNorm, residual + norm) into single operators or plugin ops.

Writes OUT only after the fused model passed the safety check in ONNX Runtime (exit 1 otherwise).
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("input", metavar="IN.onnx", help="model to fuse")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="where to write the fused model")
    parser.add_argument("--target", choices=("onnx", "tensorrt"), default="onnx",
                        help="onnx: standard LayerNormalization/RMSNormalization (default); "
                        "tensorrt: LnDeployNorm/LnDeploySkipNorm plugin nodes")
    parser.add_argument("--opset", type=int, default=None,
                        help="raise the model to at least this opset first (23 enables RMSNormalization)")
    parser.add_argument("--report", metavar="REPORT.json", default=None, help="write the fusion report as JSON")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the ONNX Runtime safety check (not recommended)")


def run(args) -> int:
    from .api import fuse_file

    report = fuse_file(args.input, args.output, args.target, report_path=args.report,
                       opset=args.opset, verify=not args.no_check)
    print(report.summary())
    print(f"wrote {args.output}" + (f" and {args.report}" if args.report else ""))
    return 0
