"""``deploy``: one command from a SPEC to a parity-certified Triton model, and ``verify`` of a package.

It runs the stages in order (export → fuse → convert → build → check → package), each stage's
artifact and report in one work folder, skips the stages whose inputs did not change since the last
run (a manifest of content hashes), stops at the first failing stage with that stage's reason, and
writes a parity certificate (``parity.json``) beside the packaged model plus a self-contained HTML
report. It is the orchestrator above the stages: it imports them; no stage imports it.

    from ln_deploy.deploy import DeployOptions, deploy
    result = deploy("models/transformer.py:pre_ln_encoder", "out/enc", DeployOptions(precision="fp16"))
"""

from __future__ import annotations

__all__ = ["deploy", "DeployOptions", "DeployResult", "verify_package", "VerifyResult"]


def __getattr__(name):  # heavy imports only when used
    if name in ("deploy", "DeployResult"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "DeployOptions":
        from .options import DeployOptions

        return DeployOptions
    if name in ("verify_package", "VerifyResult"):
        from . import certificate

        return getattr(certificate, name)
    raise AttributeError(name)
