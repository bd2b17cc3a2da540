"""Export a PyTorch model (SPEC = path/to/file.py:NAME or package.module:NAME) to ONNX."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("spec", metavar="SPEC", help="path/to/file.py:NAME or package.module:NAME; NAME() returns "
                   "an nn.Module or (module, example_inputs)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="where to write the model")
    from ..cli_args import add_checkpoint, add_no_verify, add_tolerances

    add_checkpoint(p)
    p.add_argument("--opset", type=int, help="ONNX opset (>= 17; default: the exporter's own)")
    p.add_argument("--rnn-mode", choices=("scan", "step", "unroll"),
                   help="recurrent models: scan = one graph for any sequence length (default), step = the cell "
                        "with explicit state inputs/outputs, unroll = the plain trace (fixed length)")
    p.add_argument("--dynamic-axes", action="append", metavar="NAME:AXIS=LABEL[,...]",
                   help="the dynamic axes of one input (repeatable), e.g. x:0=batch,1=seq or x:static; an axis "
                        "named here that the model does not allow is an error. Default: candidates (axis 0 = "
                        "batch of every input, axis 1 = seq of rank-2/3 inputs, axes 2,3 = height,width of rank-4 "
                        "inputs) of which torch.export keeps those the model allows; the others are fixed, and "
                        "the summary says why")
    p.add_argument("--exporter", choices=("auto", "dynamo", "legacy"), default="auto",
                   help="torch.onnx exporter: dynamo (default in torch), legacy TorchScript, or auto = dynamo "
                        "with a fallback to legacy (default)")
    add_tolerances(p, "the largest |ONNX Runtime - PyTorch| accepted before the file is kept (default 1e-4)",
                   rtol=False, per_output=False, default=1e-4)
    add_no_verify(p, "the PyTorch model")


def run(args) -> int:
    from . import export_model, parse_dynamic_axes

    r = export_model(args.spec, args.output, checkpoint=args.checkpoint, opset=args.opset,
                     rnn_mode=args.rnn_mode, dynamic_axes=parse_dynamic_axes(args.dynamic_axes),
                     verify=not args.no_verify, exporter=args.exporter, atol=args.atol)
    dyn = ", ".join(f"{n}[{','.join(f'{k}:{v}' for k, v in a.items())}]" for n, a in r.dynamic_axes.items()
                    if n in r.input_names and a)
    print(f"wrote {r.path}: opset {r.opset} ({r.exporter} exporter), {r.node_count} nodes, "
          f"{r.norm_count} normalization ops" + (f", rnn mode {r.rnn_mode}" if r.rnn_mode else ""))
    print(f"  inputs: {', '.join(r.input_names)}; outputs: {', '.join(r.output_names)}; dynamic: {dyn or 'none'}")
    from .axes import AxisDecision

    for d in r.axes:
        print(f"  axis {AxisDecision(**d).line()}")
    if not args.no_verify:
        shapes = "; ".join(v["case"] for v in r.verified)
        print(f"  ONNX Runtime vs PyTorch: max abs error {r.max_abs_error:.3g} over {len(r.verified) or 1} shape(s)"
              + (f": {shapes}" if shapes else ""))
    return 0
