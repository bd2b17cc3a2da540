"""The result of a check: ``CheckReport`` (JSON, Markdown with error-distribution plots, a console table
and a one-line summary)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path


def _loop_where(entry) -> str:
    """For a normalization inside a Scan/Loop body: where, and which iteration."""
    if not entry.get("onnx_loop"):
        return ""
    return f" (body of `{' > '.join(entry['onnx_loop'])}`, iteration {entry['iteration']})"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if math.isnan(v):
            return "nan"
        return f"{v:.2e}" if (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.4g}"
    return str(v)


@dataclass
class CheckReport:
    """The result of ``check_model``; ``to_dict()`` (report.json) holds every field below by its name.

    - ``spec``: the SPEC checked; ``onnx``: the ONNX model's path; ``engine``: the TensorRT engine's, or None;
    - ``precision``: the deployed precision (selects the tolerances); ``reference``: the reference runner;
    - ``passed``: the verdict (no failure);
    - ``tolerances``: the tolerance profile; ``inputs``: {source, feeds, seed, shapes} of the compared feeds;
    - ``runners``: {name, role, status, reason?, ...} per runner;
    - ``comparisons``: {runner, reference, passed, outputs: {name: {passed, stats, checks, iterations}}};
    - ``first_divergence``: the first normalization beyond tolerance ({runner, module_path, ...}), or None;
    - ``localisation``: {runner: {"norms": [...], "notes": [...]}};
    - ``invariance``: ``InvarianceResult.to_dict()`` per check and runtime;
    - ``shapes``: every shape run: {case, label, size, runner, passed, max_abs, problem, inputs, outputs};
    - ``failures``: one line each; ``notes``: one line each;
    - ``timings_s``: runner -> phase -> seconds; ``total_s``: seconds in ``check_model``.

    ``to_dict()`` adds ``verified_shapes``, derived from ``shapes``: {inputs, outputs, passed, max_abs,
    runner} per shape run and compared (deploy's certificate records them).
    """

    spec: str
    onnx: str
    precision: str
    passed: bool = False
    engine: str | None = None
    reference: str = "pytorch-fp32"
    tolerances: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    runners: list = field(default_factory=list)  # {name, role, status, reason?, seconds}
    comparisons: list = field(default_factory=list)  # {runner, reference, passed, outputs: {name: {...}}}
    first_divergence: dict | None = None
    localisation: dict = field(default_factory=dict)  # {runner: {"norms": [...], "notes": [...]}}
    invariance: list = field(default_factory=list)  # InvarianceResult.to_dict()
    shapes: list = field(default_factory=list)  # every shape run: {case, label, size, runner, passed, max_abs, problem}
    failures: list = field(default_factory=list)  # one line each
    notes: list = field(default_factory=list)
    timings_s: dict = field(default_factory=dict)  # runner -> phase -> seconds
    total_s: float = 0.0
    # Raw arrays for plots (not serialized): {output: {runner: abs-error array}}
    _errors: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ machine-readable
    def to_dict(self) -> dict:
        """report.json: every field of the class docstring by its name, plus ``verified_shapes``."""
        return {
            "passed": self.passed,
            "spec": self.spec,
            "onnx": self.onnx,
            "engine": self.engine,
            "precision": self.precision,
            "reference": self.reference,
            "tolerances": self.tolerances,
            "inputs": self.inputs,
            "runners": self.runners,
            "comparisons": self.comparisons,
            "first_divergence": self.first_divergence,
            "localisation": self.localisation,
            "invariance": self.invariance,
            "shapes": self.shapes,
            # one entry per shape run and compared (deploy's certificate records them)
            "verified_shapes": [{"inputs": r.get("inputs", {}), "outputs": r.get("outputs", {}), "passed": r["passed"],
                                 "max_abs": r["max_abs"], "runner": r["runner"]}
                                for r in self.shapes if r["passed"] is not None],
            "failures": self.failures,
            "notes": self.notes,
            "timings_s": self.timings_s,
            "total_s": round(self.total_s, 3),
        }

    def to_json(self) -> dict:
        """Deprecated name of :meth:`to_dict` (the same dict, not a string), kept while ``check/cli.py``
        and tests call it."""
        return self.to_dict()

    # ------------------------------------------------------------------ human-readable
    def summary_line(self) -> str:
        """One line: verdict, worst error per deployed runtime, invariance tally, what was skipped."""
        name = Path(self.spec.rpartition(":")[2] or self.spec).name
        parts = [f"{name}: {'PASS' if self.passed else 'FAIL'} ({self.precision})"]
        for comp in self.comparisons:
            worst = max((o["stats"].get("max_abs", float("nan")) for o in comp["outputs"].values()), default=0.0)
            parts.append(f"{comp['runner']} max|err| {_fmt(worst)}")
        inv = [r for r in self.invariance if r["status"] != "skipped"]
        if inv:
            ok = sum(r["status"] == "passed" for r in inv)
            parts.append(f"invariance {ok}/{len(inv)}")
        for r in self.runners:
            if r["status"] == "skipped":
                parts.append(f"{r['name']} skipped ({r['reason']})")
        if self.first_divergence:
            fd = self.first_divergence
            parts.append(f"first divergence: {fd['module_path']} on {fd['runner']}")
        elif self.failures:
            parts.append(self.failures[0])
        return " | ".join(parts)

    def console_table(self) -> str:
        rows = [("runtime", "output", "max|err|", "p99|err|", "max rel", "tolerance", "result")]
        for comp in self.comparisons:
            for out, o in comp["outputs"].items():
                s = o["stats"]
                tol = "; ".join(f"{c['stat']} a{_fmt(c['atol'])} r{_fmt(c['rtol'])}" for c in o["checks"])
                rows.append((comp["runner"], out, _fmt(s.get("max_abs")), _fmt(s.get("p99_abs")),
                             _fmt(s.get("max_rel")), tol, "pass" if o["passed"] else "FAIL"))
        for r in self.runners:
            if r["status"] == "skipped":
                rows.append((r["name"], "-", "-", "-", "-", "-", f"skipped: {r['reason']}"))
        lines = _table(rows)
        inv_rows = [("invariance", "runtime", "result", "detail")]
        for r in self.invariance:
            inv_rows.append((r["check"], r["runtime"], r["status"].upper() if r["status"] == "failed" else r["status"],
                             r["message"][:110]))
        lines += [""] + _table(inv_rows)
        swept = [r for r in self.shapes if r.get("size") is not None]
        if swept:
            bad = [r for r in swept if r["passed"] is False]
            skipped = [r for r in swept if r["passed"] is None]
            lines += ["", f"shapes: {len(swept)} run along the dynamic axes ("
                          + "; ".join(sorted({f"{r['label']}={r['size']}" for r in swept},
                                             key=lambda x: (x.split('=')[0], int(x.split('=')[1]))))
                          + ")" + (f", {len(bad)} FAILED" if bad else ", all pass")
                          + (f", {len(skipped)} outside the PyTorch model's own domain (skipped)" if skipped else "")]
        elif self.shapes:
            lines += ["", "shapes: the graph has no dynamic axis; the example shape only"]
        lines += ["", self.localisation_line()]
        if self.first_divergence:
            fd = self.first_divergence
            lines += [f"first divergence ({fd['runner']}): {fd['module_path']} [{fd['module_class']}] "
                      f"max|err| {_fmt(fd['stats'].get('max_abs'))}, p99 {_fmt(fd['stats'].get('p99_abs'))}"]
        lines += ["", ("PASSED" if self.passed else "FAILED") + f"  ({self.total_s:.1f} s)"]
        for f in self.failures:
            lines.append(f"  - {f}")
        return "\n".join(lines)

    def localisation_line(self) -> str:
        """What localisation compared, plainly: never "no normalization diverges" when nothing was compared."""
        if not self.localisation:
            return "localisation: not run"
        compared = {r: len(loc.get("norms", [])) for r, loc in self.localisation.items()}
        if not any(compared.values()):
            why = next((n for loc in self.localisation.values() for n in loc.get("notes", [])), "")
            why = why.removeprefix("localisation compared nothing: ").removeprefix("localisation compared nothing")
            return "localisation compared nothing" + (f": {why}" if why else "")
        done = ", ".join(f"{n} normalization output(s) on {r}" for r, n in compared.items() if n)
        if self.first_divergence:
            return f"localisation: compared {done}"
        return f"localisation: compared {done}; none diverges beyond tolerance"

    def to_markdown(self, plots: dict | None = None) -> str:
        md = [f"# ln-deploy check: {'PASSED' if self.passed else 'FAILED'}", "",
              f"- model: `{self.spec}`", f"- ONNX: `{self.onnx}`"]
        if self.engine:
            md.append(f"- engine: `{self.engine}`")
        md += [f"- deployed precision: {self.precision}; reference: PyTorch fp32",
               f"- inputs: {self.inputs.get('source')} ({self.inputs.get('feeds')} feed(s), seed {self.inputs.get('seed')})",
               f"- total time: {self.total_s:.1f} s", ""]
        if self.failures:
            md += ["## Failures", ""] + [f"- {f}" for f in self.failures] + [""]
        md += ["## Runners", "", "| runner | role | status | time (s) |", "|---|---|---|---|"]
        for r in self.runners:
            status = r["status"] + (f": {r['reason']}" if r.get("reason") else "")
            md.append(f"| {r['name']} | {r['role']} | {status} | {sum(self.timings_s.get(r['name'], {}).values()):.2f} |")
        md += ["", "## Output parity (against PyTorch fp32)", "",
               "| runtime | output | max abs | p99 abs | mean abs | max rel | checks | result |",
               "|---|---|---|---|---|---|---|---|"]
        for comp in self.comparisons:
            for out, o in comp["outputs"].items():
                s = o["stats"]
                checks = ", ".join(f"{c['stat']} (atol {_fmt(c['atol'])}, rtol {_fmt(c['rtol'])})" for c in o["checks"])
                md.append(f"| {comp['runner']} | {out} | {_fmt(s.get('max_abs'))} | {_fmt(s.get('p99_abs'))} | "
                          f"{_fmt(s.get('mean_abs'))} | {_fmt(s.get('max_rel'))} | {checks} | "
                          f"{'pass' if o['passed'] else '**FAIL**'} |")
        if plots:
            md += ["", "### Error distributions", ""]
            for out, fname in plots.items():
                md.append(f"![{out}]({fname})")
        md += ["", "## Localisation (normalization outputs)", ""]
        if self.first_divergence:
            fd = self.first_divergence
            md.append(f"**First divergence** on {fd['runner']}: `{fd['module_path']}` ({fd['module_class']}), "
                      f"call {fd['call']}, ONNX value `{fd['onnx_value']}`{_loop_where(fd)} — "
                      f"max abs {_fmt(fd['stats'].get('max_abs'))}, "
                      f"p99 abs {_fmt(fd['stats'].get('p99_abs'))}, max rel {_fmt(fd['stats'].get('max_rel'))}.")
        else:
            md.append(self.localisation_line()[0].upper() + self.localisation_line()[1:] + ".")
        for runner, loc in self.localisation.items():
            md += ["", f"### {runner}", "", "| # | module | class | ONNX ops | max abs | result |", "|---|---|---|---|---|---|"]
            for i, n in enumerate(loc.get("norms", [])):
                md.append(f"| {i} | `{n['key']}` | {n['module_class']} | {', '.join(n['onnx_ops'])} | "
                          f"{_fmt(n['stats'].get('max_abs'))} | {'pass' if n['passed'] else '**FAIL**'} |")
            for note in loc.get("notes", []):
                md.append(f"\n- note: {note}")
        md += ["", "## Shapes run", "", "Every dynamic axis of the graph at 1, the example's size, twice it and a "
               "prime above it (capped at the exporter's recorded maximum), PyTorch fp32 against each runtime.", "",
               "| shape | runtime | max abs | result |", "|---|---|---|---|"]
        for r in self.shapes:
            result = r.get("note") or ("pass" if r["passed"] else f"**FAIL**: {r['problem']}")
            md.append(f"| {r['case']} | {r['runner']} | {_fmt(r.get('max_abs'))} | {result} |")
        md += ["", "## Invariance", "", "| check | runtime | result | detail |", "|---|---|---|---|"]
        for r in self.invariance:
            md.append(f"| {r['check']} | {r['runtime']} | {r['status']} | {r['message']} |")
        if self.notes:
            md += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(md) + "\n"

    # ------------------------------------------------------------------ files
    def write(self, report_dir, run_results=None, plots: bool = True) -> Path:
        """Write report.json, report.md, one PNG per output and Polygraphy's run_results.json.

        Files are written to a temporary folder beside ``report_dir`` and moved in at the end, so a
        failure leaves no partial report."""
        from ..fileio import atomic_folder  # renamed whole into place; the umask's modes

        target = Path(report_dir)
        with atomic_folder(target) as tmp:
            plot_files = self._plots(tmp) if plots else {}
            (tmp / "report.json").write_text(json.dumps(self.to_dict(), indent=2, default=_json_default))
            (tmp / "report.md").write_text(self.to_markdown(plot_files))
            if run_results is not None:
                run_results.save(str(tmp / "run_results.json"))
        return target

    def _plots(self, folder: Path) -> dict:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            import numpy as np
        except ImportError:
            self.notes.append("matplotlib is not installed: no error plots (pip install 'ln_deploy[report]')")
            return {}
        files = {}
        for out, per_runner in self._errors.items():
            fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
            for runner, err in per_runner.items():
                err = np.asarray(err, dtype=np.float64).ravel()
                err = err[np.isfinite(err)]
                floor = 1e-12
                ax.hist(np.log10(np.maximum(err, floor)), bins=60, histtype="step", label=runner)
            for comp in self.comparisons:
                o = comp["outputs"].get(out)
                if o:
                    for c in o["checks"]:
                        if c["atol"] > 0:
                            ax.axvline(math.log10(c["atol"]), linestyle="--", linewidth=0.8, color="gray")
                    break
            ax.set_xlabel("log10 |output - PyTorch fp32|  (dashed: atol)")
            ax.set_ylabel("elements")
            ax.set_title(f"error distribution: {out}")
            ax.legend(fontsize=8)
            fig.tight_layout()
            fname = "error_" + "".join(c if c.isalnum() or c in "._-" else "_" for c in out) + ".png"
            fig.savefig(folder / fname)
            plt.close(fig)
            files[out] = fname
        return files


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    return str(o)


def _table(rows) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return out
