"""The public-architecture zoo through every stage: export → fuse (onnx, tensorrt) → convert (fp16, bf16)
→ check (fp32, fp16) → package, and for a subset serve + a tritonclient query.

    python benchmarks/zoo.py [--only NAME ...] [--source SRC] [--jobs 1] [--timeout 900] [--out docs/zoo.md]

Every stage runs the ``ln-deploy`` command line a user would type (``ln_deploy.cli.main``, in-process,
so one model's stages share one Python), with the model's SPEC ``models/zoo.py:NAME``. Each model runs
in its own child process with a timeout, so a native crash or a hang is recorded against the stage it
happened in and the run goes on. A stage's outcome is one of: ``pass``; ``fail`` (the command exited
1 or 2 with its one-line error); ``TRACEBACK`` (an exception escaped the command, or the CLI caught one
as an internal error, exit 3: a bug whatever the input); ``SIGNAL`` (the process died, e.g. SIGSEGV); ``TIMEOUT``; ``skip`` (a stage it needs failed).

The table (model × stage: outcome, seconds, first line of the error) is printed and written to
``--out`` with the machine and the versions.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZOO_FILE = ROOT / "models" / "zoo.py"

# stage -> (the stage it needs, the command; {d} = work dir, {spec} = the SPEC, {name} = the model)
STAGES = {
    "export": (None, ["export", "{spec}", "-o", "{d}/m.onnx"]),
    "fuse": ("export", ["fuse", "{d}/m.onnx", "-o", "{d}/m.fused.onnx", "--target", "onnx", "--opset", "23"]),
    "fuse_trt": ("export", ["fuse", "{d}/m.onnx", "-o", "{d}/m.trt.onnx", "--target", "tensorrt"]),
    "fp16": ("fuse", ["convert", "{d}/m.fused.onnx", "-o", "{d}/m.fp16.onnx", "--precision", "fp16", "--spec", "{spec}"]),
    "bf16": ("fuse", ["convert", "{d}/m.fused.onnx", "-o", "{d}/m.bf16.onnx", "--precision", "bf16", "--spec", "{spec}"]),
    "check32": ("fuse", ["check", "{spec}", "--onnx", "{d}/m.fused.onnx", "--no-plots", "--json"]),
    "check16": ("fp16", ["check", "{spec}", "--onnx", "{d}/m.fp16.onnx", "--no-plots", "--json"]),
    "package": ("fp16", ["package", "{d}/m.fp16.onnx", "--repo", "{d}/repo", "--name", "{name}"]),
}
SERVE_STAGE = "serve"  # needs package; only for SERVED models

# Served and queried with tritonclient: one per source and per norm form, to keep the run short.
SERVED = ("nn_encoder_pre_ln", "nn_ln_lstm_stack", "hf_bert", "hf_llama", "hf_gemma", "timm_convnext", "tv_swin")


def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()[:240]
    return ""


def run_stage(argv: list[str]) -> dict:
    """One ``ln-deploy`` command in this process: its outcome, time and the error's first line."""
    from ln_deploy.cli import main

    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["-q", *argv])
    except SystemExit as e:  # argparse usage errors
        code = e.code if isinstance(e.code, int) else 2
    except BaseException as e:  # escaped the CLI's error handling: a traceback for a user
        return {"status": "TRACEBACK", "seconds": time.perf_counter() - t0,
                "error": f"{type(e).__name__}: {_first_line(str(e)) or '(no message)'}"}
    seconds = time.perf_counter() - t0
    if code == 0:
        return {"status": "pass", "seconds": seconds, "error": ""}
    why = _first_line(err.getvalue())
    if argv[0] == "check" and code == 1:  # the JSON report says which comparison failed
        with contextlib.suppress(ValueError, KeyError, IndexError):
            why = json.loads(out.getvalue())["failures"][0]
    if code == 3 or "Traceback (most recent call last)" in err.getvalue():  # 3: the CLI caught a bug
        return {"status": "TRACEBACK", "seconds": seconds, "error": why}
    return {"status": "fail", "seconds": seconds, "error": f"exit {code}: {why}"}


NORM_OPS = ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
            "SkipSimplifiedLayerNormalization")


def count_norms(path: str) -> int:
    """Normalization operators in a model (standard, ORT contrib or ln_deploy plugin), subgraphs and
    function bodies included: what export produced and fuse made of it."""
    import onnx

    model = onnx.load(path, load_external_data=False)

    def walk(graph):
        n = 0
        for node in graph.node:
            n += node.op_type in NORM_OPS or node.op_type.startswith("LnDeploy")
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    n += walk(attr.g)
                n += sum(walk(g) for g in attr.graphs)
        return n

    return walk(model.graph)


def serve_and_query(name: str, workdir: Path, spec: str) -> dict:
    """``ln-deploy serve REPO`` on a free loopback port, one tritonclient request with the SPEC's example
    inputs; the reply must match PyTorch within the fp16 profile's max-error bound."""
    import re
    import threading

    import numpy as np
    import tritonclient.http as th

    from ln_deploy.spec import load_spec

    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "ln_deploy", "serve", str(workdir / "repo"), "--host", "127.0.0.1", "--port", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines, port = [], None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and port is None:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
            port = int(m.group(1)) if m else None
        if port is None:
            return {"status": "fail", "seconds": time.perf_counter() - t0,
                    "error": "server did not start: " + _first_line("".join(lines[-3:]))}
        threading.Thread(target=lambda: [lines.append(x) for x in proc.stderr], daemon=True).start()
        loaded = load_spec(spec)
        import torch

        with torch.no_grad():
            ref = loaded.module(*loaded.example_inputs)
        client = th.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=30, network_timeout=120)
        meta = client.get_model_metadata(name)
        inputs = []
        for spec_in, t in zip(meta["inputs"], loaded.example_inputs):
            arr = t.numpy()
            arr = arr.astype(np.float32) if arr.dtype == np.float32 else arr.astype(_np_dtype(spec_in["datatype"]))
            x = th.InferInput(spec_in["name"], list(arr.shape), spec_in["datatype"])
            x.set_data_from_numpy(arr)
            inputs.append(x)
        reply = client.infer(name, inputs)
        got = reply.as_numpy(meta["outputs"][0]["name"]).astype(np.float64)
        want = ref.detach().double().numpy()
        if got.shape != want.shape:
            return {"status": "fail", "seconds": time.perf_counter() - t0,
                    "error": f"served shape {list(got.shape)} != PyTorch {list(want.shape)}"}
        err = float(np.max(np.abs(got - want)))
        bound = 2e-2 * max(1.0, float(np.max(np.abs(want))))  # fp16: check16 holds the precise bound
        status = "pass" if err <= bound else "fail"
        return {"status": status, "seconds": time.perf_counter() - t0,
                "error": "" if status == "pass" else f"served max |err| {err:.3g} > {bound:.3g}",
                "max_abs": err}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _np_dtype(triton_type: str):
    import numpy as np

    return {"INT64": np.int64, "INT32": np.int32, "FP32": np.float32, "FP16": np.float16, "BOOL": np.bool_}[triton_type]


def run_pipeline(name: str, workdir: Path, *, serve: bool = False, record=None, stages=None) -> dict:
    """Every stage for one zoo model in this process; ``record(stage, result)`` after each (a ``None``
    result before it starts, so a crash can be pinned on the stage that was running)."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec = f"{ZOO_FILE}:{name}"
    results: dict[str, dict] = {}
    wanted = list(stages or STAGES) + ([SERVE_STAGE] if serve else [])
    for stage in wanted:
        need = "package" if stage == SERVE_STAGE else STAGES[stage][0]
        if need is not None and results.get(need, {}).get("status") != "pass":
            res = {"status": "skip", "seconds": 0.0, "error": f"needs {need}"}
        else:
            if record:
                record(stage, None)
            if stage == SERVE_STAGE:
                try:
                    res = serve_and_query(name, workdir, spec)
                except Exception as e:  # the zoo's own client side: recorded, not fatal
                    res = {"status": "fail", "seconds": 0.0, "error": f"{type(e).__name__}: {_first_line(str(e))}"}
            else:
                argv = [a.format(d=workdir, spec=spec, name=name) for a in STAGES[stage][1]]
                res = run_stage(argv)
                if res["status"] == "pass" and stage in ("export", "fuse", "fuse_trt"):
                    res["norms"] = count_norms(argv[argv.index("-o") + 1])
        results[stage] = res
        if record:
            record(stage, res)
    return results


def _child(name: str, workdir: str, journal: str, serve: bool) -> int:
    """Run one model's pipeline, appending each stage's start and result to ``journal`` (JSON lines)."""
    import warnings

    warnings.filterwarnings("ignore")
    with open(journal, "a", buffering=1) as f:
        def record(stage, res):
            f.write(json.dumps({"stage": stage, "result": res}) + "\n")
            f.flush()
            os.fsync(f.fileno())

        run_pipeline(name, Path(workdir), serve=serve, record=record)
    return 0


def run_isolated(name: str, workdir: Path, *, serve: bool, timeout: float) -> tuple[dict, float]:
    """``run_pipeline`` in a child process; a signal or a timeout is charged to the running stage."""
    journal = workdir / "journal.jsonl"
    if journal.exists():  # this script's folder from an earlier run: start clean (package refuses to overwrite)
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    journal.write_text("")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--workdir", str(workdir),
           "--journal", str(journal)] + (["--serve"] if serve else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
        died = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        died = "timeout"
    results, running = {}, None
    for line in journal.read_text().splitlines():
        entry = json.loads(line)
        if entry["result"] is None:
            running = entry["stage"]
        else:
            results[entry["stage"]] = entry["result"]
            running = None
    if died != 0:
        if died == "timeout":
            res = {"status": "TIMEOUT", "seconds": timeout, "error": f"no result after {timeout:.0f} s"}
        elif isinstance(died, int) and died < 0:
            res = {"status": "SIGNAL", "seconds": 0.0, "error": signal.Signals(-died).name}
        else:
            res = {"status": "TRACEBACK", "seconds": 0.0, "error": f"exit {died}: {_first_line(stderr[-2000:])}"}
        results[running or "export"] = res
    return results, time.perf_counter() - t0


def versions() -> dict:
    import importlib.metadata as md

    sys.path.insert(0, str(ROOT / "models"))
    import zoo

    zoo.add_zoo_packages()
    out = {}
    for pkg in ("torch", "onnx", "onnxruntime", "onnxscript", "polygraphy", "transformers", "timm", "torchvision"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f", {kb / 2**20:.0f} GiB"
    return f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def _cell(res: dict | None) -> str:
    if res is None:
        return "-"
    s = res["status"]
    if s == "pass":
        return f"pass {res['seconds']:.1f}s" + (f" ({res['norms']})" if "norms" in res else "")
    if s == "skip":
        return "skip"
    return f"**{s}** {res['seconds']:.1f}s"


def table(rows: list[tuple], served: set) -> str:
    stages = list(STAGES) + [SERVE_STAGE]
    head = "| model | source | norm | " + " | ".join(stages) + " |"
    lines = [head, "|" + "---|" * (len(stages) + 3)]
    errors = []
    for arch, results, _ in rows:
        cells = [_cell(results.get(s)) if (s != SERVE_STAGE or arch.name in served) else "" for s in stages]
        lines.append(f"| {arch.name} | {arch.source} | {arch.norm} | " + " | ".join(cells) + " |")
        for s in stages:
            r = results.get(s)
            if r and r["status"] not in ("pass", "skip"):
                errors.append(f"- `{arch.name}` {s}: {r['status']}: {r['error'].replace('|', '/')}")
    note = ["", "(n) after export/fuse/fuse_trt: normalization operators in the graph (LayerNormalization, "
            "RMSNormalization, ln_deploy's LnDeploy* plugin ops)."]
    return "\n".join(lines + note + ([""] + ["Errors (first line):", ""] + errors if errors else []))


def summary(rows: list[tuple]) -> str:
    by_source: dict[str, list[int]] = {}
    bad = 0
    for arch, results, _ in rows:
        ok = all(r["status"] == "pass" for r in results.values()) and set(STAGES) <= set(results)
        counts = by_source.setdefault(arch.source, [0, 0])
        counts[0] += ok
        counts[1] += 1
        bad += any(r["status"] in ("TRACEBACK", "SIGNAL", "TIMEOUT") for r in results.values())
    total = sum(c[0] for c in by_source.values())
    parts = ", ".join(f"{src} {c[0]}/{c[1]}" for src, c in by_source.items())
    return (f"{total}/{len(rows)} architectures pass every stage ({parts}); "
            f"{bad} with a traceback, signal or timeout")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", metavar="NAME", help="these zoo models only")
    ap.add_argument("--source", help="models of this source only (torch.nn, transformers, timm, torchvision)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per model (default 600)")
    ap.add_argument("--jobs", type=int, default=1, help="models run at once (default 1)")
    ap.add_argument("--out", help="write the table to this Markdown file (between the zoo-table markers)")
    ap.add_argument("--workdir", help="keep the models' files here (default: a temporary folder)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--journal", help=argparse.SUPPRESS)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args.child, args.workdir, args.journal, args.serve)

    sys.path.insert(0, str(ROOT / "models"))
    import zoo

    archs = [a for a in zoo.ZOO if (not args.only or a.name in args.only) and (not args.source or a.source == args.source)]
    unknown = set(args.only or ()) - {a.name for a in zoo.ZOO}
    if unknown or not archs:
        print(f"zoo: unknown model(s) {sorted(unknown)}" if unknown else "zoo: no model selected", file=sys.stderr)
        return 2
    missing = [a for a in archs if not zoo.available(a)]
    for a in missing:
        print(f"zoo: skipping {a.name}: {a.package} is not installed (scripts/install_zoo_packages.sh)", file=sys.stderr)
    archs = [a for a in archs if a not in missing]
    ver = versions()
    print(f"zoo: {len(archs)} models; {machine()}; " + ", ".join(f"{k} {v}" for k, v in ver.items()), flush=True)

    from concurrent.futures import ThreadPoolExecutor

    with tempfile.TemporaryDirectory(prefix="ln_zoo_") as tmp:
        base = Path(args.workdir or tmp)
        t_start = time.perf_counter()

        def one(arch):
            results, secs = run_isolated(arch.name, base / arch.name, serve=arch.name in SERVED, timeout=args.timeout)
            bad = [f"{s}: {r['status']} {r['error'][:120]}" for s, r in results.items() if r["status"] not in ("pass", "skip")]
            print(f"  {arch.name:28s} {secs:6.1f}s  " + ("all pass" if not bad else "; ".join(bad)), flush=True)
            return arch, results, secs

        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            rows = list(pool.map(one, archs))
        wall = time.perf_counter() - t_start

    text = table(rows, set(SERVED))
    line = summary(rows)
    print()
    print(text)
    print()
    print(line + f"; {wall:.0f} s in all")
    if args.out:
        header = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}; "
                  + ", ".join(f"{k} {v}" for k, v in ver.items())
                  + f". `python benchmarks/zoo.py{' ' + ' '.join(argv or sys.argv[1:]) if (argv or sys.argv[1:]) else ''}`"
                  f", {wall:.0f} s wall.\n\n{line}.\n\n")
        _write_between_markers(Path(args.out), header + text + "\n")
    return 0


MARK_BEGIN, MARK_END = "<!-- zoo-table:begin -->", "<!-- zoo-table:end -->"


def _write_between_markers(path: Path, body: str) -> None:
    """Replace the text between the zoo-table markers (the rest of the document is written by hand)."""
    old = path.read_text() if path.exists() else f"# The public-architecture zoo\n\n{MARK_BEGIN}\n{MARK_END}\n"
    if MARK_BEGIN not in old or MARK_END not in old:
        old = old.rstrip("\n") + f"\n\n{MARK_BEGIN}\n{MARK_END}\n"
    pre, rest = old.split(MARK_BEGIN, 1)
    _, post = rest.split(MARK_END, 1)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pre}{MARK_BEGIN}\n{body}{MARK_END}{post}")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
