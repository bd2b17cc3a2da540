"""fp16 conversion side by side: ln_deploy against the other converters, on 14 small models.

    python benchmarks/compare_precision.py [--only MODEL ...] [--tools TOOL ...] [--out docs/precision.md]
        [--modelopt-python /work/modelopt-venv/bin/python] [--work DIR]

Models: PyTorch's nn.TransformerEncoder (pre- and post-norm) and an nn.MultiheadAttention block
(tests/convert/precision_models.py), the bundled encoder / RMS decoder block / ConvNeXt block (models/),
tiny BERT, GPT-2, T5 encoder and LLaMA from transformers configs with random weights (tests/hf_specs.py),
and three activation-overflow blocks (below). Each is exported once to fp32 ONNX by ``ln_deploy.export``.

Tools, each given that same fp32 ONNX file:
  ln_deploy      ``ln_deploy.pipeline_steps.convert_model(path, "fp16", spec=SPEC)`` (default target ort-cpu;
                 fuses first, calibrates on the spec's example inputs)
  occ            onnxconverter-common ``float16.convert_float_to_float16(model)`` (its defaults: fp16 I/O)
  occ-block      the same with ``keep_io_types=True`` and its DEFAULT_OP_BLOCK_LIST plus the normalization
                 ops (LayerNormalization, RMSNormalization, ReduceMean, Pow, Sqrt, Reciprocal)
  ort-fp16       ``onnxruntime.transformers.float16.convert_float_to_float16(model, keep_io_types=True)``
                 (what ``optimizer``'s ``OnnxModel.convert_float_to_float16`` calls)
  modelopt       NVIDIA ModelOpt AutoCast (``python -m modelopt.onnx.autocast``, fp16, keep I/O types),
                 run as a subprocess of ``--modelopt-python`` (its own venv: it needs onnx 1.21 and
                 onnxruntime-gpu, which the project's venv cannot hold); skipped if absent

Each tool's output is measured in a child process (a native crash is recorded, the run goes on):
  strict    the strict low-precision CPU reference (``ln_deploy.lowp_emulation.strict_emulation``, run
            unoptimised: every op rounded to its declared type, fp32 accumulation, as a strongly typed
            GPU engine computes) against the fp32 PyTorch output: max |err| and rel = max |err| / max |ref|,
            over every output and every batch, on ``--batches`` fresh seeded batches of the spec's input
            shapes (not the calibration inputs; every tool sees the same batches), and the mean |err|.
            This is the definition ``ln-deploy check`` and ``convert`` use for fp16/bf16 graphs.
            Several batches because the max over one batch is a noisy statistic: on T5 the single batch
            used before ranked ln_deploy 0.0034 against the anchors' 0.0032 while over 20 batches it
            had the smaller max on 18 and a lower mean error; and a block at the edge of fp16's range
            (overflow_residual) overflows on some batches only.
  all       ``ln_deploy.ort.probe_session`` at ORT_ENABLE_ALL (the default level of ORT, ``serve``
            and Triton's onnxruntime backend): ok, ``crash (SIGSEGV)`` or ORT's refusal.
  ort       the graph run on ORT's CPU provider through ``ln_deploy.ort.open_deployable`` (the known
            crashing optimizer disabled where the probe shows the crash): max |err| there. ORT CPU
            computes most fp16 ops in fp32, so this can hide an overflow ``strict`` shows.
  casts     Cast nodes in the output (main graph and subgraphs), and how many the tool inserted
            (output minus the fp32 export's own).
  fp16      share of the non-Cast nodes with an fp16 float output (after shape inference).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
THIS = Path(__file__).resolve()
PM = ROOT / "tests" / "convert" / "precision_models.py"
HF = ROOT / "tests" / "hf_specs.py"

MODELS = {
    "nn_encoder_pre": f"{PM}:transformer_encoder_pre",
    "nn_encoder_post": f"{PM}:transformer_encoder_post",
    "nn_mha_block": f"{PM}:mha_block",
    "pre_ln_encoder": f"{ROOT}/models/transformer.py:pre_ln_encoder",
    "post_ln_encoder": f"{ROOT}/models/transformer.py:post_ln_encoder",
    "rms_decoder_block": f"{ROOT}/models/llama.py:rms_decoder_block",
    "convnext_block": f"{ROOT}/models/convnext.py:convnext_block",
    "hf_bert": f"{HF}:bert",
    "hf_gpt2": f"{HF}:gpt2",
    "hf_t5": f"{HF}:t5",
    "hf_llama": f"{HF}:llama",
    "overflow_rms": f"{PM}:overflow_rms_block",
    "overflow_residual": f"{THIS}:overflow_residual_block",
    "overflow_softmax": f"{THIS}:overflow_softmax_block",
}
TOOLS = ("ln_deploy", "occ", "occ-block", "ort-fp16", "modelopt")
NORM_OPS = ["LayerNormalization", "RMSNormalization", "ReduceMean", "Pow", "Sqrt", "Reciprocal"]
DEFAULT_MODELOPT_PY = "/work/modelopt-venv/bin/python"


# --------------------------------------------------------------------------- the overflow blocks (SPECs)

def _torch():
    import torch
    from torch import nn

    return torch, nn


def overflow_residual_block():
    """A residual stream at the edge of fp16's 65504 (max |h| 5.5e4-7e4 per batch of N(0,1) inputs:
    some batches overflow, some not), then nn.LayerNorm and a Linear: the residual Add and the norm's
    input must stay fp32; the normalized output is fp16-safe."""
    torch, nn = _torch()

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.Linear(32, 32)
            self.norm = nn.LayerNorm(32)
            self.out = nn.Linear(32, 32)

        def forward(self, x):
            h = 20000.0 * x + 2000.0 * self.up(x)
            return self.out(self.norm(h))

    torch.manual_seed(0)
    return Block().eval(), (torch.randn(2, 8, 32),)


def overflow_softmax_block():
    """A hand-written softmax with no max subtraction (exp of logits up to ~25 passes 65504 from
    11.09): exp and its sum overflow in fp16; in fp32 the ratio is fine."""
    torch, nn = _torch()

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(32, 32)
            self.out = nn.Linear(32, 32)

        def forward(self, x):
            s = 4.0 * self.q(x)
            e = torch.exp(s)
            return self.out(e / e.sum(-1, keepdim=True))

    torch.manual_seed(0)
    return Block().eval(), (torch.randn(2, 8, 32),)


# --------------------------------------------------------------------------- converters

def convert(tool: str, src: Path, dst: Path, spec: str, modelopt_py: str | None) -> str:
    """Write ``dst``; returns '' or a one-line reason it was not written."""
    import onnx

    if tool == "ln_deploy":
        from ln_deploy import progress
        from ln_deploy.pipeline_steps import convert_model

        progress.set_quiet(True)
        model, _report = convert_model(str(src), "fp16", spec=spec)
        onnx.save(model, dst)
        return ""
    if tool in ("occ", "occ-block"):
        from onnxconverter_common import float16

        m = onnx.load(src)
        if tool == "occ":
            out = float16.convert_float_to_float16(m)
        else:
            out = float16.convert_float_to_float16(m, keep_io_types=True,
                                                   op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + NORM_OPS)
        onnx.save(out, dst)
        return ""
    if tool == "ort-fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        out = convert_float_to_float16(onnx.load(src), keep_io_types=True)
        onnx.save(out, dst)
        return ""
    if tool == "modelopt":
        if not modelopt_py or not Path(modelopt_py).exists():
            return "not installed"
        cmd = [modelopt_py, "-m", "modelopt.onnx.autocast", "--onnx_path", str(src), "--output_path", str(dst),
               "--low_precision_type", "fp16", "--keep_io_types"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        if r.returncode != 0 or not dst.exists():
            lines = [ln for ln in (r.stderr + r.stdout).strip().splitlines() if ln.strip()]
            why = f"signal {-r.returncode}" if r.returncode < 0 else f"exit {r.returncode}"
            return f"{why}: {lines[-1][:160] if lines else ''}"
        return ""
    raise ValueError(tool)


# --------------------------------------------------------------------------- graph figures

def _all_nodes(g):
    for n in g.node:
        yield n
        for a in n.attribute:
            if a.g is not None and a.g.node:
                yield from _all_nodes(a.g)
            for sg in a.graphs:
                yield from _all_nodes(sg)


def casts(model) -> int:
    return sum(n.op_type == "Cast" for n in _all_nodes(model.graph))


def fp16_share(model) -> float | None:
    import onnx

    try:
        m = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - a graph shape inference refuses: no share
        return None
    g = m.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
    n_float = n_low = 0
    for n in g.node:
        if n.op_type == "Cast":
            continue
        ts = [types.get(o) for o in n.output if types.get(o) in floats]
        if not ts:
            continue
        n_float += 1
        n_low += any(t == onnx.TensorProto.FLOAT16 for t in ts)
    return n_low / n_float if n_float else None


# --------------------------------------------------------------------------- the child measurement

def measure_child() -> None:
    """argv: --measure MODEL.onnx DATA.npz. Prints one JSON line per stage as it finishes."""
    import numpy as np
    import onnx

    from ln_deploy import ort as ln_ort
    from ln_deploy.lowp_emulation import strict_emulation

    path, data = sys.argv[2], np.load(sys.argv[3])
    model = onnx.load(path)
    n_batches = len({k.split("_")[0] for k in data.files})
    batches = []
    for b in range(n_batches):
        keys = [k.split("_", 1)[1] for k in data.files if k.startswith(f"b{b}_")]
        batches.append(([data[f"b{b}_in{i}"] for i in range(sum(k.startswith("in") for k in keys))],
                        [data[f"b{b}_ref{i}"] for i in range(sum(k.startswith("ref") for k in keys))]))

    def run_all(sess):
        """Errors over every batch: max |err|, max rel, mean |err|, any non-finite; abs0 = batch 0's max."""
        per = []
        for inputs, refs in batches:
            per.append(errors(sess.run(None, feeds(sess, inputs)), refs))
        return {"abs": max(p["abs"] for p in per), "rel": max(p["rel"] for p in per),
                "mean_abs": float(np.mean([p["mean_abs"] for p in per])),
                "nonfinite": any(p["nonfinite"] for p in per),
                "nonfinite_batches": sum(p["nonfinite"] for p in per), "batches": len(per), "abs0": per[0]["abs"]}

    def feeds(sess, inputs):
        out = {}
        for i, (meta, x) in enumerate(zip(sess.get_inputs(), inputs)):
            t = {"tensor(float16)": np.float16, "tensor(float)": np.float32, "tensor(int64)": np.int64,
                 "tensor(int32)": np.int32}.get(meta.type, x.dtype)
            out[meta.name] = x.astype(t)
        return out

    def errors(outs, refs):
        abs_err, rel, nonfinite, tot, cnt = 0.0, 0.0, False, 0.0, 0
        for got, ref in zip(outs, refs):
            got = np.asarray(got, dtype=np.float64).reshape(ref.shape)
            nonfinite |= not np.all(np.isfinite(got))
            e = np.abs(got - ref)
            e = np.where(np.isnan(e), np.inf, e)
            a = float(e.max())
            abs_err, rel = max(abs_err, a), max(rel, a / max(float(np.abs(ref).max()), 1e-30))
            tot, cnt = tot + float(e.sum()), cnt + e.size
        return {"abs": abs_err, "rel": rel, "mean_abs": tot / max(cnt, 1), "nonfinite": bool(nonfinite)}

    def emit(d):
        sys.stdout.write(json.dumps(d) + "\n")
        sys.stdout.flush()

    try:
        sess = ln_ort.open_session(strict_emulation(model), ln_ort.UNOPTIMIZED, probe=False)
        emit({"stage": "strict", **run_all(sess)})
    except Exception as e:  # noqa: BLE001 - recorded, not fatal
        emit({"stage": "strict", "error": ln_ort.first_line(e, 160)})
    r = ln_ort.probe_session(path, ln_ort.DEFAULT)
    emit({"stage": "all", "ok": r.ok, "crashed": r.crashed, "signal": r.signal_name, "error": r.error[:160]})
    try:
        sess, dep = ln_ort.open_deployable(path, ln_ort.DEFAULT, probe=True)
        emit({"stage": "ort", "config": dep.config.describe(), **run_all(sess)})
    except Exception as e:  # noqa: BLE001
        emit({"stage": "ort", "error": ln_ort.first_line(e, 160)})


def measure(path: Path, data: Path) -> dict:
    stages = ("strict", "all", "ort")
    try:
        r = subprocess.run([sys.executable, str(THIS), "--measure", str(path), str(data)], capture_output=True,
                           text=True, timeout=600)
        rc = r.returncode
        out = r.stdout
    except subprocess.TimeoutExpired as e:
        rc, out = "timeout", (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    got = {}
    for line in out.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            got[d.pop("stage")] = d
    if rc != 0:
        import signal as _s

        how = f"crash ({_s.Signals(-rc).name})" if isinstance(rc, int) and rc < 0 else f"died ({rc})"
        for s in stages:
            if s not in got:
                got[s] = {"error": how}
                break
    return got


# --------------------------------------------------------------------------- the run

def prepare(name: str, spec: str, work: Path, batches: int = 1) -> tuple[Path, Path]:
    """Export the fp32 ONNX and write ``batches`` fresh seeded input batches (the spec's shapes) + the
    PyTorch reference outputs (batch 0 is the single batch earlier runs used)."""
    import numpy as np
    import torch

    from ln_deploy.export import export_model
    from ln_deploy.spec import load_spec

    loaded = load_spec(spec)
    src = work / f"{name}.onnx"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        export_model(loaded, src)
    g = torch.Generator().manual_seed(1234)
    arrays = {}
    for b in range(batches):
        xs = []
        for x in loaded.example_inputs:
            if x.dtype.is_floating_point:
                xs.append(torch.randn(x.shape, generator=g, dtype=x.dtype))
            else:
                hi = int(x.max()) + 1 if x.numel() else 2
                xs.append(torch.randint(0, max(hi, 2), x.shape, generator=g, dtype=x.dtype))
        with torch.no_grad():
            refs = loaded.call(*xs)
        arrays.update({f"b{b}_in{i}": x.numpy() for i, x in enumerate(xs)})
        arrays.update({f"b{b}_ref{i}": r.double().numpy() for i, r in enumerate(refs)})
    data = work / f"{name}.npz"
    np.savez(data, **arrays)
    return src, data


def _fmt_err(m: dict) -> str:
    if "error" in m:
        return m["error"]
    if m["nonfinite"]:
        return f"NaN/inf on {m.get('nonfinite_batches', '?')} of {m.get('batches', '?')} batches"
    s = f"{m['abs']:.2g} / {m['rel']:.2g}"
    return s + (f" (mean {m['mean_abs']:.2g})" if "mean_abs" in m else "")


def cell(res: dict) -> dict:
    if res.get("convert_error"):
        return {"converted": "no: " + res["convert_error"][:120]}
    ms = res["measure"]
    a = ms.get("all", {"error": "not reached"})
    if "error" in a and "ok" not in a:
        all_s = a["error"]
    elif a.get("ok"):
        all_s = "ok"
    elif a.get("crashed"):
        all_s = f"crash ({a.get('signal') or 'died'})"
    else:
        all_s = "refused: " + a.get("error", "")[:80]
    return {"converted": "yes", "strict": _fmt_err(ms.get("strict", {"error": "not reached"})), "all": all_s,
            "ort": _fmt_err(ms.get("ort", {"error": "not reached"})),
            "casts": f"{res['casts']} ({res['casts'] - res['casts_src']:+d})",
            "fp16": "-" if res["fp16"] is None else f"{100 * res['fp16']:.0f}%",
            "seconds": f"{res['seconds']:.1f}"}


def versions() -> dict:
    import numpy
    import onnx
    import onnxconverter_common
    import onnxruntime
    import torch
    import transformers

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "onnxconverter-common": onnxconverter_common.__version__, "transformers": transformers.__version__,
            "numpy": numpy.__version__}


def modelopt_version(py: str | None) -> str:
    if not py or not Path(py).exists():
        return "not installed"
    r = subprocess.run([py, "-c", "import modelopt, onnx, onnxruntime; print(modelopt.__version__, onnx.__version__,"
                        " onnxruntime.__version__)"], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        return "import fails: " + (r.stderr.strip().splitlines() or [""])[-1][:120]
    mv, ov, rv = r.stdout.split()
    return f"nvidia-modelopt {mv} (its venv: onnx {ov}, onnxruntime {rv})"


def _short(err: str) -> str:
    """ORT's refusal as its status word ('refused by ORT: FAIL'), a conversion failure as its exit."""
    if "[ONNXRuntimeError]" in err:
        parts = [p.strip() for p in err.split(":")]
        return "refused by ORT: " + (parts[2] if len(parts) > 2 else "error")
    return err


def table(results: dict, tools: list[str]) -> str:
    """The docs/precision.md table: strict max |err| / rel (mean |err|); Casts (added); fp16 share;
    what ORT_ENABLE_ALL does when it is not 'ok'."""
    lines = ["| model | " + " | ".join(tools) + " |", "|---|" + "---|" * len(tools)]
    for name, per_tool in results.items():
        row = []
        for t in tools:
            c = cell(per_tool[t])
            if c["converted"] != "yes":
                why = c["converted"][len("no: "):]
                row.append(f"failed ({why.split(':')[0]})")
                continue
            s = f"{_short(c['strict'])}; {c['casts']} Casts; {c['fp16']} fp16"
            if c["all"] != "ok":
                s += "; ENABLE_ALL " + (c["all"] if c["all"].startswith("crash") else "refused (load error)")
            row.append(s)
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def verdict(results: dict, tools: list[str]) -> list[str]:
    """Per model: ln_deploy's strict max |err| over every batch against the best anchor's (converted,
    loads, finite on every batch)."""
    out = []
    for name, per_tool in results.items():
        ln = per_tool.get("ln_deploy", {})
        s = ln.get("measure", {}).get("strict", {}) if not ln.get("convert_error") else {}
        if "abs" not in s:
            out.append(f"{name}: ln_deploy has no strict figure ({ln.get('convert_error') or s.get('error')})")
            continue
        best, best_t = None, None
        for t in tools:
            if t == "ln_deploy" or per_tool[t].get("convert_error"):
                continue
            st = per_tool[t]["measure"].get("strict", {})
            if "abs" in st and not st["nonfinite"] and (best is None or st["abs"] < best):
                best, best_t = st["abs"], t
        if best is None:
            out.append(f"{name}: ln_deploy {s['abs']:.2g}; no anchor gives a finite strict result")
        else:
            mark = "ok" if s["abs"] <= best * 1.0 + 1e-12 else "WORSE"
            mean = lambda d: f" (mean {d['mean_abs']:.2g})" if "mean_abs" in d else ""  # noqa: E731
            out.append(f"{name}: ln_deploy {s['abs']:.2g}{mean(s)} vs best anchor {best_t} {best:.2g}"
                       f"{mean(per_tool[best_t]['measure']['strict'])}: {mark}")
    return out


def main(argv=None) -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        measure_child()
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", choices=list(MODELS))
    ap.add_argument("--tools", nargs="*", choices=TOOLS, default=list(TOOLS))
    ap.add_argument("--out", default=None, help="write the results JSON and table here (a .json and a .md)")
    ap.add_argument("--modelopt-python", default=DEFAULT_MODELOPT_PY)
    ap.add_argument("--work", default=None)
    ap.add_argument("--batches", type=int, default=8, help="seeded input batches each output is measured on")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(a.work or tempfile.mkdtemp(prefix="compare_precision."))
    work.mkdir(parents=True, exist_ok=True)
    import onnx

    names = a.only or list(MODELS)
    results: dict = {}
    t_start = time.time()
    for name in names:
        src, data = prepare(name, MODELS[name], work, a.batches)
        casts_src = casts(onnx.load(src))
        results[name] = {}
        for tool in a.tools:
            dst = work / f"{name}.{tool}.onnx"
            t0 = time.time()
            try:
                why = convert(tool, src, dst, MODELS[name], a.modelopt_python)
            except Exception as e:  # noqa: BLE001 - a converter's failure is a result
                why = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:140] if str(e).strip() else ''}"
            res = {"convert_error": why, "seconds": time.time() - t0}
            if not why:
                m = onnx.load(dst)
                res.update(casts=casts(m), casts_src=casts_src, fp16=fp16_share(m), measure=measure(dst, data))
            results[name][tool] = res
            print(f"{name:18s} {tool:10s} {json.dumps(cell(res))}", flush=True)
    elapsed = time.time() - t_start
    md = table(results, a.tools)
    v = verdict(results, a.tools)
    print(md)
    print("\n".join(v))
    print(f"total {elapsed:.0f} s")
    if a.out:
        meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
                "cpus": os.cpu_count(), "python": platform.python_version(), "versions": versions(),
                "modelopt": modelopt_version(a.modelopt_python), "batches": a.batches, "seconds": elapsed}
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
        out.with_suffix(".md").write_text(f"{json.dumps(meta)}\n\n{md}\n\n" + "\n".join(v) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
