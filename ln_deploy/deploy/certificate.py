"""The parity certificate (``parity.json`` beside a packaged model) and ``verify`` against it.

A certificate records what was proven about one model file: the SPEC and weights it came from, the
file's sha256, the precision and tolerances, the worst error per runtime and output, every shape
the check ran (hence the validated range of each dynamic axis), the invariance results, the tool
versions and the date. ``certificate_sha256`` is the hash of everything else in it, so an edited
certificate no longer verifies. It is an integrity record, not a signature: whoever can rewrite
the file can recompute the hash; sign it with your own key where that matters.

``verify_package`` re-checks a packaged model: the certificate's own hash, the model file's hash,
then a quick parity run of the SPEC against the packaged file within the certified tolerances.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import BadInputError

from ..serve.parity import FILENAME, MAX_BYTES as _MAX_BYTES, certificate_hash as _hash

FORMAT = "ln_deploy.parity/1"


def verified_shapes(check: dict) -> list[dict]:
    """Every shape the check ran, as ``{"inputs": {name: dims}, ...}``; at least the main feed."""
    shapes = check.get("verified_shapes")
    if isinstance(shapes, list) and shapes:
        return [s if "inputs" in s else {"inputs": s} for s in shapes if isinstance(s, dict)]
    main = (check.get("inputs") or {}).get("shapes")
    return [{"inputs": main}] if main else []


def validated_range(shapes: list[dict], dynamic_axes: dict) -> dict:
    """{input: {axis: [min, max]}} over the verified shapes, for every dynamic axis."""
    out: dict = {}
    for name, axes in (dynamic_axes or {}).items():
        for axis in axes:
            sizes = [s["inputs"][name][int(axis)] for s in shapes
                     if name in s.get("inputs", {}) and int(axis) < len(s["inputs"][name])]
            if sizes:
                out.setdefault(name, {})[str(axis)] = [min(sizes), max(sizes)]
    return out


def largest_verified_batch(shapes: list[dict], dynamic_axes: dict) -> int:
    """The largest axis-0 size verified on every input whose axis 0 is dynamic; 1 if none was."""
    batch_inputs = [n for n, axes in (dynamic_axes or {}).items() if 0 in {int(a) for a in axes}]
    best = 1
    for s in shapes:
        dims = [s["inputs"][n][0] for n in batch_inputs if n in s.get("inputs", {}) and s["inputs"][n]]
        if dims and len(set(dims)) == 1:
            best = max(best, dims[0])
    return best


def build_certificate(run, check: dict) -> dict:
    """The certificate of a deploy run (``model_sha256`` and the hash are added when it is packaged)."""
    from ..fileio import load_onnx
    from .manifest import tool_versions

    model = load_onnx(run.deployed(), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        dyn = json.loads(meta.get("ln_deploy.dynamic_axes", "{}"))
    except ValueError:
        dyn = {}
    shapes = verified_shapes(check)
    max_errors: dict = {}
    for comp in check.get("comparisons", []):
        max_errors[comp["runner"]] = {o: v.get("stats", {}).get("max_abs") for o, v in comp.get("outputs", {}).items()}
    batch = min(run.options.max_batch_size, largest_verified_batch(shapes, dyn))
    return {
        "format": FORMAT,
        "passed": bool(check.get("passed")),
        "spec": run.spec,
        "weights_sha256": meta.get("ln_deploy.weights_sha256"),
        "precision": run.options.precision,
        "target": run.options.target,
        "tolerances": check.get("tolerances"),
        "max_errors": max_errors,
        "verified_shapes": shapes,
        "dynamic_axes": dyn,
        "validated_range": validated_range(shapes, dyn),
        "max_batch_size": batch,
        "invariance": [{k: r.get(k) for k in ("check", "runtime", "status", "message")}
                       for r in check.get("invariance", [])],
        "tool_versions": tool_versions(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tolerance_overrides": {k: v for k, v in (("atol", run.options.atol), ("rtol", run.options.rtol))
                                if v is not None},
        "workdir": str(run.workdir.resolve()),
    }


def read_certificate(model_dir: Path) -> dict:
    path = Path(model_dir) / FILENAME
    if not path.is_file():
        raise BadInputError(f"{model_dir} holds no {FILENAME}: package it with `ln-deploy deploy` first")
    if path.stat().st_size > _MAX_BYTES:
        raise BadInputError(f"{path} is larger than {_MAX_BYTES >> 20} MiB: not a certificate")
    try:
        cert = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInputError(f"{path} is not valid JSON ({str(e)[:120]})") from None
    if not isinstance(cert, dict) or cert.get("format") != FORMAT:
        raise BadInputError(f"{path} is not an ln_deploy parity certificate (format {FORMAT})")
    return cert


@dataclass
class VerifyResult:
    """``to_dict()`` holds every field by its name: ``model_dir``; ``passed``; ``checks``: one
    {check, passed, detail} per step (certificate hash, model hash, parity)."""

    model_dir: str
    passed: bool = False
    checks: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """Every field by its name."""
        return asdict(self)


def verify_package(model_dir, *, parity: bool = True, checkpoint=None) -> VerifyResult:
    """Re-check ``model_dir`` (``REPO/NAME``) against its certificate; see the module docstring."""
    from .manifest import sha256_file

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise BadInputError(f"no such model folder: {model_dir}")
    cert = read_certificate(model_dir)
    res = VerifyResult(str(model_dir))

    def add(check, ok, detail):
        res.checks.append({"check": check, "passed": bool(ok), "detail": detail})
        return ok

    if not add("certificate", cert.get("certificate_sha256") == _hash(cert),
               "the certificate's own hash matches" if cert.get("certificate_sha256") == _hash(cert)
               else "the certificate was edited after it was written (its hash does not match)"):
        return res
    rel = cert.get("model_file")
    if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
        add("model file", False, f"the certificate names no model file inside {model_dir}")
        return res
    model_file = model_dir / rel
    if not model_file.is_file():
        add("model file", False, f"{model_file} is missing")
        return res
    digest = sha256_file(model_file)
    if not add("model file", digest == cert.get("model_sha256"),
               f"{rel} sha256 {digest[:16]}... " + ("matches" if digest == cert.get("model_sha256")
                                                    else f"!= certified {str(cert.get('model_sha256'))[:16]}...")):
        return res
    if not cert.get("passed"):
        add("certified", False, "the certificate records a failed check")
        return res
    if parity:
        _quick_parity(cert, model_file, checkpoint, add)
    res.passed = all(c["passed"] for c in res.checks)
    return res


def _quick_parity(cert: dict, model_file: Path, checkpoint, add) -> None:
    """The SPEC against the packaged file, at the certified precision and tolerances (no invariance)."""
    from ..check import check_model
    from .. import progress

    overrides = cert.get("tolerance_overrides") or None
    if model_file.suffix != ".onnx":
        add("parity", True, "engine: parity needs TensorRT and a GPU; checked by hash only")
        return
    with progress.quieted():
        report = check_model(cert["spec"], str(model_file), checkpoint=checkpoint,
                             precision=cert.get("precision", "auto"), tolerances=overrides,
                             localise=False, invariance=False, plots=False)
    worst = {}
    for comp in report.comparisons:
        for o, v in comp["outputs"].items():
            worst[f"{comp['runner']}:{o}"] = v.get("stats", {}).get("max_abs")
    add("parity", report.passed, ("PyTorch vs the packaged model within the certified tolerances: "
                                  if report.passed else "parity FAILED: ") + ", ".join(
        f"{k} max|err| {v:.3g}" for k, v in worst.items() if isinstance(v, (int, float))))
