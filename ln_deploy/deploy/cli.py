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
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"), help="deployed precision (default fp32)")
    p.add_argument("--target", default="onnx", choices=("onnx", "tensorrt"),
                   help="onnx (ONNX Runtime, default) or tensorrt (plugin ops and an engine where TensorRT is present)")
    p.add_argument("--repo", metavar="DIR", help="the Triton model repository (default WORKDIR/repo)")
    p.add_argument("--checkpoint", metavar="FILE", help="weights to load into the SPEC's model (safetensors or torch)")
    p.add_argument("--onnx", metavar="MODEL.onnx",
                   help="deploy this ONNX file (exported elsewhere) instead of exporting SPEC; check proves it against SPEC")
    p.add_argument("--dynamic-axes", action="append", default=None, metavar="NAME:AXIS=LABEL[,...]",
                   help="dynamic axes per input, as for export (repeatable; default: inferred)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's; raised to 23 to fuse RMSNorm)")
    p.add_argument("--inputs", metavar="FILE.npz", help="real inputs for check (one array per input name)")
    p.add_argument("--atol", type=float, help="absolute tolerance override for check")
    p.add_argument("--rtol", type=float, help="relative tolerance override for check")
    p.add_argument("--plugin", metavar="LIB.so", help="ln_deploy's TensorRT plugin library (tensorrt target)")
    p.add_argument("--max-batch-size", type=int, default=8, metavar="N",
                   help="largest batch to package (default 8; capped at the largest batch check verified)")
    p.add_argument("--seed", type=int, default=0, help="seed of check's random inputs (default 0)")
    p.add_argument("--force", action="store_true", help="redo every stage; replace a model folder deploy did not write")
    p.add_argument("--serve", action="store_true", help="serve the packaged model afterwards (KServe v2 on ONNX Runtime)")
    p.add_argument("--port", type=int, default=8000, help="port for --serve (default 8000)")


def run(args) -> int:
    from ..export import parse_dynamic_axes
    from .options import DeployOptions
    from .pipeline import deploy

    options = DeployOptions(name=args.name, precision=args.precision, target=args.target, repo=args.repo,
                            checkpoint=args.checkpoint, onnx=args.onnx, dynamic_axes=parse_dynamic_axes(args.dynamic_axes),
                            opset=args.opset, inputs=args.inputs, atol=args.atol, rtol=args.rtol,
                            plugin=args.plugin, max_batch_size=args.max_batch_size, seed=args.seed,
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
