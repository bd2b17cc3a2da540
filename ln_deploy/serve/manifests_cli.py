"""Write Kubernetes and KServe manifests for a Triton repository from `ln-deploy package`, validated.

OUT/kubernetes.yaml: Deployment, Service, HorizontalPodAutoscaler, PodDisruptionBudget for the Triton
image of docker/. OUT/kserve.yaml: an InferenceService on KServe's Triton runtime (needs --kserve-crd).
Every value comes from the repository; each object is checked against the official schemas first.
"""

from __future__ import annotations


def add_manifest_options(p, *, in_package: bool = False) -> None:
    """The options `manifests` and `package --k8s` share."""
    from .manifests import IMAGE, KUBERNETES_VERSION, TRITON_RELEASE

    g = p.add_argument_group("Kubernetes manifests" + (" (with --k8s)" if in_package else ""))
    g.add_argument("--storage-uri", metavar="URI", default=None,
                   help="where the repository is uploaded for the cluster: s3://BUCKET/PATH, gs://BUCKET/PATH "
                        "or pvc://CLAIM/PATH" + (" (required with --k8s)" if in_package else " (required)"))
    g.add_argument("--kserve-crd", metavar="CRD.yaml", default=None,
                   help="the InferenceService CRD to validate kserve.yaml against (`kubectl get crd "
                        "inferenceservices.serving.kserve.io -o yaml`); without it kserve.yaml is not written")
    if not in_package:  # package names its model with --name already
        g.add_argument("--name", default=None,
                       help="object name (default: the repository's only model, else the repository folder)")
    g.add_argument("--image", default=IMAGE,
                   help=f"the Triton image of docker/Dockerfile.serve, as pushed for the cluster (default {IMAGE})")
    g.add_argument("--namespace", default=None, help="namespace of every object (default: kubectl's)")
    g.add_argument("--service-account", default=None, metavar="NAME",
                   help="ServiceAccount with read access to the storage (default: the namespace's)")
    g.add_argument("--min-replicas", type=int, default=1, metavar="N", help="default 1")
    g.add_argument("--max-replicas", type=int, default=4, metavar="N", help="default 4")
    g.add_argument("--kubernetes-version", default=KUBERNETES_VERSION, metavar="X.Y",
                   help=f"Kubernetes release whose schemas validate the objects (default {KUBERNETES_VERSION})")
    g.add_argument("--triton-release", default=TRITON_RELEASE, metavar="YY.MM",
                   help=f"NGC release of KServe's Triton runtime image; must match the engines' TensorRT "
                        f"(default {TRITON_RELEASE}, docker/'s)")
    g.add_argument("--kserve-mode", choices=("knative", "standard"), default="knative",
                   help="KServe deployment mode: knative (scales on requests in flight, from the batch sizes; "
                        "default) or standard (a Deployment with an HPA on CPU, for KServe without Knative)")
    g.add_argument("--copy-image", default=None, metavar="IMAGE",
                   help="image of the init container copying s3:// or gs:// storage (default: the cloud's CLI)")


def options_from_args(args, name: str | None):
    from .manifests import ManifestOptions

    return ManifestOptions(
        storage_uri=args.storage_uri, name=name, image=args.image, namespace=args.namespace,
        service_account=args.service_account, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
        model_root=getattr(args, "model_root", None), kubernetes_version=args.kubernetes_version,
        kserve_crd=args.kserve_crd, triton_release=args.triton_release, copy_image=args.copy_image,
        kserve_mode=args.kserve_mode)


def add_arguments(p) -> None:
    p.add_argument("repo", metavar="REPO_DIR", help="a model repository written by `ln-deploy package`")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="where to write the manifests (created if missing)")
    p.add_argument("--model-root", default=None,
                   help="where the repository is mounted in the plain Kubernetes pod (default: the root "
                        "`package --model-root` wrote tritonserver.args for, else /models)")
    add_manifest_options(p)


def run(args) -> int:
    from ..errors import BadInputError
    from ..progress import step
    from .manifests import generate_manifests

    if args.storage_uri is None:
        raise BadInputError("--storage-uri is required (where the cluster reads the repository from)")
    opts = options_from_args(args, args.name)
    with step(f"writing manifests for {args.repo}"):
        result = generate_manifests(args.repo, args.out, opts)
    print(result.summary())
    return 0
