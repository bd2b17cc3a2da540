"""Check that a deployed model (ONNX, optionally a TensorRT engine) computes what the PyTorch model computes.

Exit codes: 0 every comparison and invariance check passed; 1 a check failed; 2 bad input.
"""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("spec", metavar="SPEC", help="the PyTorch model: path/to/file.py:NAME or package.module:NAME")
    p.add_argument("--onnx", required=True, metavar="MODEL.onnx", help="the deployed ONNX model")
    from ..cli_args import add_checkpoint, add_inputs, add_plugin, add_precision, add_report_dir, add_tolerances

    add_checkpoint(p)
    p.add_argument("--engine", metavar="ENGINE.plan",
                   help="a TensorRT engine built from the ONNX model (run where TensorRT and a GPU are present)")
    add_plugin(p, "loaded before deserializing the engine", deprecated=("--plugins",))
    add_precision(p, ("auto", "fp32", "fp16", "bf16"), "the deployed model's precision, selecting the tolerance "
                  "profile (default auto: read from the model's initializers); the reference is always "
                  "PyTorch fp32", default="auto")
    add_report_dir(p, "report.json, report.md, error plots and run_results.json")
    add_inputs(p, "NAME__0, NAME__1... for several feeds; default: the SPEC's example inputs and one seeded "
                  "random batch")
    p.add_argument("--input-source", choices=["both", "example", "random"], default="both",
                   help="without --inputs: which generated inputs to use (default: both)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    add_tolerances(p, "overrides the precision profile's")
    p.add_argument("--batch-size", type=int, default=4, help="batch of the batch-independence check (default 4)")
    p.add_argument("--no-localise", action="store_true", help="skip per-normalization localisation")
    p.add_argument("--no-invariance", action="store_true", help="skip the invariance checks")
    p.add_argument("--no-plots", action="store_true", help="no error-distribution PNGs in the report")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's)")
    p.add_argument("--json", action="store_true", help="print report.json on stdout instead of the table")


def run(args) -> int:
    import json
    import sys

    from ..errors import BadInputError
    from .api import check_model

    if args.seed < 0:
        raise BadInputError(f"--seed must be >= 0, got {args.seed}")
    if args.threads is not None and args.threads < 0:
        raise BadInputError(f"--threads must be >= 0, got {args.threads}")
    tolerances = {k: v for k, v in (("atol", args.atol), ("rtol", args.rtol)) if v}  # parsed by cli_args
    inputs = args.inputs or (None if args.input_source == "both" else args.input_source)
    report = check_model(args.spec, args.onnx, checkpoint=args.checkpoint, engine=args.engine, plugins=args.plugin,
                         precision=args.precision, report_dir=args.report_dir, inputs=inputs, seed=args.seed,
                         tolerances=tolerances or None, localise=not args.no_localise,
                         invariance=not args.no_invariance, batch_size=args.batch_size, threads=args.threads,
                         plots=not args.no_plots)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(report.console_table())
        if args.report_dir:
            print(f"report: {args.report_dir}/report.md")
    sys.stdout.flush()
    return 0 if report.passed else 1
