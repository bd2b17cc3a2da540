"""How the stages compose, in one place above them.

Stages never import each other (tests/test_architecture.py). Where one stage's job includes
another's — convert fuses decomposed normalizations first, build converts an fp32 graph to the
requested precision first — the stage function takes the other step as a parameter
(``convert_model(fuser=...)``, ``build_engine(converter=...)``) and this module binds the defaults.
The command-line front ends and ``ln_deploy.deploy`` call these; the stage libraries never do.
"""

from __future__ import annotations


def fuser():
    """The fusion step convert runs first: ``ln_deploy.fuse.fuse_model``, or None when the fuse
    stage is not installed (decomposed normalizations then stay in fp32, with a report note)."""
    try:
        from .fuse import fuse_model
    except ImportError:
        return None
    return fuse_model


def convert_model(model_or_path, precision: str | None = None, *, options=None, **kwargs):
    """``ln_deploy.convert.precision.convert_model`` with decomposed normalizations fused first by
    ``ln_deploy.fuse`` (unless ``fuse=False``, or another ``fuser`` is given). Same arguments
    (``options``: a ``ConvertOptions``; keywords: its fields) and return value."""
    from dataclasses import replace

    from .convert.options import ConvertOptions
    from .convert.precision import convert_model as convert

    opts = ConvertOptions.from_call(options, precision, kwargs)
    if opts.fuse and opts.fuser is None:
        opts = replace(opts, fuser=fuser())
    return convert(model_or_path, options=opts)


def build_engine(model_path, output, **options) -> dict:
    """``ln_deploy.build.engine.build_engine`` that converts an fp32 graph first with
    :func:`convert_model` (target ``tensorrt``) when a lower precision is asked for."""
    from .build.engine import build_engine as build

    return build(model_path, output, converter=convert_model, **options)
