"""Build a TensorRT engine from an ONNX model (needs TensorRT and a GPU; inputs are validated first)."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx", help="the ONNX model (exported, fused and/or converted)")
    p.add_argument("-o", "--output", required=True, metavar="ENGINE.plan",
                   help="the engine file; its JSON sidecar goes to ENGINE.plan.json")
    from ..cli_args import add_plugin, add_precision

    add_plugin(p, "loaded before parsing the model")
    p.add_argument("--shapes", nargs="+", default=[], metavar="NAME:MIN/OPT/MAX",
                   help="optimization profile of an input, e.g. x:1x8x64/8x128x64/32x512x64 "
                        "(default: from the model's dynamic axes)")
    p.add_argument("--timing-cache", metavar="FILE", help="tactic timing cache to read and update")
    add_precision(p, ("fp32", "fp16", "bf16"), "the engine's precision (default: the graph's own); an fp32 "
                  "graph is converted first (fp32 normalization statistics)")
    p.add_argument("--typing", default="strong", help="strong (default) or weak (TensorRT 10 builder flags)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the inputs and print the build plan (profiles, plugins) without TensorRT")


def run(args) -> int:
    from ..pipeline_steps import build_engine
    from .engine import plan_build

    if args.dry_run:
        plan = plan_build(args.model, args.output, plugins=args.plugin, shapes=args.shapes,
                          precision=args.precision, timing_cache=args.timing_cache, typing=args.typing)
        print(json.dumps({"precision": plan.precision, "graph_precision": plan.graph_precision,
                          "typing": plan.typing, "convert_first": plan.convert_first,
                          "profiles": [plan.profile.to_dict()],
                          "plugins": [p.__dict__ for p in plan.plugins]}, indent=2))
        return 0
    sidecar = build_engine(args.model, args.output, plugins=args.plugin, shapes=args.shapes,
                           precision=args.precision, timing_cache=args.timing_cache, typing=args.typing)
    print(f"wrote {args.output} (TensorRT {sidecar['tensorrt_version']}, {sidecar['precision']}, "
          f"{sidecar['gpu']}) and {args.output}.json")
    return 0
