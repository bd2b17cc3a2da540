"""Serving: Triton model repositories (``package``) and an embedded KServe-v2 server (``serve``).

Nothing heavy is imported here. ``repository`` writes and validates Triton repositories;
``server`` runs ONNX Runtime behind the KServe v2 HTTP protocol that Triton speaks, so the same
``tritonclient`` code talks to both.
"""

from __future__ import annotations

__all__ = ["package_model", "validate_model_dir", "read_model_config", "serve", "ServeOptions"]


def __getattr__(name):  # lazy: importing ln_deploy.serve must stay cheap
    if name in ("package_model", "validate_model_dir", "read_model_config"):
        from . import repository

        return getattr(repository, name)
    if name in ("serve", "ServeOptions"):
        from . import server

        return getattr(server, name)
    raise AttributeError(name)
