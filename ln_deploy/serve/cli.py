"""Serve ONNX models over the KServe v2 HTTP protocol (Triton's), on ONNX Runtime with dynamic batching.

MODEL is one .onnx file or a Triton model repository written by `ln-deploy package`.
"""

from __future__ import annotations

from .. import cli_args


def add_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL.onnx|REPO_DIR", help="an ONNX model or a model repository")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--name", default=None, help="model name for a single .onnx file (default: the file's stem)")
    p.add_argument("--max-batch-size", type=int, default=None, metavar="N",
                   help="largest batch formed across requests, and largest batch one request may carry "
                        "(default: the repository config's, or 8 when the model's first axis is dynamic)")
    p.add_argument("--max-queue", type=int, default=128, metavar="N",
                   help="requests waiting per model before new ones get 503 (default 128)")
    p.add_argument("--max-body-bytes", type=int, default=64 << 20, metavar="N",
                   help="largest request body; larger ones get 413 (default 64 MiB)")
    p.add_argument("--batch-window-ms", type=float, default=None, metavar="T",
                   help="how long the oldest request may wait for others to fill a batch while a model "
                        "instance is idle (default: the config's max_queue_delay, or 1 ms)")
    p.add_argument("--instances", type=int, default=None, metavar="N",
                   help="concurrent ONNX Runtime runs per model, sharing one session (default: 2 on the CPU, "
                        "as Triton's onnxruntime backend, 1 on a GPU)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="ONNX Runtime provider: cuda when available under auto (default)")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="ONNX Runtime intra-op threads per run (default 0: on the CPU the usable cores divided "
                        "by the instances, 1 each on 2 cores; with one instance ONNX Runtime's choice, one per "
                        "physical core)")
    from .runtime import DEFAULT_SPIN_US

    p.add_argument("--spin", default=str(DEFAULT_SPIN_US), metavar="off|on|MICROSECONDS",
                   help="how long ONNX Runtime's pool threads spin while they wait for work: at most this many "
                        f"µs per wait (default {DEFAULT_SPIN_US}), on (ONNX Runtime's own spinning, which goes on well after "
                        "a run and takes the cores the HTTP work needs) or off (the threads sleep at once; "
                        "slower hand-over inside a run); see docs/serving.md")
    cli_args.defer(p, _check_spin)


def _check_spin(args) -> None:
    from ..errors import BadInputError
    from .runtime import parse_spin

    try:
        args.spin = parse_spin(args.spin)
    except ValueError as e:
        raise BadInputError(str(e)) from None


def run(args) -> int:
    from .server import ServeOptions, serve

    opts = ServeOptions(host=args.host, port=args.port, name=args.name, max_batch_size=args.max_batch_size,
                        max_queue=args.max_queue, max_body_bytes=args.max_body_bytes,
                        batch_window_ms=args.batch_window_ms, instances=args.instances, device=args.device,
                        intra_op_threads=args.threads, spin=args.spin)
    return serve(args.model, opts)
