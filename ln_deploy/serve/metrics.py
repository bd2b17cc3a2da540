"""Prometheus metrics for ``ln-deploy serve`` (``GET /metrics``, the text exposition format).

Why counters of our own read at scrape time: the request path only adds to plain ints and a bucket
list (no locks, no label lookups: a few hundred nanoseconds per request); ``prometheus_client``
builds the families from them when ``/metrics`` is scraped, through a custom collector on a
registry of this app (never the process-global one).

Families (label ``model``; names under ``ln_deploy_`` plus Triton's names for what Triton exports,
so an autoscaling rule written for the Triton container reads the same series here):

- ``ln_deploy_requests_total{model,status}``: infer requests answered, by HTTP status code. A
  request for a model that is not served counts under ``model=""`` (the name is the client's).
- ``ln_deploy_queue_depth{model}``: requests waiting for a model instance now.
- ``ln_deploy_batch_size{model}``: histogram of the rows per ONNX Runtime run.
- ``ln_deploy_request_duration_seconds{model}``: histogram of infer latency (request read to
  response ready), every status included.
- Triton's (labels ``model``, ``version``): ``nv_inference_request_success``,
  ``nv_inference_request_failure``, ``nv_inference_count``, ``nv_inference_exec_count``,
  ``nv_inference_pending_request_count``, ``nv_inference_request_duration_us``,
  ``nv_inference_queue_duration_us``, ``nv_inference_compute_infer_duration_us``. These are
  written as Triton (prometheus-cpp) writes them, counters *without* the ``_total`` suffix that
  ``prometheus_client`` appends to every counter, so a PromQL rule written for the Triton
  container matches these series by name; they are formatted here, not by ``prometheus_client``.
"""

from __future__ import annotations

from bisect import bisect_left

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerMetrics:
    """What the app records per infer request; the batchers keep their own ``BatcherStats``."""

    def __init__(self, models: dict, batchers: dict):
        self.models = models  # name -> ServedModel
        self.batchers = batchers  # name -> DynamicBatcher (filled at startup)
        self.requests: dict[tuple[str, int], int] = {}  # (model, status) -> count
        # model -> [count per bucket (last = +Inf), sum of seconds]
        self._latency: dict[str, list] = {}

    def observe(self, model: str, status: int, seconds: float) -> None:
        key = (model, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        h = self._latency.get(model)
        if h is None:
            h = self._latency[model] = [[0] * (len(LATENCY_BUCKETS_S) + 1), 0.0]
        h[0][bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        h[1] += seconds

    def exposition(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        return generate_latest(registry) + self._triton_text().encode()

    def _triton_text(self) -> str:
        """Triton's families in its own spelling. Label values need no escaping: model names are
        plain names (``repository.check_model_name``) and versions are numbers."""
        rows = []
        for name, model in sorted(self.models.items()):
            b = self.batchers.get(name)
            if b is None:
                continue
            s = b.stats
            rows.append((f'model="{name}",version="{model.version}"', {
                "nv_inference_request_success": s.success_count, "nv_inference_request_failure": s.fail_count,
                "nv_inference_count": s.inference_count, "nv_inference_exec_count": s.execution_count,
                "nv_inference_pending_request_count": b.queued,
                "nv_inference_request_duration_us": s.success_ns // 1000,
                "nv_inference_queue_duration_us": s.queue_ns // 1000,
                "nv_inference_compute_infer_duration_us": s.compute_ns // 1000}))
        out = []
        for family, kind, doc in TRITON_FAMILIES:
            out.append(f"# HELP {family} {doc}\n# TYPE {family} {kind}\n")
            out.extend(f"{family}{{{labels}}} {values[family]}\n" for labels, values in rows)
        return "".join(out)


TRITON_FAMILIES = (  # (name, type, help): Triton's names, types and meanings (newer Triton adds `reason` to failures)
    ("nv_inference_request_success", "counter", "Number of successful inference requests, all batch sizes"),
    ("nv_inference_request_failure", "counter", "Number of failed inference requests, all batch sizes"),
    ("nv_inference_count", "counter", "Number of inferences performed (does not include cached requests)"),
    ("nv_inference_exec_count", "counter", "Number of model executions performed (does not include cached requests)"),
    ("nv_inference_pending_request_count", "gauge", "Instantaneous number of pending requests awaiting execution "
                                                    "per-model."),
    ("nv_inference_request_duration_us", "counter", "Cumulative inference request duration in microseconds "
                                                    "(includes cached requests)"),
    ("nv_inference_queue_duration_us", "counter", "Cumulative inference queuing duration in microseconds "
                                                  "(includes cached requests)"),
    ("nv_inference_compute_infer_duration_us", "counter", "Cumulative compute inference duration in microseconds "
                                                          "(does not include cached requests)"),
)


def _cumulative(counts: list[int]) -> list[int]:
    out, total = [], 0
    for c in counts:
        total += c
        out.append(total)
    return out


class _Collector:
    def __init__(self, metrics: ServerMetrics):
        self.m = metrics

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        m = self.m
        req = CounterMetricFamily("ln_deploy_requests", "Infer requests answered, by model and HTTP status",
                                  labels=["model", "status"])
        for (model, status), n in sorted(m.requests.items()):
            req.add_metric([model, str(status)], n)
        yield req

        lat = HistogramMetricFamily("ln_deploy_request_duration_seconds",
                                    "Infer latency, request read to response ready", labels=["model"])
        for model, (counts, total) in sorted(m._latency.items()):
            cum = _cumulative(counts)
            buckets = [(repr(b), c) for b, c in zip(LATENCY_BUCKETS_S, cum)] + [("+Inf", cum[-1])]
            lat.add_metric([model], buckets, total)
        yield lat

        depth = GaugeMetricFamily("ln_deploy_queue_depth", "Requests waiting for a model instance",
                                  labels=["model"])
        batch = HistogramMetricFamily("ln_deploy_batch_size", "Rows per ONNX Runtime run", labels=["model"])
        for name in sorted(m.models):
            b = m.batchers.get(name)
            if b is None:
                continue
            s = b.stats
            depth.add_metric([name], b.queued)
            sizes = dict(s.batch_sizes)  # copied: worker threads add to it
            counts = [0] * (len(BATCH_BUCKETS) + 1)
            for rows, n in sizes.items():
                counts[bisect_left(BATCH_BUCKETS, rows)] += n
            cum = _cumulative(counts)
            batch.add_metric([name], [(str(b_), c) for b_, c in zip(BATCH_BUCKETS, cum)] + [("+Inf", cum[-1])],
                             sum(rows * n for rows, n in sizes.items()))
        yield depth
        yield batch
