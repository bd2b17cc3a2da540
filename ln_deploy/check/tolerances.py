"""Tolerance profiles per deployed precision, per-output overrides, and the Polygraphy compare
functions built from them.

The reference is always PyTorch in fp32. An fp32 deployment is checked element by element (an
element fails only if it is outside both atol and rtol, Polygraphy's rule); fp16 and bf16 are checked
on error statistics (the maximum and the 99th percentile of the absolute error), because a handful of
elements near zero always have large relative errors in low precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..errors import BadInputError

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class StatCheck:
    """One criterion: Polygraphy's ``check_error_stat`` with its tolerances."""

    stat: str  # "elemwise" | "max" | "mean" | "median" | "quantile"
    atol: float
    rtol: float
    quantile: float = 0.99

    @property
    def label(self) -> str:
        return f"q{self.quantile:g}" if self.stat == "quantile" else self.stat


@dataclass
class ToleranceProfile:
    precision: str
    checks: list[StatCheck]
    # Batch/sequence/padding invariance within one runtime: allclose(|a-b| <= atol + rtol*|b|).
    invariance_atol: float
    invariance_rtol: float
    # Per-output overrides: name -> atol / rtol, replacing those of every check for that output.
    atol_overrides: dict[str, float] = field(default_factory=dict)
    rtol_overrides: dict[str, float] = field(default_factory=dict)

    def checks_for(self, output: str) -> list[StatCheck]:
        out = []
        for c in self.checks:
            c = replace(c, atol=self.atol_overrides.get(output, c.atol), rtol=self.rtol_overrides.get(output, c.rtol))
            out.append(c)
        return out

    def to_dict(self) -> dict:
        """Every field by its name: ``precision``, ``checks`` ({stat: the check's label, atol, rtol} each),
        ``invariance_atol``, ``invariance_rtol``, ``atol_overrides``, ``rtol_overrides``."""
        return {
            "precision": self.precision,
            "checks": [{"stat": c.label, "atol": c.atol, "rtol": c.rtol} for c in self.checks],
            "invariance_atol": self.invariance_atol,
            "invariance_rtol": self.invariance_rtol,
            "atol_overrides": dict(self.atol_overrides),
            "rtol_overrides": dict(self.rtol_overrides),
        }


def default_profile(precision: str) -> ToleranceProfile:
    """The built-in profile of a precision. Values were chosen from measured errors of the bundled
    models (docs/check.md): an order of magnitude above what a correct deployment shows, an order
    below what a wrong epsilon, scale or a batch-dependent normalization produces."""
    if precision == "fp32":
        return ToleranceProfile("fp32", [StatCheck("elemwise", atol=1e-4, rtol=1e-3)],
                                invariance_atol=1e-5, invariance_rtol=1e-4)
    if precision == "fp16":
        return ToleranceProfile("fp16", [StatCheck("max", atol=5e-2, rtol=0.0),
                                         StatCheck("quantile", atol=1e-2, rtol=0.0, quantile=0.99)],
                                invariance_atol=2e-3, invariance_rtol=1e-2)
    if precision == "bf16":
        return ToleranceProfile("bf16", [StatCheck("max", atol=2.5e-1, rtol=0.0),
                                         StatCheck("quantile", atol=6e-2, rtol=0.0, quantile=0.99)],
                                invariance_atol=1.6e-2, invariance_rtol=6e-2)
    raise BadInputError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


def parse_overrides(items, what: str) -> dict[str, float]:
    """``["1e-3", "output_1=5e-3"]`` → ``{"": 1e-3, "output_1": 5e-3}`` (``""`` = every output): the
    shared ``--atol``/``--rtol`` syntax of every subcommand (``ln_deploy.cli_args.parse_tolerances``)."""
    from ..cli_args import parse_tolerances

    return parse_tolerances(items, what)


def make_profile(precision: str, tolerances: dict | None = None) -> ToleranceProfile:
    """The default profile of ``precision`` with ``tolerances`` applied:
    ``{"atol": {"": 1e-3, "output_1": 1e-2}, "rtol": {...}}`` (a plain number means every output)."""
    profile = default_profile(precision)
    if not tolerances:
        return profile
    unknown = set(tolerances) - {"atol", "rtol"}
    if unknown:
        raise BadInputError(f"tolerances: unknown key(s) {sorted(unknown)}; use 'atol' and 'rtol'")
    for key in ("atol", "rtol"):
        spec = tolerances.get(key)
        if spec is None:
            continue
        spec = {"": spec} if isinstance(spec, (int, float)) else dict(spec)
        for name, v in spec.items():
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise BadInputError(f"tolerances[{key!r}][{name!r}] must be a finite number >= 0")
        default = spec.pop("", None)
        if default is not None:
            profile.checks = [replace(c, **{key: float(default)}) for c in profile.checks]
        getattr(profile, f"{key}_overrides").update({k: float(v) for k, v in spec.items()})
    return profile


def compare_funcs(profile: ToleranceProfile, output_names):
    """One Polygraphy ``SimpleCompareFunc`` per stat check, with per-output tolerance dicts."""
    from polygraphy.comparator.compare import SimpleCompareFunc

    funcs = []
    for i, check in enumerate(profile.checks):
        atol = {"": check.atol}
        rtol = {"": check.rtol}
        for name in output_names:
            c = profile.checks_for(name)[i]
            atol[name], rtol[name] = c.atol, c.rtol
        funcs.append(SimpleCompareFunc(atol=atol, rtol=rtol, check_error_stat=check.stat,
                                       error_quantile=check.quantile))
    return funcs


def stat_passes(stats: dict, check: StatCheck) -> bool:
    """Apply a check to error statistics computed by ``error_stats`` (the same rule as Polygraphy)."""
    if stats.get("nan_mismatch"):
        return False
    if check.stat == "elemwise":
        return stats["elemwise_failures"] == 0 if "elemwise_failures" in stats else False
    key = {"max": "max", "mean": "mean", "median": "median", "quantile": "p99"}[check.stat]
    abs_v, rel_v = stats[f"{key}_abs"], stats[f"{key}_rel"]
    if any(math.isnan(v) for v in (abs_v, rel_v)):
        return False
    return abs_v <= check.atol or rel_v <= check.rtol


def describe_error(stats: dict) -> str:
    """What went wrong, in words, from ``error_stats``: NaN where the other side has a number says so
    (its max abs, taken over the positions where both are numbers, can be 0)."""
    if stats.get("nan_mismatch"):
        return (f"NaN at {stats['nan_mismatch']} of {stats['numel']} positions where the other side has a number; "
                f"max abs {stats.get('max_abs', float('nan')):.3g} elsewhere")
    return f"max abs {stats.get('max_abs', float('nan')):.3g}"


def error_stats(out, ref, atol: float | None = None, rtol: float | None = None) -> dict:
    """Error statistics of ``out`` against the reference ``ref`` (both cast to float64).

    With ``atol``/``rtol``, also counts elements outside both (Polygraphy's elementwise rule)."""
    import numpy as np

    a = np.asarray(out, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        return {"shape_mismatch": [list(a.shape), list(b.shape)]}
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    stats: dict = {"nan_mismatch": int(np.count_nonzero(nan_a != nan_b)), "numel": int(a.size)}
    both = ~(nan_a | nan_b)
    a, b = a[both], b[both]
    if a.size == 0:
        stats.update({k: 0.0 for k in ("max_abs", "mean_abs", "median_abs", "p99_abs",
                                       "max_rel", "mean_rel", "median_rel", "p99_rel", "ref_max_abs")})
        if atol is not None:
            stats["elemwise_failures"] = 0
        return stats
    absd = np.abs(a - b)
    denom = np.abs(b)
    denom = np.where(denom == 0, 2.220446049250313e-16, denom)
    reld = absd / denom
    stats.update({
        "max_abs": float(absd.max()), "mean_abs": float(absd.mean()),
        "median_abs": float(np.median(absd)), "p99_abs": float(np.quantile(absd, 0.99)),
        "max_rel": float(reld.max()), "mean_rel": float(reld.mean()),
        "median_rel": float(np.median(reld)), "p99_rel": float(np.quantile(reld, 0.99)),
        "ref_max_abs": float(np.abs(b).max()),
    })
    if atol is not None:
        fails = (absd > atol) & (reld > (rtol or 0.0))
        stats["elemwise_failures"] = int(np.count_nonzero(fails))
        if fails.any():
            idx = np.unravel_index(int(np.argmax(np.where(fails, absd, -1))), np.asarray(out).shape) \
                if both.all() else None
            if idx is not None:
                stats["worst_index"] = [int(i) for i in idx]
    return stats


def evaluate(out, ref, profile: ToleranceProfile, name: str) -> tuple[bool, dict, list[dict]]:
    """(passed, stats, per-check verdicts) of one output against the profile's checks for ``name``."""
    checks = profile.checks_for(name)
    elem = next((c for c in checks if c.stat == "elemwise"), None)
    stats = error_stats(out, ref, elem.atol if elem else None, elem.rtol if elem else None)
    if "shape_mismatch" in stats:
        return False, stats, [{"stat": c.label, "atol": c.atol, "rtol": c.rtol, "passed": False} for c in checks]
    verdicts = [{"stat": c.label, "atol": c.atol, "rtol": c.rtol, "passed": stat_passes(stats, c)} for c in checks]
    return all(v["passed"] for v in verdicts), stats, verdicts
