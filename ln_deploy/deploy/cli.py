"""From a SPEC to a parity-certified Triton model: export, fuse, convert, build, check, package.

Every stage's artifact and report land in WORKDIR; a second run skips the stages whose inputs did
not change. Exit 0 certified (or checked where a stage cannot run here, said plainly), 1 a check
failed (the first diverging normalization is named), 2 bad input.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help="path/to/file.py:NAME or package.module:NAME")
    p.add_argument("-o", "--output", required=True, metavar="WORKDIR",
                   help="work folder for every stage's artifact and report (created; reused by a second run)")
    p.add_argument("--name", help="the model's name in the repository (default: the SPEC's NAME)")
    from ..cli_args import add_checkpoint, add_inputs, add_plugin, add_precision, add_target, add_tolerances

    add_precision(p, ("fp32", "fp16", "bf16"), "the deployed precision (default fp32)", default="fp32")
    add_target(p, "Here: tensorrt fuses to plugin ops and builds an engine where TensorRT is present")
    p.add_argument("--repo", metavar="DIR", help="the Triton model repository (default WORKDIR/repo)")
    add_checkpoint(p)
    p.add_argument("--onnx", metavar="MODEL.onnx",
                   help="deploy this ONNX file (exported elsewhere) instead of exporting SPEC; check proves it against SPEC")
    p.add_argument("--dynamic-axes", action="append", default=None, metavar="NAME:AXIS=LABEL[,...]",
                   help="dynamic axes per input, as for export (repeatable; default: inferred)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's; raised to 23 to fuse RMSNorm)")
    add_inputs(p, "for check (default: the SPEC's example inputs and one seeded random batch)")
    add_tolerances(p, "overrides check's precision profile")
    add_plugin(p, "for the tensorrt target: built with, checked with and copied into the repository",
               single="a Triton model folder holds one plugin library")
    p.add_argument("--max-batch-size", type=int, default=8, metavar="N",
                   help="largest batch to package (default 8; capped at the largest batch check verified)")
    p.add_argument("--seed", type=int, default=0, help="seed of check's random inputs (default 0)")
    p.add_argument("--force", action="store_true", help="redo every stage; replace a model folder deploy did not write")
    p.add_argument("--serve", action="store_true", help="serve the packaged model afterwards (KServe v2 on ONNX Runtime)")
    p.add_argument("--port", type=int, default=8000, help="port for --serve (default 8000)")


def run(args) -> int:
    from ..cli_args import one, tolerance_value
    from ..export import parse_dynamic_axes
    from .options import DeployOptions
    from .pipeline import deploy

    options = DeployOptions(name=args.name, precision=args.precision, target=args.target, repo=args.repo,
                            checkpoint=args.checkpoint, onnx=args.onnx, dynamic_axes=parse_dynamic_axes(args.dynamic_axes),
                            opset=args.opset, inputs=args.inputs, atol=tolerance_value(args.atol),
                            rtol=tolerance_value(args.rtol), plugin=one(args.plugin), max_batch_size=args.max_batch_size, seed=args.seed,
                            force=args.force)
    if args.serve and not 0 <= args.port <= 65535:
        from ..errors import BadInputError

        raise BadInputError(f"--port must be 0..65535, got {args.port}")
    result = deploy(args.spec, args.output, options)
    print(result.verdict)
    print(f"report: {result.report}")
    if args.serve and result.packaged:
        from ..serve.server import ServeOptions, serve

        from pathlib import Path

        return int(serve(Path(result.model_dir).parent, ServeOptions(port=args.port)) or 0)
    return 0
