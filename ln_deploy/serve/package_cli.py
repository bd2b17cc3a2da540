"""Write a Triton model repository entry for an ONNX model or a TensorRT engine, validated.

Names, data types and dims come from the model (an engine's from its JSON sidecar, ENGINE.plan.json).
"""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL.onnx|ENGINE.plan", help="the ONNX model or TensorRT engine to package")
    p.add_argument("--repo", required=True, metavar="DIR", help="the model repository (created if missing)")
    p.add_argument("--name", required=True, help="the model's name in the repository and in request URLs")
    p.add_argument("--max-batch-size", type=int, default=None, metavar="N",
                   help="Triton max_batch_size (default: 8 when the model's first axis is dynamic, else 0)")
    p.add_argument("--instances", type=int, default=1, metavar="N", help="model instances (default 1)")
    p.add_argument("--kind", choices=("auto", "cpu", "gpu"), default="auto",
                   help="instance kind (default: gpu for engines, Triton's choice for ONNX)")
    from ..cli_args import add_plugin

    add_plugin(p, "the one the engine needs, copied into the repository", single="a Triton model folder holds one plugin library")
    p.add_argument("--batch-window-us", type=int, default=500, metavar="US",
                   help="dynamic batching max_queue_delay_microseconds (default 500)")
    p.add_argument("--version", type=int, default=1, help="version folder (default 1)")
    p.add_argument("--model-root", default="/models",
                   help="where the repository is mounted in the server container (default /models)")
    p.add_argument("--force", action="store_true", help="replace an existing model of that name")
    p.add_argument("--k8s", metavar="DIR", default=None,
                   help="also write Kubernetes and KServe manifests for the repository into DIR, validated "
                        "(as `ln-deploy manifests REPO -o DIR`)")
    from .manifests_cli import add_manifest_options

    add_manifest_options(p, in_package=True)


def run(args) -> int:
    from ..cli_args import one
    from ..errors import BadInputError
    from ..progress import step
    from .repository import package_model

    manifest_opts = prepared = None
    if args.k8s is None:
        if args.storage_uri is not None or args.kserve_crd is not None:
            raise BadInputError("--storage-uri and --kserve-crd are for --k8s DIR")
    else:  # refuse bad manifest options before the repository is touched
        from .manifests import check_output_dir, prepare
        from .manifests_cli import options_from_args

        if args.storage_uri is None:
            raise BadInputError("--k8s needs --storage-uri (where the cluster reads the repository from)")
        manifest_opts = options_from_args(args, args.name)
        prepared = prepare(manifest_opts)
        check_output_dir(args.k8s)
    with step(f"packaging {args.model} as {args.name!r}"):
        result = package_model(
            args.model, args.repo, args.name, max_batch_size=args.max_batch_size, instances=args.instances,
            kind=args.kind, plugin=one(args.plugin), batch_window_us=args.batch_window_us, version=args.version,
            model_root=args.model_root, force=args.force)
    print(result.summary())
    if manifest_opts is not None:
        from .manifests import generate_manifests

        with step(f"writing manifests into {args.k8s}"):
            manifests = generate_manifests(args.repo, args.k8s, manifest_opts, prepared)
        print(manifests.summary())
    return 0
