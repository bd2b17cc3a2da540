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


def convert_file(in_path, out_path, precision: str | None = None, *, report_path=None, options=None, **kwargs):
    """:func:`convert_model` on an untrusted model file, then the converted model (and the report as
    JSON at ``report_path``) written atomically; the output paths are checked before any work.
    Returns the ``ConversionReport``."""
    import json

    from . import progress
    from .fileio import check_output_path, save_onnx_atomic, write_text_atomic

    check_output_path(out_path)
    if report_path is not None:
        check_output_path(report_path)
    to = precision or getattr(options, "precision", None)
    with progress.step(f"converting {in_path}" + (f" to {to}" if to else "")):
        model, report = convert_model(in_path, precision, options=options, **kwargs)
    save_onnx_atomic(model, out_path)
    if report_path is not None:
        write_text_atomic(report_path, json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def build_engine(model_path, output, **options) -> dict:
    """``ln_deploy.build.engine.build_engine`` that converts an fp32 graph first with
    :func:`convert_model` (target ``tensorrt``) when a lower precision is asked for."""
    from .build.engine import build_engine as build

    return build(model_path, output, converter=convert_model, **options)
