"""The deploy pipeline: export → fuse → convert → build → check → package, incremental and certified.

Each stage is a function ``(run) -> Outcome`` over one ``DeployRun`` (the options, the work folder,
the manifest, the artifacts so far). The runner computes the stage's key, skips it when the manifest
says it is fresh, otherwise runs it, records it, and saves the manifest before the next stage, so an
interrupted deploy resumes where it stopped. The first failure ends the run with that stage's own
error (exit 2 bad input, 1 failed check); nothing is packaged after a failed check.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import progress
from ..errors import BadInputError, CheckFailedError, LnDeployError
from .manifest import MANIFEST, Manifest, sha256_file, sha256_json, spec_sources, tool_versions
from .options import DeployOptions

STAGES = ("export", "fuse", "convert", "build", "check", "package")
REPORT = "report.html"


@dataclass
class StageResult:
    """One row of the pipeline; ``to_dict()`` holds every field by its name: ``stage``, ``status``
    (passed | reused (fresh from an earlier run) | failed | skipped (could not run here, with ``detail``
    saying why) | n/a (not part of this deployment)), ``seconds``, ``artifact``, ``size``, ``detail``."""

    stage: str
    status: str
    seconds: float = 0.0
    artifact: str | None = None
    size: int | None = None
    detail: str = ""

    def to_dict(self) -> dict:
        """Every field by its name."""
        return asdict(self)


@dataclass
class DeployResult:
    """``to_dict()`` (deploy.json) holds every field by its name: ``workdir``; ``passed``: every stage
    that had to run passed; ``packaged``: a model folder with its certificate was written (``model_dir``);
    ``verdict``: the console's last line but one; ``stages`` (``StageResult.to_dict()`` each);
    ``certificate``; ``report`` (the HTML report's path); ``seconds``."""

    workdir: str
    passed: bool
    packaged: bool
    verdict: str
    stages: list = field(default_factory=list)
    model_dir: str | None = None
    certificate: dict | None = None
    report: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """Every field by its name."""
        return asdict(self)


@dataclass
class Outcome:
    status: str = "passed"
    artifacts: list = field(default_factory=list)  # Paths the manifest hashes; the first is "the" artifact
    summary: dict = field(default_factory=dict)
    detail: str = ""


class DeployRun:
    """Everything one ``deploy`` call shares between stages; the spec is loaded at most once, and only
    when a stage that needs PyTorch has to run."""

    def __init__(self, spec: str, workdir: Path, options: DeployOptions):
        self.spec = spec
        self.workdir = workdir
        self.options = options
        self.manifest = Manifest(workdir) if options.force else Manifest.load(workdir)
        self.name = options.name or spec.rpartition(":")[2]
        self.repo = Path(options.repo) if options.repo else workdir / "repo"
        self._loaded = None
        self.reports: dict[str, dict] = {}  # stage -> its report (read back from disk when reused)
        self.artifact: dict[str, Path] = {}  # stage -> its main artifact
        self.results: list[StageResult] = []
        self.certificate: dict | None = None
        self.base = {
            "spec": spec,
            "sources": spec_sources(spec),
            "checkpoint": sha256_file(options.checkpoint) if options.checkpoint else None,
            "versions": tool_versions(),
            "seed": options.seed,
        }

    @property
    def loaded(self):
        if self._loaded is None:
            from ..spec import load_spec

            self._loaded = load_spec(self.spec, self.options.checkpoint)
        return self._loaded

    def path(self, name: str) -> Path:
        return self.workdir / name

    def deployed(self) -> Path:
        """The model the runtimes run: converted if a precision was asked for, else fused."""
        return self.artifact.get("convert") or self.artifact["fuse"]


# --------------------------------------------------------------------------- the stages

def _key_export(run: DeployRun) -> dict:
    o = run.options
    given = sha256_file(o.onnx) if o.onnx else None
    return {**run.base, "opset": o.opset, "dynamic_axes": o.dynamic_axes, "onnx": given}


def _export(run: DeployRun) -> Outcome:
    from ..export import export_model

    out = run.path("model.onnx")
    if run.options.onnx:  # the user's own export: loaded as untrusted, re-saved here, proven by check
        from ..export import count_nodes
        from ..fileio import load_onnx, save_onnx_atomic

        model = load_onnx(run.options.onnx)
        save_onnx_atomic(model, out)
        nodes, norms = count_nodes(model)
        summary = {"path": str(out), "source": str(run.options.onnx), "node_count": nodes, "norm_count": norms}
        _write_json(run.path("export.json"), summary)
        return Outcome(artifacts=[out, run.path("export.json")], summary=summary,
                       detail=f"given ONNX file {run.options.onnx} (not exported here): {nodes} nodes")
    res = export_model(run.loaded, out, opset=run.options.opset, dynamic_axes=run.options.dynamic_axes)
    summary = res.to_dict()
    _write_json(run.path("export.json"), summary)
    return Outcome(artifacts=[out, run.path("export.json")], summary=summary,
                   detail=f"{res.node_count} nodes, {res.norm_count} norm ops, {res.exporter} exporter")


def _key_fuse(run: DeployRun) -> dict:
    return {"in": sha256_file(run.artifact["export"]), "target": run.options.target, "opset": run.options.opset}


def _fuse(run: DeployRun) -> Outcome:
    from ..fileio import save_onnx_atomic
    from ..fuse import fuse_model

    src = run.artifact["export"]
    fused, report = fuse_model(src, run.options.target, opset=run.options.opset)
    if (run.options.target == "onnx" and run.options.opset is None
            and any("opset 23" in n for n in report.notes)):
        # RMSNorm fuses to a single op only from opset 23: raise the opset rather than leave it spelled out
        fused, report = fuse_model(src, run.options.target, opset=23)
    out = run.path("fused.onnx")
    save_onnx_atomic(fused, out)
    summary = report.to_dict()
    _write_json(run.path("fuse.json"), summary)
    total = sum(summary.get("fused", {}).values())
    return Outcome(artifacts=[out, run.path("fuse.json")], summary=summary,
                   detail=f"{total} fused, {len(summary.get('rejected', []))} left with a reason")


def _key_convert(run: DeployRun) -> dict:
    return {"in": sha256_file(run.artifact["fuse"]), "precision": run.options.precision,
            "target": run.options.target, "spec": run.base}


def _convert(run: DeployRun) -> Outcome:
    if run.options.precision == "fp32":
        return Outcome(status="n/a", detail="fp32: no conversion")
    from ..pipeline_steps import convert_model
    from ..fileio import save_onnx_atomic

    kwargs = {"target": "tensorrt"} if run.options.target == "tensorrt" else {}
    model, report = convert_model(str(run.artifact["fuse"]), run.options.precision, spec=run.spec, **kwargs)
    out = run.path(f"model_{run.options.precision}.onnx")
    save_onnx_atomic(model, out)
    summary = report.to_dict()
    _write_json(run.path("convert.json"), summary)
    return Outcome(artifacts=[out, run.path("convert.json")], summary=summary,
                   detail=f"{summary.get('low_nodes')}/{summary.get('nodes')} nodes in {run.options.precision}, "
                          f"{len(summary.get('fp32_nodes', []))} kept in fp32")


def _key_build(run: DeployRun) -> dict:
    return {"in": sha256_file(run.deployed()), "target": run.options.target,
            "plugin": sha256_file(run.options.plugin) if run.options.plugin else None}


def _build(run: DeployRun) -> Outcome:
    if run.options.target != "tensorrt":
        return Outcome(status="n/a", detail="onnx target: ONNX Runtime runs the model, no engine")
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return Outcome(status="skipped", detail="TensorRT is not installed here: no engine was built, so the "
                                                "plugin kernels are not checked and nothing can be packaged")
    from ..build.engine import build_engine

    out = run.path("model.plan")
    plugins = [run.options.plugin] if run.options.plugin else []
    sidecar = build_engine(str(run.deployed()), out, plugins=plugins)
    return Outcome(artifacts=[out, Path(str(out) + ".json")], summary=sidecar, detail="engine built")


def _key_check(run: DeployRun) -> dict:
    o = run.options
    return {"in": sha256_file(run.deployed()), "engine": sha256_file(run.artifact["build"]) if "build" in run.artifact
            else None, "spec": run.base, "precision": o.precision, "atol": o.atol, "rtol": o.rtol,
            "inputs": sha256_file(o.inputs) if o.inputs else None, "max_batch_size": o.max_batch_size}


def _check(run: DeployRun) -> Outcome:
    from ..check import check_model

    o = run.options
    report_dir = run.path("check")
    if report_dir.exists():  # this deploy's own earlier report: a stale one must not pass for this run's
        shutil.rmtree(report_dir)
    tolerances = {k: v for k, v in (("atol", o.atol), ("rtol", o.rtol)) if v is not None} or None
    engine = run.artifact.get("build")
    report = check_model(run.loaded, str(run.deployed()), engine=str(engine) if engine else None,
                         plugins=[o.plugin] if (engine and o.plugin) else (), precision=o.precision,
                         report_dir=report_dir, inputs=o.inputs, seed=o.seed, tolerances=tolerances,
                         max_batch=o.max_batch_size)  # the batch the package will accept is proven, not assumed
    data = report.to_dict()
    run.reports["check"] = data
    outcome = Outcome(artifacts=[report_dir / "report.json"], summary={"passed": report.passed},
                      detail=report.summary_line().split(": ", 1)[-1])
    if not report.passed:
        outcome.status = "failed"
    return outcome


def _key_package(run: DeployRun) -> dict:
    art = run.artifact.get("build") or run.deployed()
    return {"in": sha256_file(art), "check": sha256_file(run.path("check") / "report.json"), "name": run.name,
            "repo": str(run.repo.resolve()), "max_batch_size": run.options.max_batch_size,
            "plugin": sha256_file(run.options.plugin) if run.options.plugin else None}


def _package(run: DeployRun) -> Outcome:
    from ..serve.repository import package_model
    from .certificate import build_certificate

    if run.options.target == "tensorrt" and "build" not in run.artifact:
        return Outcome(status="skipped", detail="no engine (TensorRT is not installed here): nothing packaged")
    check = run.reports.get("check") or _read_json(run.path("check") / "report.json")
    model_file = run.artifact.get("build") or run.deployed()
    cert = build_certificate(run, check)
    final = run.repo / run.name
    ours = _written_by_us(run, final)
    if final.exists() and not ours and not run.options.force:
        raise BadInputError(f"{final} exists and was not written by this deploy (use --force to replace it)")
    res = package_model(model_file, run.repo, run.name, max_batch_size=cert["max_batch_size"],
                        plugin=run.options.plugin if "build" in run.artifact else None,
                        force=final.exists(), certificate=cert)
    run.certificate = json.loads((res.model_dir / "parity.json").read_text())
    return Outcome(artifacts=[res.model_dir / "parity.json", res.model_dir / "config.pbtxt"],
                   summary={"model_dir": str(res.model_dir), "max_batch_size": cert["max_batch_size"]},
                   detail=f"{res.model_dir} (max_batch_size {cert['max_batch_size']})")


_RUN = {"export": (_key_export, _export), "fuse": (_key_fuse, _fuse), "convert": (_key_convert, _convert),
        "build": (_key_build, _build), "check": (_key_check, _check), "package": (_key_package, _package)}


# --------------------------------------------------------------------------- the runner

def deploy(spec: str, workdir, options: DeployOptions | None = None) -> DeployResult:
    """Run the pipeline for ``spec`` into ``workdir``; see the module docstring. Raises the failing
    stage's ``LnDeployError`` (message prefixed with the stage) after writing the report."""
    options = (options or DeployOptions()).validate()
    if not isinstance(spec, str) or ":" not in spec:
        raise BadInputError(f"model spec {spec!r} must be 'path/to/file.py:NAME' or 'package.module:NAME'")
    from ..serve.repository import check_model_name

    check_model_name(options.name or spec.rpartition(":")[2])
    workdir = _prepare_workdir(Path(workdir))
    t0 = time.perf_counter()
    run = DeployRun(spec, workdir, options)
    rerun = False  # once a stage reruns, every later one does
    error: LnDeployError | None = None
    for stage in STAGES:
        key_fn, fn = _RUN[stage]
        t = time.perf_counter()
        try:
            key = sha256_json({"stage": stage, **key_fn(run)})
            if not rerun and _reuse(run, stage, key):
                continue
            rerun = True
            run.manifest.forget_from(STAGES[STAGES.index(stage):])
            run.manifest.save()
            progress.info(f"[deploy] {stage}...")
            t = time.perf_counter()
            with progress.quieted():
                outcome = fn(run)
            seconds = time.perf_counter() - t
        except LnDeployError as e:
            seconds = time.perf_counter() - t if rerun else 0.0
            run.results.append(StageResult(stage, "failed", seconds, detail=str(e)))
            error = _prefixed(e, f"{stage} failed: ")
            break
        _finish_stage(run, stage, key, outcome, seconds)
        if outcome.status == "failed":
            msg = _check_failure(run.reports.get("check") or {})
            error = CheckFailedError(f"{stage} failed: {msg}; nothing packaged")
            break
    for stage in STAGES[len(run.results):]:
        run.results.append(StageResult(stage, "not run"))
    result = _result(run, error, time.perf_counter() - t0)
    from .html import write_report

    result.report = str(write_report(run, result))
    run.manifest.save()
    if error is not None:
        # the CLI prints the error itself; the report is where the stopped run can be read
        progress.info(f"[deploy] report: {result.report}")
        raise error
    return result


def _reuse(run: DeployRun, stage: str, key: str) -> bool:
    if not run.manifest.fresh(stage, key):
        return False
    rec = run.manifest.get(stage)
    main = run.manifest.path_of(rec["main"]) if rec.get("main") else None
    if main is not None and main.suffix in (".onnx", ".plan"):
        run.artifact[stage] = main
    if stage == "check":
        run.reports["check"] = _read_json(run.path("check") / "report.json")
    if stage == "package":
        run.certificate = _read_json(Path(rec["summary"]["model_dir"]) / "parity.json")
    run.results.append(StageResult(stage, "reused", 0.0, str(main) if main else None,
                                   main.stat().st_size if main else None, "unchanged since the last run"))
    progress.info(f"[deploy] {stage}: unchanged, reused")
    return True


def _finish_stage(run: DeployRun, stage: str, key: str, outcome: Outcome, seconds: float) -> None:
    main = outcome.artifacts[0] if outcome.artifacts else None
    if main is not None and main.suffix in (".onnx", ".plan"):
        run.artifact[stage] = main
    run.results.append(StageResult(stage, outcome.status, seconds, str(main) if main else None,
                                   main.stat().st_size if main and main.is_file() else None, outcome.detail))
    status = "passed" if outcome.status in ("passed", "n/a") else outcome.status
    run.manifest.record(stage, key, status, seconds, outcome.artifacts, outcome.summary)
    run.manifest.save()
    progress.info(f"[deploy] {stage}: {outcome.status} in {seconds:.1f} s" + (f" ({outcome.detail})" if outcome.detail else ""))


def _result(run: DeployRun, error, seconds: float) -> DeployResult:
    packaged = any(r.stage == "package" and r.status in ("passed", "reused") for r in run.results)
    if error is not None:
        verdict = f"FAILED at {next(r.stage for r in run.results if r.status == 'failed')}: {error}"
    elif packaged:
        cert = run.certificate or {}
        verdict = (f"CERTIFIED: {run.name} ({run.options.precision}) packaged in {run.repo / run.name}, "
                   f"parity proven at {len(cert.get('verified_shapes', []))} shape(s)")
    else:
        skipped = next((r for r in run.results if r.status == "skipped"), None)
        verdict = f"CHECKED, NOT PACKAGED: {skipped.detail if skipped else 'nothing to package'}"
    return DeployResult(workdir=str(run.workdir), passed=error is None, packaged=packaged, verdict=verdict,
                        stages=[r.to_dict() for r in run.results],
                        model_dir=str(run.repo / run.name) if packaged else None,
                        certificate=run.certificate, seconds=seconds)


def _prefixed(e: LnDeployError, prefix: str) -> LnDeployError:
    """The same error class and exit code, its message naming the stage."""
    err = LnDeployError(prefix + str(e))
    err.__class__ = type(e)
    err.exit_code = e.exit_code
    return err


def _check_failure(check: dict) -> str:
    fd = check.get("first_divergence")
    if fd:
        return (f"first diverging normalization is {fd.get('module_path')} ({fd.get('module_class')}) on "
                f"{fd.get('runner')}, max abs error {fd.get('stats', {}).get('max_abs', float('nan')):.3g}")
    failures = check.get("failures") or ["parity check failed"]
    return failures[0]


def _prepare_workdir(workdir: Path) -> Path:
    """A new folder, or one an earlier deploy wrote (it holds the manifest): never a folder of the user's."""
    if workdir.exists():
        if not workdir.is_dir():
            raise BadInputError(f"WORKDIR {workdir} exists and is not a directory")
        if any(workdir.iterdir()) and not (workdir / MANIFEST).is_file():
            raise BadInputError(f"WORKDIR {workdir} is not empty and holds no {MANIFEST}: give a new or empty folder")
        return workdir
    # Missing parents are created (`-o out/model` on a fresh clone), as they are for WORKDIR itself;
    # a parent that exists as a file is refused by mkdir below.
    try:
        workdir.mkdir(parents=True)
    except OSError as e:
        raise BadInputError(f"cannot create WORKDIR {workdir}: {e.strerror or type(e).__name__}") from None
    return workdir


def _written_by_us(run: DeployRun, final: Path) -> bool:
    """A model folder this work folder's earlier deploy packaged (its certificate names our manifest)."""
    cert = final / "parity.json"
    if not cert.is_file():
        return False
    try:
        data = json.loads(cert.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("workdir") == str(run.workdir.resolve())


def _write_json(path: Path, data) -> None:
    from ..fileio import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
