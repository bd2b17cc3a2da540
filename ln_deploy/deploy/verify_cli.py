"""Re-check a packaged model against its parity certificate: the certificate's own hash, the model
file's sha256, then a quick parity run of the certified SPEC (exit 1 on any mismatch)."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("model_dir", metavar="REPO/NAME", help="a model folder written by `ln-deploy deploy`")
    from ..cli_args import add_checkpoint

    add_checkpoint(p, "the ones the SPEC was deployed with, if any")
    p.add_argument("--hash-only", action="store_true", help="check the hashes only (no parity run)")


def run(args) -> int:
    from .certificate import verify_package

    res = verify_package(args.model_dir, parity=not args.hash_only, checkpoint=args.checkpoint)
    for c in res.checks:
        print(f"{'ok  ' if c['passed'] else 'FAIL'} {c['check']}: {c['detail']}")
    print(f"{args.model_dir}: {'VERIFIED' if res.passed else 'NOT VERIFIED'}")
    return 0 if res.passed else 1
