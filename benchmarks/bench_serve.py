"""Load test of `ln-deploy serve`: concurrent tritonclient clients on loopback, against ONNX Runtime direct.

One run measures, on the same machine and model:
  1. direct: one process calling the ONNX Runtime session at batch ``--max-batch-size`` in a loop;
  2. served: ``python -m ln_deploy serve`` as a subprocess, ``--clients`` concurrent clients
     (official ``tritonclient.http``, binary tensors) each sending ``--request-batch`` rows per
     request for ``--duration`` seconds; the server batches them dynamically up to
     ``--max-batch-size``.
It prints throughput (requests/s and rows/s), latency p50/p99, the batch sizes the server formed,
and the ratio served/direct in rows per second. Every response is checked against a reference
computed directly; a request that fails, times out or returns wrong numbers counts as an error,
and the client tally is cross-checked with the server's own statistics (nothing lost or doubled).

Bounded: loopback only, ``--duration`` seconds plus a hard deadline, at most ``--max-requests``
per client. Exit status 1 if any request was lost or failed.

    python benchmarks/bench_serve.py                       # 32 clients x 20 s, batch-8 requests, seq 64
    python benchmarks/bench_serve.py --request-batch 1     # batch-1 requests batched by the server
    python benchmarks/bench_serve.py --clients 8 --duration 2 --seq-len 8
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def make_inputs(sig_inputs, rows: int, seq: int, count: int, seed: int = 0):
    """``count`` distinct request payloads (name -> array) of ``rows`` rows; dynamic axes get ``seq``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        feeds = {}
        for t in sig_inputs:
            shape = [rows] + [seq if d == -1 else d for d in t.shape[1:]]
            if t.name == "mask":  # masked_encoder: 1 = token, 0 = padding; keep the first token
                a = (rng.random(shape) > 0.2).astype(np.float32)
                a[..., 0] = 1
            else:
                a = rng.standard_normal(shape).astype(np.float32)
            feeds[t.name] = a
        out.append(feeds)
    return out


def direct_throughput(session, feeds, seconds: float) -> tuple[float, int]:
    """Rows per second of back-to-back ``session.run`` calls on one batch."""
    rows = next(iter(feeds.values())).shape[0]
    for _ in range(3):
        session.run(None, feeds)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        session.run(None, feeds)
        n += 1
    return n * rows / (time.perf_counter() - t0), n


def _client_process(url, model, payloads, references, output_name, threads, duration, max_requests, start_at, q):
    import tritonclient.http as th

    def worker(idx, results):
        client = th.InferenceServerClient(url, connection_timeout=30, network_timeout=60)
        lat, sent, ok, errors, wrong, err_msgs = [], 0, 0, 0, 0, []
        while time.time() < start_at:
            time.sleep(0.001)
        end = start_at + duration
        k = idx
        while time.time() < end and sent < max_requests:
            feeds = payloads[k % len(payloads)]
            ref = references[k % len(payloads)]
            k += 1
            inputs = []
            for name, a in feeds.items():
                i = th.InferInput(name, list(a.shape), "FP32")
                i.set_data_from_numpy(a, binary_data=True)
                inputs.append(i)
            t0 = time.perf_counter()
            sent += 1
            try:
                r = client.infer(model, inputs, outputs=[th.InferRequestedOutput(output_name, binary_data=True)])
                y = r.as_numpy(output_name)
                lat.append(time.perf_counter() - t0)
                if y is None or y.shape != ref.shape or not np.allclose(y, ref, atol=1e-4, rtol=1e-4):
                    wrong += 1
                else:
                    ok += 1
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                errors += 1
                if len(err_msgs) < 3:
                    err_msgs.append(f"{type(e).__name__}: {str(e)[:200]}")
        client.close()
        results[idx] = (lat, sent, ok, errors, wrong, err_msgs)

    results = [None] * threads
    ts = [threading.Thread(target=worker, args=(i, results), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(duration + 120)
    for i, r in enumerate(results):
        if r is None:  # a thread that never finished: all its requests count as lost
            results[i] = ([], 0, 0, 1, 0, ["client thread did not finish"])
    q.put(results)


def start_server(onnx_path: Path, max_batch: int, window_ms: float, max_queue: int, threads: int):
    cmd = [sys.executable, "-m", "ln_deploy", "serve", str(onnx_path), "--port", "0", "--name", "bench",
           "--max-batch-size", str(max_batch), "--max-queue", str(max_queue), "--batch-window-ms", str(window_ms)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.time() + 120
    port = None
    lines = []
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"serving .* on http://127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        proc.kill()
        raise SystemExit("server did not start:\n" + "".join(lines))
    threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()  # keep the pipe drained
    return proc, port


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pre_ln_encoder", help="a bundled model (models/catalog.py)")
    ap.add_argument("--onnx", default=None, help="an ONNX file instead of exporting --model")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--client-processes", type=int, default=2, help="client processes sharing --clients")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    ap.add_argument("--max-requests", type=int, default=100_000, help="per client, a bound on the count")
    ap.add_argument("--request-batch", type=int, default=8, help="rows per request")
    ap.add_argument("--max-batch-size", type=int, default=8, help="server batch limit and direct batch size")
    ap.add_argument("--seq-len", type=int, default=64, help="length of the dynamic axes")
    ap.add_argument("--window-ms", type=float, default=2.0, help="server batching window")
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    ap.add_argument("--direct-seconds", type=float, default=4.0, help="per direct measurement")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.request_batch > args.max_batch_size:
        ap.error("need clients >= 1, duration > 0, request-batch <= max-batch-size")

    import onnx
    import onnxruntime as ort

    from ln_deploy.serve.signature import onnx_signature

    tmp = Path(tempfile.mkdtemp(prefix="bench_serve."))
    if args.onnx:
        onnx_path = Path(args.onnx)
    else:
        from ln_deploy import progress
        from ln_deploy.export import export_model
        from models.catalog import BUNDLED, spec_path

        progress.set_quiet(True)
        onnx_path = tmp / f"{args.model}.onnx"
        export_model(spec_path(BUNDLED[args.model]), onnx_path)
    sig = onnx_signature(onnx.load(str(onnx_path)))
    output_name = sig.outputs[0].name

    from ln_deploy.serve.runtime import session_options

    # The baseline is the best of: ORT's default options (its pool threads spin) and the server's
    # (no spinning), each measured before and after the load. Other processes on a shared machine
    # move these figures; taking the best keeps the ratio conservative.
    default_opts = ort.SessionOptions()
    if args.threads:
        default_opts.intra_op_num_threads = args.threads
    sessions = {"ort_default": ort.InferenceSession(str(onnx_path), default_opts, providers=["CPUExecutionProvider"]),
                "server_options": ort.InferenceSession(str(onnx_path), session_options(args.threads),
                                                       providers=["CPUExecutionProvider"])}
    payloads = make_inputs(sig.inputs, args.request_batch, args.seq_len, 16)
    references = [sessions["ort_default"].run([output_name], p)[0] for p in payloads]
    full = make_inputs(sig.inputs, args.max_batch_size, args.seq_len, 1, seed=1)[0]
    direct = {f"{k}_before": direct_throughput(sess, full, args.direct_seconds)[0] for k, sess in sessions.items()}

    proc, port = start_server(onnx_path, args.max_batch_size, args.window_ms, max(128, 4 * args.clients),
                              args.threads)
    url = f"127.0.0.1:{port}"
    try:
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        nproc = max(1, min(args.client_processes, args.clients))
        per = [args.clients // nproc + (1 if i < args.clients % nproc else 0) for i in range(nproc)]
        start_at = time.time() + 3.0  # every client process imported and connected by then
        procs = [ctx.Process(target=_client_process,
                             args=(url, "bench", payloads, references, output_name, n, args.duration,
                                   args.max_requests, start_at, q)) for n in per]
        for p in procs:
            p.start()
        results = []
        hard_deadline = start_at + args.duration + 180
        for _ in procs:
            results += q.get(timeout=max(1.0, hard_deadline - time.time()))
        for p in procs:
            p.join(10)
        import tritonclient.http as th

        server_stats = th.InferenceServerClient(url).get_inference_statistics("bench")["model_stats"][0]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            server_rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            server_rc = "killed"

    direct.update({f"{k}_after": direct_throughput(sess, full, args.direct_seconds)[0] for k, sess in sessions.items()})
    direct_rows_s = max(direct.values())
    lat = [x for r in results for x in r[0]]
    sent = sum(r[1] for r in results)
    ok = sum(r[2] for r in results)
    errors = sum(r[3] for r in results)
    wrong = sum(r[4] for r in results)
    msgs = [m for r in results for m in r[5]][:5]
    served_success = server_stats["inference_stats"]["success"]["count"]
    lost = sent - ok - errors - wrong
    req_s = ok / args.duration
    rows_s = req_s * args.request_batch
    ratio = rows_s / direct_rows_s
    batch_hist = {b["batch_size"]: b["compute_infer"]["count"] for b in server_stats.get("batch_stats", [])}
    mean_batch = server_stats["inference_count"] / max(1, server_stats["execution_count"])
    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(), "onnxruntime": ort.__version__,
        "model": args.onnx or args.model, "seq_len": args.seq_len, "clients": args.clients,
        "client_processes": nproc, "duration_s": args.duration, "request_batch": args.request_batch,
        "max_batch_size": args.max_batch_size, "window_ms": args.window_ms,
        "sent": sent, "ok": ok, "errors": errors, "wrong_results": wrong, "lost": lost,
        "server_success_count": served_success, "server_exit": server_rc,
        "requests_per_s": round(req_s, 1), "rows_per_s": round(rows_s, 1),
        "latency_p50_ms": round(percentile(lat, 50) * 1e3, 2), "latency_p99_ms": round(percentile(lat, 99) * 1e3, 2),
        "server_mean_batch": round(mean_batch, 2), "server_batch_sizes": batch_hist,
        "direct_rows_per_s_at_max_batch": round(direct_rows_s, 1),
        "direct_measurements": {k: round(v, 1) for k, v in direct.items()},
        "served_over_direct": round(ratio, 3),
    }
    print(json.dumps(report, indent=2))
    print(f"\n{ok}/{sent} requests ok, {errors} errors, {wrong} wrong, {lost} lost; server counted {served_success}")
    print(f"served: {req_s:.1f} req/s = {rows_s:.1f} rows/s, p50 {report['latency_p50_ms']} ms, "
          f"p99 {report['latency_p99_ms']} ms, mean server batch {mean_batch:.2f}")
    print(f"direct ONNX Runtime at batch {args.max_batch_size}: {direct_rows_s:.1f} rows/s -> served/direct = {ratio:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    failed = errors or wrong or lost or served_success != ok + wrong or server_rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
