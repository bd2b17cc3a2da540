"""The fp16 overflow advisor: which normalizations would overflow if their statistics ran in fp16.

For every normalization (fused op, ln_deploy plugin op, or decomposed chain) the fp32 model runs in
ONNX Runtime on calibration inputs and the normalized value x (x + residual for a skip norm) is
recorded over its normalized axes:

* ``max_abs``: max |x|; above 65504 the fp16 tensor itself is inf, whatever the statistics do;
* ``max_abs_centered``: max |x - mean(x)| (LayerNorm) or max |x| (RMSNorm): the value that gets
  squared; above sqrt(65504) = 255.9 the square is inf in fp16;
* ``max_row_sum_sq``: the largest sum over a row of the squared values: what an fp16 accumulator
  of the sum of squares must hold (above 65504: inf);
* ``max_mean_sq``: the largest mean of squares (the variance / mean square itself).

Each entry then says what the conversion does with that normalization (``convert_model``'s rules),
and whether the result is safe.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

from ..errors import BadInputError
from ..onnx_graph import ensure_node_names

FP16_MAX = 65504.0
SQUARE_LIMIT = math.sqrt(FP16_MAX)  # 255.94


@dataclass
class NormAdvice:
    name: str
    module: str
    kind: str
    form: str
    input: str
    row_size: int
    max_abs: float
    max_abs_centered: float
    max_row_sum_sq: float
    max_mean_sq: float
    square_overflows_fp16: bool
    sum_sq_overflows_fp16: bool
    input_overflows_fp16: bool
    handling: str
    verdict: str  # "safe" | "overflows" | "input out of fp16 range"

    @property
    def label(self) -> str:
        return self.module or self.name

    @property
    def flagged(self) -> bool:
        return self.verdict != "safe"


@dataclass
class AdvisorReport:
    """What ``advise`` found; ``to_dict()`` (the ``--report`` JSON) holds every field by its name:
    ``precision``, ``force_norm_fp16``, ``calibration``, ``norms`` (every ``NormAdvice`` field by its name),
    ``notes``, and the derived ``flagged`` and ``would_overflow_fp16`` (the normalizations' labels)."""

    precision: str
    force_norm_fp16: bool
    calibration: str
    norms: list[NormAdvice] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> list[NormAdvice]:
        return [n for n in self.norms if n.flagged]

    @property
    def first_overflow(self) -> NormAdvice | None:
        return next(iter(self.flagged), None)

    def would_overflow_fp16(self) -> list[NormAdvice]:
        """Norms whose statistics would overflow if computed in fp16 (whatever the conversion does)."""
        return [n for n in self.norms if n.square_overflows_fp16 or n.sum_sq_overflows_fp16 or n.input_overflows_fp16]

    def to_dict(self) -> dict:
        """Every field by its name, plus ``flagged`` and ``would_overflow_fp16`` (lists of labels)."""
        d = asdict(self)
        d["flagged"] = [n.label for n in self.flagged]
        d["would_overflow_fp16"] = [n.label for n in self.would_overflow_fp16()]
        return d

    def table(self) -> str:
        head = f"{'normalization':32s} {'form':10s} {'max|x|':>10s} {'max|x-m|':>10s} {'max Σx²':>11s} {'verdict':>9s}  handling"
        rows = [head]
        for n in self.norms:
            rows.append(f"{n.label[:32]:32s} {n.form:10s} {n.max_abs:10.4g} {n.max_abs_centered:10.4g} "
                        f"{n.max_row_sum_sq:11.4g} {n.verdict[:9]:>9s}  {n.handling}")
        return "\n".join(rows)


def advise(model_or_path, *, calibration=None, spec: str | None = None, precision: str = "fp16",
           force_norm_fp16: bool = False, scale: float = 1.0) -> AdvisorReport:
    """Measure every normalization's input on calibration data and report fp16 overflow risks.

    ``calibration``: a .npz path or dict of inputs; else ``spec``'s example inputs; else seeded
    random inputs (times ``scale``). ``precision`` and ``force_norm_fp16`` describe the conversion
    the report should judge (what ``convert_model`` would do with each normalization).
    """
    import numpy as np

    from .calibration import load_calibration, run_with_values
    from ..norm_sites import find_normalizations
    from .precision import _load, check_precision, is_plugin

    check_precision(precision)
    if not (math.isfinite(scale) and scale > 0):
        raise BadInputError(f"scale must be a finite number > 0, got {scale}")
    model = _load(model_or_path)
    ensure_node_names(model.graph)
    if any(is_plugin(n) for n in model.graph.node):
        raise BadInputError("the model holds TensorRT plugin ops that ONNX Runtime cannot run; "
                            "advise on the model before fusing with the tensorrt target")
    feeds = load_calibration(calibration, model, spec=spec, scale=scale)
    where = (str(calibration) if isinstance(calibration, (str, bytes)) or hasattr(calibration, "__fspath__")
             else "calibration dict" if isinstance(calibration, dict) else f"{spec} example inputs" if spec
             else "random inputs")
    if scale != 1.0:
        where += f" x {scale:g}"
    sites = find_normalizations(model.graph, model=model)
    report = AdvisorReport(precision, force_norm_fp16, where)
    if not sites:
        report.notes.append("no normalization found")
        return report
    names = sorted({i for s in sites for i in s.inputs})
    source = str(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else "the model"
    vals = run_with_values(model, feeds, names, source=source)
    vals.update({k: np.asarray(v, dtype=np.float64) for k, v in feeds.items() if k in names})
    for s in sites:
        missing = [i for i in s.inputs if i not in vals]
        if missing:
            report.notes.append(f"{s.label}: input {missing[0]} could not be observed")
            continue
        x = sum(np.asarray(vals[i], dtype=np.float64) for i in s.inputs)
        axes = s.axes if s.axes is not None else (-1,)
        axes = tuple(a if a < 0 else a - x.ndim for a in axes)
        row = int(np.prod([x.shape[a] for a in axes])) if x.ndim else 1
        centered = x - x.mean(axis=axes, keepdims=True) if s.kind == "layernorm" else x
        sq = centered ** 2
        max_abs = float(np.abs(x).max(initial=0.0))
        max_c = float(np.abs(centered).max(initial=0.0))
        sum_sq = float(sq.sum(axis=axes).max(initial=0.0))
        mean_sq = float(sq.mean(axis=axes).max(initial=0.0))
        sq_over = max_c > SQUARE_LIMIT
        sum_over = sum_sq > FP16_MAX
        in_over = max_abs > FP16_MAX
        handling, protected = _handling(s, precision, force_norm_fp16)
        if precision == "bf16":
            verdict = "safe"  # bf16 has fp32's exponent range: nothing here overflows
        elif in_over:
            verdict = "input out of fp16 range"
            handling += "; the input itself exceeds fp16: convert_model keeps its producer and the norm in fp32"
            verdict = "safe" if not force_norm_fp16 else verdict
        elif protected:
            verdict = "safe"
        else:
            verdict = "overflows" if (sq_over or sum_over) else "safe"
        report.norms.append(NormAdvice(s.name, s.module, s.kind, s.form, "+".join(s.inputs), row, max_abs, max_c,
                                       sum_sq, mean_sq, sq_over, sum_over, in_over, handling, verdict))
    if precision == "bf16":
        report.notes.append("bf16 keeps fp32's exponent range: no overflow; its risk is precision (8 bits)")
    return report


def _handling(site, precision: str, force: bool) -> tuple[str, bool]:
    """What convert_model does with this normalization, and whether its statistics are in fp32."""
    if site.form == "plugin":
        return "plugin: fp32 accumulation in the kernel", True
    if force:
        return f"forced: statistics computed in {precision}", False
    if site.form == "fused":
        return f"{site.op_type} stash_type=1: statistics in fp32", True
    return "decomposed: fused first (stash_type=1), else kept in fp32 by the policy", True


def advise_file(model_path, *, report_path=None, **kwargs) -> AdvisorReport:
    """:func:`advise` on an untrusted model file; the report also written as JSON to ``report_path``
    (checked before any work, written atomically)."""
    import json

    from .. import progress
    from ..fileio import check_output_path, write_text_atomic

    if report_path is not None:
        check_output_path(report_path)
    with progress.step(f"measuring normalization inputs of {model_path}"):
        rep = advise(model_path, **kwargs)
    if report_path is not None:
        write_text_atomic(report_path, json.dumps(rep.to_dict(), indent=2) + "\n")
    return rep
