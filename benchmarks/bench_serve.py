"""Load test of `ln-deploy serve` against ONNX Runtime called directly, on two model sizes, in one run.

For each model size (``small``: the bundled 2-layer d=64 ``pre_ln_encoder``; ``large``: 12 layers
at d=768, 12 heads, random weights, where a batch of 8 computes in tens of milliseconds) and each
server configuration (instances, ONNX Runtime intra-op threads per run, pool-thread spinning; by
default the server's own, as ``ln_deploy.serve.server.parallelism`` resolves them), one run
measures, with the server started once:

  1. served latency: one ``tritonclient.http`` client sending ``--max-batch-size``-row requests one
     after another on a kept-alive connection; **per-request overhead** = served median latency
     minus the median of back-to-back direct ``session.run`` calls at the same batch and options,
     measured just before and just after (it includes the client's own encoding and decoding,
     which a real client pays too);
  2. (small model) keep-alive: the median latency of 100 small JSON requests on one kept-alive
     connection against 100 on a new connection each, interleaved;
  3. ``--rounds`` served windows, each between two direct measurements (the one after a window is
     the one before the next): direct throughput (rows/s of back-to-back runs at batch
     ``--max-batch-size``) with ONNX Runtime's default options and with the configuration's (as many
     runs at once on one session as the server has instances: the best direct use of those options); served
     throughput with ``--clients`` concurrent clients (official ``tritonclient.http``, binary
     tensors) in ``--client-processes`` processes, started once and switched on for ``--duration``
     seconds per window (the requests completed in the window, after a warm-up that fills the
     queue, and drained before the next direct measurement), every answer checked against a
     reference computed directly. The **overhead under
     load** per request is the time per request at the served rate minus the direct time of its
     rows with the same options (how issue 21's "about 0.8 ms per 8-row request" was derived from
     this script's figures); it is refused for a round whose same-options direct rate moved by more
     than ``--max-drift``, its own baseline. The client tally is cross-checked with the server's statistics
     (nothing lost or doubled).

A round's served/direct is served rows/s over the best direct rows/s (default or the
configuration's options, before or after), and it is **refused** when the ONNX Runtime default
baseline moved by more than ``--max-drift`` between the round's before and after measurements (the
run says by how much): on a shared machine other processes starve the baseline itself, and a ratio
against a starved baseline reads too high. The configuration's own direct figures are reported
with their drift but do not refuse a round: taking the best of the four, an unstable one can only
lower the ratio. A configuration's ratio is the median of its stable rounds (refused if none is);
short rounds make a stable one more likely than one long before/after pair, and the windows
interleaved with the direct runs a few seconds apart keep slow drift (a VM's CPU steal comes and
goes) out of the comparison.

``--baseline-rev REV`` also serves the small model with the server modules as of git revision REV
(``ln_deploy/serve/{app,batcher,protocol,server,cli}.py``; the rest of the tree as it is), with
``httptools`` and ``uvloop`` hidden when ``--baseline-h11`` is given (REV's environment had neither, so
uvicorn parsed with h11 and ran asyncio's loop), so the
overhead before and after a change is measured in the same run.

Bounded: loopback only, ``--duration`` seconds of load plus a hard deadline, at most
``--max-requests`` per client. Exit status 1 if any request was lost, failed or wrong.

    python benchmarks/bench_serve.py                                  # both sizes, the server default
    python benchmarks/bench_serve.py --sweep                          # threads {1,2} x spin {off,on,200 us}
    python benchmarks/bench_serve.py --sizes small --baseline-rev 8b9cc21^ --baseline-h11
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import shutil
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

SIZES = {  # name -> (description, seq_len, default client count)
    "small": ("pre_ln_encoder (2 layers, d=64)", 64, 32),
    "large": ("encoder 12 layers, d=768, 12 heads, random weights", 4, 16),
}
BASELINE_FILES = ("app.py", "batcher.py", "protocol.py", "server.py", "cli.py")


# -- models ----------------------------------------------------------------------------------------
def export_size(size: str, out: Path) -> Path:
    from ln_deploy import progress
    from ln_deploy.export import export_model

    progress.set_quiet(True)
    path = out / f"{size}.onnx"
    if path.is_file():
        return path
    if size == "small":
        from models.catalog import BUNDLED, spec_path

        export_model(spec_path(BUNDLED["pre_ln_encoder"]), path)
    else:
        sys.path.insert(0, str(ROOT / "models"))
        from transformer import encoder

        from ln_deploy.spec import LoadedModel

        module, example = encoder(12, 768, heads=12, batch=2, seq=8)
        export_model(LoadedModel("bench_serve:encoder_12x768", module, example, ["x"], ["output"]), path,
                     verify=False)  # served answers are checked against ORT directly below
    return path


def make_inputs(sig_inputs, rows: int, seq: int, count: int, seed: int = 0):
    """``count`` distinct request payloads (name -> array) of ``rows`` rows; dynamic axes get ``seq``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        out.append({t.name: rng.standard_normal([rows] + [seq if d == -1 else d for d in t.shape[1:]])
                    .astype(np.float32) for t in sig_inputs})
    return out


# -- direct ----------------------------------------------------------------------------------------
def open_session(path: Path, threads: int, spin: bool | int | None):
    """spin None: ONNX Runtime's own defaults (intra-op threads too, unless ``threads`` > 0)."""
    import onnxruntime as ort

    from ln_deploy.serve.runtime import session_options

    if spin is None:
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
    else:
        opts = session_options(threads, spin=spin)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def direct(session, feeds, seconds: float, at_once: int = 1) -> dict:
    """Back-to-back runs on one batch: rows/s and the median run time. ``at_once`` > 1: that many
    threads run back to back on the session at the same time (ONNX Runtime releases the GIL), as the
    server's instances do, and rows/s is their total."""
    rows = next(iter(feeds.values())).shape[0]
    for _ in range(3):
        session.run(None, feeds)

    def loop(times, t_end):
        while time.perf_counter() < t_end or len(times) < 5:
            t0 = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - t0)

    if at_once == 1:
        times = []
        loop(times, time.perf_counter() + seconds)
        return {"rows_per_s": len(times) * rows / sum(times), "median_s": float(np.median(times)), "runs": len(times)}
    per = [[] for _ in range(at_once)]
    start = time.perf_counter()
    ts = [threading.Thread(target=loop, args=(t, start + seconds)) for t in per]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - start
    times = [x for t in per for x in t]
    return {"rows_per_s": len(times) * rows / elapsed, "median_s": float(np.median(times)), "runs": len(times)}


# -- server ----------------------------------------------------------------------------------------
def start_server(onnx_path: Path, args, threads: int, spin: bool | int, max_queue: int, tree: Path | None = None,
                 hide_httptools: bool = False):
    serve_args = ["serve", str(onnx_path), "--port", "0", "--name", "bench", "--max-batch-size",
                  str(args.max_batch_size), "--max-queue", str(max_queue), "--batch-window-ms", str(args.window_ms)]
    if threads:
        serve_args += ["--threads", str(threads)]
    if args.instances is not None:
        serve_args += ["--instances", str(args.instances)]
    if tree is None:
        serve_args += ["--spin", "on" if spin is True else "off" if spin is False else str(spin)]
    src = tree or ROOT
    hidden = "sys.modules['httptools'] = None\nsys.modules['uvloop'] = None\n" if hide_httptools else ""
    boot = ("import sys\n" + hidden
            + f"sys.path.insert(0, {str(src)!r})\nfrom ln_deploy.cli import main\nsys.exit(main({serve_args!r}))")
    proc = subprocess.Popen([sys.executable, "-c", boot], stderr=subprocess.PIPE, text=True, cwd=src)
    deadline, port, lines = time.time() + 180, None, []
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


def stop_server(proc) -> int | str:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return "killed"


def _request_inputs(th, feeds):
    inputs = []
    for name, a in feeds.items():
        i = th.InferInput(name, list(a.shape), "FP32")
        i.set_data_from_numpy(a, binary_data=True)
        inputs.append(i)
    return inputs


# The load generator shares the server's two cores, so its own CPU per request is counted in the
# served rate: a client should cost as little as Triton's perf_analyzer would (C++, inputs prepared
# once). Two measured costs of tritonclient.http are removed, for every server measured alike:
# - the request's InferInput objects are built once per payload and reused (tritonclient reads them,
#   it does not consume them): 64 us of CPU per 8-row request here;
# - geventhttpclient reads a response in 4 KiB blocks (its BLOCK_SIZE; tritonclient does not expose
#   it), so a 131 KB answer took 33 recv() calls and 33 parser feeds, the largest item of a cProfile of
#   the client (0.7 of its 0.86 ms per request); 256 KiB blocks read it in one or two.
CLIENT_BLOCK_BYTES = 256 << 10


def _client(th, url):
    client = th.InferenceServerClient(url, connection_timeout=30, network_timeout=120)
    stub = getattr(client, "_client_stub", None)
    if stub is not None and hasattr(stub, "block_size"):
        stub.block_size = CLIENT_BLOCK_BYTES
    return client


def _prepared(th, payloads):
    """Each payload's InferInput list, built once."""
    return [_request_inputs(th, feeds) for feeds in payloads]


def _check(y, ref) -> bool:
    """Every answer is checked; the bitwise comparison first, because the clients share the server's
    cores and allclose's temporaries cost ~3x more CPU than the comparison (it would be counted as
    the server's overhead under load)."""
    if y is None or y.shape != ref.shape:
        return False
    return bool(np.array_equal(y, ref) or np.allclose(y, ref, atol=1e-4, rtol=1e-4))


def _thread_cpu_s(pid: int) -> float:
    """CPU time of a process's main thread (the server's event loop), ns-exact from schedstat."""
    with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def served_latency(url, output_name, payloads, references, count: int, server_pid: int) -> dict:
    """One client, requests one after another on one connection. Also the CPU time per request of
    the client thread (tritonclient's own work) and of the server's event-loop thread (HTTP, parsing,
    batching, encoding: everything but the ONNX Runtime run, which is on a worker thread); CPU time
    does not move with other processes' load the way wall-clock time does."""
    import tritonclient.http as th

    client = _client(th, url)
    out = [th.InferRequestedOutput(output_name, binary_data=True)]
    prepared = _prepared(th, payloads)
    lat, wrong = [], 0
    for k in range(count + 10):
        if k == 10:  # the first ones warm up the connection and the session
            cpu0, loop0 = time.thread_time(), _thread_cpu_s(server_pid)
        inputs, ref = prepared[k % len(payloads)], references[k % len(payloads)]
        t0 = time.perf_counter()
        y = client.infer("bench", inputs, outputs=out).as_numpy(output_name)
        dt = time.perf_counter() - t0
        wrong += not _check(y, ref)
        if k >= 10:
            lat.append(dt)
    client_cpu, loop_cpu = time.thread_time() - cpu0, _thread_cpu_s(server_pid) - loop0
    client.close()
    return {"median_s": float(np.median(lat)), "p90_s": float(np.percentile(lat, 90)), "sent": count + 10,
            "wrong": wrong, "client_cpu_s": client_cpu / count, "server_loop_cpu_s": loop_cpu / count}


def keep_alive_probe(port: int, count: int = 100) -> dict:
    """Median latency of small JSON requests on one kept-alive connection against a new connection
    per request (connect included), interleaved so that the machine's load moves both alike."""
    import http.client

    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 2, 64], "datatype": "FP32", "data": [0.25] * 128}]})

    def post(conn):
        t0 = time.perf_counter()
        conn.request("POST", "/v2/models/bench/infer", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"keep-alive probe: status {r.status}")
        return time.perf_counter() - t0

    kept = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    post(kept)
    ka, new = [], []
    for _ in range(count):
        ka.append(post(kept))
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.connect()
        new.append(time.perf_counter() - t0 + post(conn))
        conn.close()
    kept.close()
    return {"keep_alive_median_ms": round(float(np.median(ka)) * 1e3, 3),
            "new_connection_median_ms": round(float(np.median(new)) * 1e3, 3),
            "keep_alive_over_new": round(float(np.median(ka) / np.median(new)), 2), "sent": 1 + 2 * count}


def _client_process(url, payloads, references, output_name, threads, max_requests, go, stop, inflight, q):
    """``threads`` clients that send while ``go`` is set and pause (after their request in flight) while
    it is clear; every answer is checked and its completion time kept, so the coordinator can count
    the served rate inside each of its windows."""
    import tritonclient.http as th

    prepared = _prepared(th, payloads)  # read-only, shared by the process's client threads

    def worker(idx, results):
        client = _client(th, url)
        out = [th.InferRequestedOutput(output_name, binary_data=True)]
        lat, done, sent, ok, errors, wrong, msgs = [], [], 0, 0, 0, 0, []
        k = idx
        while not stop.is_set() and sent < max_requests:
            if not go.is_set():
                go.wait(0.05)
                continue
            inputs, ref = prepared[k % len(payloads)], references[k % len(payloads)]
            k += 1
            with inflight.get_lock():
                inflight.value += 1
            t0 = time.perf_counter()
            sent += 1
            try:
                y = client.infer("bench", inputs, outputs=out).as_numpy(output_name)
                lat.append(time.perf_counter() - t0)
                done.append(time.time())
                if _check(y, ref):
                    ok += 1
                else:
                    wrong += 1
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                errors += 1
                if len(msgs) < 3:
                    msgs.append(f"{type(e).__name__}: {str(e)[:200]}")
            finally:
                with inflight.get_lock():
                    inflight.value -= 1
        client.close()
        results[idx] = (lat, sent, ok, errors, wrong, msgs, done)

    results = [None] * threads
    ts = [threading.Thread(target=worker, args=(i, results), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for i, r in enumerate(results):
        if r is None:  # a thread that never finished: its requests count as lost
            results[i] = ([], 0, 0, 1, 0, ["client thread did not finish"], [])
    q.put(results)


class LoadClients:
    """``clients`` concurrent tritonclient.http clients in ``nproc`` processes, started once per
    configuration and switched on and off between direct measurements, so that a served window and
    the direct measurements on either side of it are seconds apart (the machine's own drift, CPU
    steal on a VM included, moves them alike) and the processes' start-up is paid once."""

    def __init__(self, url, output_name, payloads, references, clients, nproc, max_requests):
        ctx = mp.get_context("spawn")
        self.q, self.go, self.stop, self.inflight = ctx.Queue(), ctx.Event(), ctx.Event(), ctx.Value("i", 0)
        nproc = max(1, min(nproc, clients))
        per = [clients // nproc + (1 if i < clients % nproc else 0) for i in range(nproc)]
        self.procs = [ctx.Process(target=_client_process, args=(url, payloads, references, output_name, n,
                                                                max_requests, self.go, self.stop, self.inflight,
                                                                self.q)) for n in per]
        for p in self.procs:
            p.start()

    def window(self, seconds: float, warm_s: float) -> tuple[float, float]:
        """Send for ``warm_s + seconds``; the window counted is the last ``seconds`` (the queue full)."""
        self.go.set()
        time.sleep(warm_s)
        t0 = time.time()
        time.sleep(seconds)
        t1 = time.time()
        self.go.clear()
        deadline = time.time() + 120
        while self.inflight.value and time.time() < deadline:  # drained before the next direct run
            time.sleep(0.005)
        return t0, t1

    def finish(self) -> list:
        self.stop.set()
        results = []
        for _ in self.procs:
            results += self.q.get(timeout=300)
        for p in self.procs:
            p.join(10)
        return results


def served_totals(url, results) -> dict:
    import tritonclient.http as th

    stats = th.InferenceServerClient(url).get_inference_statistics("bench")["model_stats"][0]
    lat = [x for r in results for x in r[0]]
    sent, ok = sum(r[1] for r in results), sum(r[2] for r in results)
    errors, wrong = sum(r[3] for r in results), sum(r[4] for r in results)
    return {"sent": sent, "ok": ok, "errors": errors, "wrong": wrong, "lost": sent - ok - errors - wrong,
            "server_success": stats["inference_stats"]["success"]["count"],
            "mean_batch": stats["inference_count"] / max(1, stats["execution_count"]),
            "p50_s": float(np.median(lat)) if lat else float("nan"),
            "p99_s": float(np.percentile(lat, 99)) if lat else float("nan"),
            "messages": [m for r in results for m in r[5]][:5]}


# -- one configuration -----------------------------------------------------------------------------
def drift(before: float, after: float) -> float:
    return abs(before - after) / max(before, after)


def spin_text(spin) -> str:
    from ln_deploy.serve.runtime import spin_text as text

    return text(spin)


def measure(size, onnx_path, sig, args, threads, spin, tree=None, label=None) -> dict:
    """One configuration: the latency phase, then ``--rounds`` served windows, each between two direct
    measurements (the one after a window is the one before the next)."""
    output_name = sig.outputs[0].name
    seq = args.seq_len or SIZES[size][1]
    clients = args.clients or SIZES[size][2]
    mbs = args.max_batch_size
    duration = args.duration * (2 if size == "large" else 1)  # a large batch takes ~100x longer
    payloads = make_inputs(sig.inputs, mbs, seq, 16)
    batch = make_inputs(sig.inputs, mbs, seq, 1, seed=1)[0]
    if tree is None:  # the server's own parallelism, as it resolves it (instances x threads per run)
        from ln_deploy.serve.server import ServeOptions, parallelism

        runs, threads = parallelism(ServeOptions(device="cpu", instances=args.instances, intra_op_threads=threads))
    else:
        runs = args.instances or 1
    at_once = {"ort_default": 1, "server": runs}
    sessions = {"ort_default": open_session(onnx_path, 0, None), "server": open_session(onnx_path, threads, spin)}
    references = [sessions["ort_default"].run([output_name], p)[0] for p in payloads]
    proc, port = start_server(onnx_path, args, threads, spin, max(128, 4 * clients), tree, args.baseline_h11 and tree)
    url = f"127.0.0.1:{port}"
    rounds, load = [], None
    try:
        lat_before = direct(sessions["server"], batch, args.direct_seconds)
        keep_alive = keep_alive_probe(port) if size == "small" else None  # its body is the small model's
        lat = served_latency(url, output_name, payloads, references, args.latency_requests[size], proc.pid)
        lat_after = direct(sessions["server"], batch, args.direct_seconds)
        # D0 W1 D1 W2 ... Wk Dk: round i is window Wi with the direct measurements D(i-1) and Di beside it
        load = LoadClients(url, output_name, payloads, references, clients, args.client_processes,
                           args.max_requests)
        time.sleep(4.0)  # every client process imported and connected (they wait for the first window)
        directs = [{k: direct(s, batch, args.direct_seconds, at_once[k]) for k, s in sessions.items()}]
        windows = []
        for _ in range(args.rounds):
            windows.append(load.window(duration, warm_s=max(0.5, 4 * lat_before["median_s"])))
            directs.append({k: direct(s, batch, args.direct_seconds, at_once[k]) for k, s in sessions.items()})
        results = load.finish()
        totals = served_totals(url, results)
        done = np.sort(np.array([t for r in results for t in r[6]]))
        for i, (t0, t1) in enumerate(windows):
            before, after = directs[i], directs[i + 1]
            completed = int(np.searchsorted(done, t1) - np.searchsorted(done, t0))
            requests_per_s = completed / (t1 - t0)
            drifts = {k: drift(before[k]["rows_per_s"], after[k]["rows_per_s"]) for k in sessions}
            best = max(max(before[k]["rows_per_s"], after[k]["rows_per_s"]) for k in sessions)
            own = float(np.mean([before["server"]["rows_per_s"], after["server"]["rows_per_s"]]))
            served_rows = requests_per_s * mbs
            # Only the ORT-default baseline can refuse a round: the ratio's denominator is the best of all
            # four direct figures, so an unstable *lower* one (spinning off wakes its pool threads
            # through the scheduler, which on a VM is the erratic part) can only make the ratio lower.
            unstable = {k: d for k, d in drifts.items() if d > args.max_drift and k == "ort_default"}
            rounds.append({
                "direct_before": {k: round(v["rows_per_s"], 1) for k, v in before.items()},
                "direct_after": {k: round(v["rows_per_s"], 1) for k, v in after.items()},
                "drift": {k: round(v, 3) for k, v in drifts.items()},
                "window_s": round(t1 - t0, 2), "completed": completed,
                "served_rows_per_s": round(served_rows, 1), "best_direct_rows_per_s": round(best, 1),
                "served_over_direct": None if unstable else round(served_rows / best, 3),
                "refused": "; ".join(f"{k} moved {d:.0%} ({before[k]['rows_per_s']:.0f} -> "
                                     f"{after[k]['rows_per_s']:.0f} rows/s)" for k, d in unstable.items()) or None,
                "load_overhead_us": round((1 / max(requests_per_s, 1e-9) - mbs / own) * 1e6),
                # its baseline is the server-options direct rate, so that rate's drift refuses it
                "load_overhead_refused": drifts["server"] > args.max_drift,
            })
        server_success = totals["server_success"]
    finally:
        if load is not None and not load.stop.is_set():  # an error above: no client left behind
            load.stop.set()
            for p in load.procs:
                p.join(30)
                if p.is_alive():
                    p.kill()
        server_rc = stop_server(proc)
    model_s = (lat_before["median_s"] + lat_after["median_s"]) / 2
    lat_drift = drift(lat_before["median_s"], lat_after["median_s"])
    stable = [r for r in rounds if r["refused"] is None]
    own_stable = [r for r in rounds if not r["load_overhead_refused"]]
    r = {
        "size": size, "label": label or f"{runs} instance(s) x threads {threads or 'default'}, spin {spin_text(spin)}",
        "threads": threads, "instances": runs, "spin": spin, "seq_len": seq, "clients": clients, "rounds": rounds,
        "keep_alive": keep_alive,
        "stable_rounds": len(stable),
        "served_over_direct": float(np.median([x["served_over_direct"] for x in stable])) if stable else None,
        "load_overhead_us": round(float(np.median([x["load_overhead_us"] for x in own_stable]))) if own_stable else None,
        "load_overhead_rounds": len(own_stable),
        "direct_median_ms": round(model_s * 1e3, 3), "direct_median_drift": round(lat_drift, 3),
        "latency_median_ms": round(lat["median_s"] * 1e3, 3), "latency_p90_ms": round(lat["p90_s"] * 1e3, 3),
        "overhead_us": round((lat["median_s"] - model_s) * 1e6) if lat_drift <= args.max_drift else None,
        "client_cpu_us": round(lat["client_cpu_s"] * 1e6), "server_loop_cpu_us": round(lat["server_loop_cpu_s"] * 1e6),
        **{k: totals[k] for k in ("sent", "ok", "errors", "wrong", "lost")}, "latency_sent": lat["sent"],
        "latency_wrong": lat["wrong"], "server_success": server_success,
        "mean_batch": round(totals["mean_batch"], 2), "p50_ms": round(totals["p50_s"] * 1e3, 2),
        "p99_ms": round(totals["p99_s"] * 1e3, 2), "server_exit": server_rc, "messages": totals["messages"],
    }
    r["failed"] = bool(totals["errors"] or totals["wrong"] or totals["lost"] or lat["wrong"]
                       or server_success != totals["ok"] + totals["wrong"] + lat["sent"] + (keep_alive or {}).get("sent", 0)
                       or server_rc != 0)
    ratio = (f"{r['served_over_direct']:.3f} (median of {len(stable)}/{len(rounds)} stable rounds)" if stable
             else "ratio refused: " + " | ".join(x["refused"] for x in rounds))
    if keep_alive:
        print(f"  [{size}] {r['label']}: keep-alive median {keep_alive['keep_alive_median_ms']} ms, new connection "
              f"{keep_alive['new_connection_median_ms']} ms (x{keep_alive['keep_alive_over_new']})", file=sys.stderr)
    print(f"  [{size}] {r['label']}: served/direct {ratio}; latency {r['latency_median_ms']} ms vs model "
          f"{r['direct_median_ms']} ms: overhead {r['overhead_us']} us (client CPU {r['client_cpu_us']} us, server "
          f"loop CPU {r['server_loop_cpu_us']} us), under load {r['load_overhead_us']} us; "
          f"{totals['ok']}/{totals['sent']} ok", file=sys.stderr, flush=True)
    return r


def baseline_tree(rev: str, out: Path) -> Path:
    """The working tree's ln_deploy with the server modules as of ``rev``."""
    tree = out / "baseline"
    shutil.copytree(ROOT / "ln_deploy", tree / "ln_deploy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "models", tree / "models", ignore=shutil.ignore_patterns("__pycache__"))
    for name in BASELINE_FILES:
        text = subprocess.run(["git", "show", f"{rev}:ln_deploy/serve/{name}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
        (tree / "ln_deploy" / "serve" / name).write_text(text)
    return tree


# -- report ----------------------------------------------------------------------------------------
def tables(results: list[dict]) -> str:
    def pair(rd, key):
        return f"{rd['direct_before'][key]:.0f} / {rd['direct_after'][key]:.0f}"

    lines = ["| Model | Server options | Round | Direct rows/s, ORT default (before / after) | Direct rows/s, these "
             "options (before / after) | Served rows/s (requests in window) | Served / best direct |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for i, rd in enumerate(r["rounds"], 1):
            ratio = f"{rd['served_over_direct']:.2f}" if rd["refused"] is None else f"refused: {rd['refused']}"
            lines.append(f"| {r['size']} | {r['label']} | {i} | {pair(rd, 'ort_default')} | {pair(rd, 'server')} | "
                         f"{rd['served_rows_per_s']:.0f} ({rd['completed']} in {rd['window_s']:.1f} s) | {ratio} |")
    lines += ["", "| Model | Server options | Sent / ok / errors / wrong / lost | Served / direct (stable rounds) | "
              "Mean batch | 1-client latency p50 | Model time p50 (batch 8) | Overhead per request | of which client CPU | "
              "Server event-loop CPU per request | Overhead under load |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ratio = (f"**{r['served_over_direct']:.2f}** ({r['stable_rounds']}/{len(r['rounds'])})"
                 if r["served_over_direct"] is not None else f"refused (0/{len(r['rounds'])} stable)")
        over = f"{r['overhead_us']} µs" if r["overhead_us"] is not None else \
            f"refused (model time moved {r['direct_median_drift']:.0%})"
        under = (f"{r['load_overhead_us']} µs ({r['load_overhead_rounds']}/{len(r['rounds'])})"
                 if r["load_overhead_us"] is not None else "refused (0 stable)")
        lines.append(f"| {r['size']} | {r['label']} | {r['sent'] + r['latency_sent']} / "
                     f"{r['ok'] + r['latency_sent'] - r['latency_wrong']} / {r['errors']} / "
                     f"{r['wrong'] + r['latency_wrong']} / {r['lost']} | {ratio} | {r['mean_batch']:.2f} | "
                     f"{r['latency_median_ms']:.2f} ms | "
                     f"{r['direct_median_ms']:.2f} ms | {over} | {r['client_cpu_us']} µs | "
                     f"{r['server_loop_cpu_us']} µs | {under} |")
    kas = [r for r in results if r.get("keep_alive")]
    if kas:
        lines += ["", "| Server options | Keep-alive median | New connection per request (connect included) | "
                  "Keep-alive / new |", "|---|---|---|---|"]
        lines += [f"| {r['label']} | {r['keep_alive']['keep_alive_median_ms']:.2f} ms | "
                  f"{r['keep_alive']['new_connection_median_ms']:.2f} ms | **{r['keep_alive']['keep_alive_over_new']}** |"
                  for r in kas]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="small,large", help="comma-separated: small, large")
    ap.add_argument("--sweep", action="store_true", help="serve small with threads {1,2} x spin {off,on,200 us} and "
                                                          "large with spin {off,on,200 us}, not only --threads/--spin")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads of the default configuration")
    ap.add_argument("--spin", default="200", help="spinning of the default configuration: off, on or microseconds "
                                                   "(default 200, the server's)")
    ap.add_argument("--baseline-rev", default=None, help="also serve the small model with the server modules of "
                                                         "this git revision")
    ap.add_argument("--baseline-h11", action="store_true", help="hide httptools and uvloop from the baseline server (REV's environment had neither: "
                         "uvicorn then parses with h11 and loops on asyncio)")
    ap.add_argument("--instances", type=int, default=None, help="server model instances, concurrent runs on one "
                    "session (default: the server's own, 2 on the CPU; the pre-issue server's 1 for --baseline-rev)")
    ap.add_argument("--clients", type=int, default=0, help="concurrent clients (default: 32 small, 16 large)")
    ap.add_argument("--client-processes", type=int, default=2, help="client processes sharing --clients")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds of each served window (twice that for large)")
    ap.add_argument("--rounds", type=int, default=5, help="served windows per configuration, each between "
                                                         "two direct measurements")
    ap.add_argument("--latency-requests", type=str, default="small=300,large=40",
                    help="sequential requests of the 1-client latency phase, per size")
    ap.add_argument("--max-requests", type=int, default=100_000, help="per client, a bound on the count")
    ap.add_argument("--max-batch-size", type=int, default=8, help="rows per request, server batch limit, direct batch")
    ap.add_argument("--seq-len", type=int, default=0, help="length of the dynamic axes (default: 64 small, 4 large)")
    ap.add_argument("--window-ms", type=float, default=2.0, help="server batching window")
    ap.add_argument("--direct-seconds", type=float, default=2.0, help="per direct measurement")
    ap.add_argument("--max-drift", type=float, default=0.10, help="largest before/after change of a direct "
                                                                  "baseline for which a ratio is reported")
    ap.add_argument("--cache-dir", default=None, help="keep the exported models here between runs")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if not sizes or any(s not in SIZES for s in sizes) or args.duration <= 0:
        ap.error(f"--sizes must name some of {sorted(SIZES)}; --duration must be > 0")
    from ln_deploy.serve.runtime import parse_spin

    try:
        args.spin = parse_spin(args.spin)
    except ValueError as e:
        ap.error(str(e))
    args.latency_requests = {**{s: 40 for s in SIZES}, **{k: int(v) for k, v in
                                                          (p.split("=") for p in args.latency_requests.split(","))}}

    import onnx
    import onnxruntime as ort

    from ln_deploy.signature import onnx_signature

    tmp = Path(tempfile.mkdtemp(prefix="bench_serve."))
    cache = Path(args.cache_dir) if args.cache_dir else tmp
    cache.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    default = [(args.threads, args.spin)]
    spins = (False, True, 200)  # off, ORT's own, bounded to 200 µs per wait
    sweep = {"small": [(t, s) for t in (1, 2) for s in spins],  # a 1 ms batch: threads and spin matter
             "large": [(args.threads, s) for s in spins]}  # 1 thread would halve a compute-bound model
    results = []
    try:
        for size in sizes:
            onnx_path = export_size(size, cache)
            sig = onnx_signature(onnx.load(str(onnx_path), load_external_data=False))
            if args.baseline_rev and size == "small":
                tree = baseline_tree(args.baseline_rev, tmp)
                results.append(measure(size, onnx_path, sig, args, args.threads, False, tree,
                                       label=f"as of {args.baseline_rev}" + (" (h11)" if args.baseline_h11 else "")))
            for threads, spin in (sweep[size] if args.sweep else default):
                results.append(measure(size, onnx_path, sig, args, threads, spin))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()
    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "load_average_before": [round(x, 2) for x in load_before], "load_average_after": [round(x, 2) for x in load_after],
        "python": platform.python_version(), "onnxruntime": ort.__version__, "max_batch_size": args.max_batch_size,
        "window_ms": args.window_ms, "duration_s": args.duration, "max_drift": args.max_drift, "results": results,
    }
    print(json.dumps(report, indent=2))
    print(f"\nmachine: {report['machine']}; load average (1/5/15 min) before {report['load_average_before']}, "
          f"after {report['load_average_after']}\n")
    print(tables(results))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 1 if any(r["failed"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
