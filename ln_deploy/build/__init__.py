"""Build stage: TensorRT engines through Polygraphy's loaders, with ln_deploy's plugin library.

Importing this package never imports TensorRT; ``build_engine`` does, after validating its inputs.
"""

from __future__ import annotations

__all__ = ["build_engine", "plan_build", "BuildPlan", "check_plugin_library", "derive_profile",
           "parse_shape_specs", "Profile"]


def __getattr__(name):
    if name in ("build_engine", "plan_build", "BuildPlan", "check_plugin_library"):
        from . import engine

        return getattr(engine, name)
    if name in ("derive_profile", "parse_shape_specs", "Profile"):
        from . import profiles

        return getattr(profiles, name)
    raise AttributeError(name)
