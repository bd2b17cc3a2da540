"""Export every bundled model and check it against ONNX Runtime on the CPU (the README's first command)."""

from __future__ import annotations

import time
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--out", default="out/demo", metavar="DIR", help="where models and reports go (default out/demo)")
    p.add_argument("--models", nargs="*", metavar="NAME", help="only these bundled models (default: all)")
    p.add_argument("--no-check", action="store_true", help="export only")
    p.add_argument("--verbose", action="store_true", help="show every stage's progress, not one line per model")


def run(args) -> int:
    from . import progress
    from .errors import BadInputError
    from .export import export_model
    from .spec import load_spec

    catalog = _catalog()
    names = args.models or list(catalog.BUNDLED)
    unknown = [n for n in names if n not in catalog.BUNDLED]
    if unknown:
        raise BadInputError(f"unknown bundled model(s) {', '.join(unknown)}; known: {', '.join(catalog.BUNDLED)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, failed = [], 0
    from .check.localise import norm_modules

    for i, name in enumerate(names, 1):
        spec = catalog.spec_path(catalog.BUNDLED[name])
        progress.info(f"[{i}/{len(names)}] {name}: exporting" + ("" if args.no_check else " and checking"))
        t0 = time.perf_counter()
        with progress.quieted(not args.verbose):
            loaded = load_spec(spec)
            res = export_model(loaded, out / f"{name}.onnx")
        t_export = time.perf_counter() - t0
        verdict, detail = "exported", f"ORT vs PyTorch max abs err {res.max_abs_error:.1e}"
        if not args.no_check:
            from .check import check_model

            with progress.quieted(not args.verbose):
                report = check_model(loaded, res.path, report_dir=out / f"{name}.check")
            verdict = "PASS" if report.passed else "FAIL"
            failed += not report.passed
            detail = report.summary_line().split(": ", 1)[-1]  # the table already names the model
        paths = list(norm_modules(loaded.module))
        # a norm module nested in another (ConvNeXt's LayerNorm2d wraps an nn.LayerNorm) counts once
        outer = [p for p in paths if not any(p.startswith(q + ".") for q in paths)]
        rows.append((name, res.node_count, len(outer), res.norm_count,
                     f"{t_export:.1f}s", verdict, detail))
    _print_table(rows)
    print(f"\n{len(rows) - failed}/{len(rows)} bundled models passed; models and reports in {out}/")
    return 1 if failed else 0


def _catalog():
    """models/catalog.py from the source tree (the bundled models are not part of the wheel)."""
    import importlib.util
    import sys

    from .errors import BadInputError

    root = Path(__file__).resolve().parents[1]
    path = root / "models" / "catalog.py"
    if not path.exists():
        raise BadInputError(f"bundled models not found at {path.parent} (run from a source checkout)")
    spec = importlib.util.spec_from_file_location("_ln_deploy_catalog", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _print_table(rows) -> None:
    # norm modules: normalization modules in the PyTorch model; norm ops: single normalization ops in
    # the export (0 where the exporter spelled them out, e.g. RMSNorm below opset 23: `ln-deploy fuse`)
    head = ("model", "nodes", "norm modules", "norm ops", "export", "check", "detail")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head) - 1)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    print(fmt.format(*head))
    for r in rows:
        print(fmt.format(*r))
