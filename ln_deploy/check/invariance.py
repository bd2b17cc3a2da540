"""Layer normalization's defining properties, checked on PyTorch and on every deployed runtime.

- train/eval consistency (PyTorch only: a deployed graph has no training mode): the model in ``train()``
  with dropout and drop path disabled, and BatchNorm-style running-statistics norms held in ``eval()``,
  gives the same outputs as in ``eval()``;
- batch independence: each sample run alone gives the same outputs as inside a batch of other random
  samples (up to rounding: ``|a - b| <= atol + rtol * |b|``, the profile's invariance tolerance); the
  bitwise variant (zero differing bits) is reported beside it, and required for TensorRT engines;
- sequence independence (models with ``causal = True`` and recurrent models): outputs at the first
  positions do not change when the sequence grows;
- padding does not leak (models with ``padding_mask_input``): changing the values at padded positions does
  not change the outputs at real positions.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass
class InvarianceResult:
    """One invariance check on one runtime. ``to_dict()``: ``check`` (its name), ``runtime``, ``status``
    (passed | failed | skipped), ``message`` (one line) and ``stats`` (omitted when empty)."""

    check: str
    runtime: str
    status: str
    message: str = ""
    stats: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    def to_dict(self) -> dict:
        """The fields by name (``stats`` only when not empty)."""
        return {"check": self.check, "runtime": self.runtime, "status": self.status,
                "message": self.message, **({"stats": self.stats} if self.stats else {})}


@dataclass
class Backend:
    """An activated Polygraphy runner plus what invariance checks need to know about it."""

    name: str
    runner: object
    dynamic_batch: bool = True
    dynamic_seq: bool = True
    input_dtypes: dict = field(default_factory=dict)  # name -> numpy dtype the runtime takes
    require_bitwise: bool = False
    is_torch: bool = False

    def infer(self, feed) -> "OrderedDict[str, object]":
        import numpy as np

        cast = OrderedDict()
        for k, v in feed.items():
            want = self.input_dtypes.get(k)
            cast[k] = v.astype(want) if want is not None and v.dtype != want else v
        out = self.runner.infer(cast, check_inputs=not self.is_torch)
        return OrderedDict((k, np.array(v, copy=True)) for k, v in out.items())


def _allclose_stats(a, b, atol, rtol) -> dict:
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    diff = np.abs(a - b)
    nan_mismatch = int(np.count_nonzero(np.isnan(a) != np.isnan(b)))
    diff = np.where(np.isnan(a) & np.isnan(b), 0.0, diff)
    bound = atol + rtol * np.abs(b)
    bad = ~(diff <= bound)
    return {"max_abs": float(np.nanmax(diff)) if diff.size else 0.0,
            "violations": int(np.count_nonzero(bad)) + nan_mismatch, "numel": int(diff.size)}


def _bits_equal(a, b) -> bool:
    import numpy as np

    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _tol_text(atol, rtol) -> str:
    return f"atol {atol:g} + rtol {rtol:g}·|ref|"


# Modules whose training-mode forward is random by design: dropout (torch.nn and any class named so),
# drop path / stochastic depth (timm DropPath, Hugging Face *DropPath, torchvision StochasticDepth) and
# DropBlock. train_eval holds them in eval(); anything random it cannot reach makes the check skip.
_STOCHASTIC_NAMES = ("Dropout", "DropPath", "StochasticDepth", "DropBlock")
# Float rates read in training mode: nn.MultiheadAttention.dropout, and a dropout module's own p, which
# attention code passes to a functional call (Hugging Face: `dropout=self.dropout.p if self.training
# else 0.0`); drop_prob: a drop-path rate a block passes to a functional drop_path.
_RATE_ATTRS = ("dropout", "attention_dropout", "attn_dropout", "dropout_p", "drop_prob", "p")


def _is_stochastic(m) -> bool:
    import torch

    return isinstance(m, torch.nn.modules.dropout._DropoutNd) or any(s in type(m).__name__ for s in _STOCHASTIC_NAMES)


def _has_running_stats(m) -> bool:
    import torch

    return isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats


def _kinds(modules) -> str:
    from collections import Counter

    return ", ".join(f"{k} ×{n}" if n > 1 else k for k, n in Counter(type(m).__name__ for m in modules).items())


def train_eval(torch_runner, feed, atol, rtol) -> InvarianceResult:
    """train() with every dropout disabled must equal eval().

    Normalizations with running statistics (BatchNorm, InstanceNorm with ``track_running_stats``) are
    held in eval() like dropout: they differ between train() and eval() by design (batch statistics
    against running ones), the deployed graph is the eval() one, and train() would also overwrite their
    running statistics, changing the reference model. The message names how many were held; what is
    left is layer normalization's claim, the same computation at training and test time, and any
    ``if self.training`` branch of the model's own.
    """
    import torch

    module = torch_runner.module
    ref = [o.detach().float().cpu() for o in torch_runner.forward(feed)]
    saved_modes = {m: m.training for m in module.modules()}
    saved_p = {}
    held = [m for m in module.modules() if _has_running_stats(m)]
    try:
        module.train()
        for m in module.modules():
            if _is_stochastic(m) or _has_running_stats(m):
                m.eval()
            for attr in _RATE_ATTRS:
                v = getattr(m, attr, None)
                if isinstance(v, float) and v > 0 and (attr != "p" or _is_stochastic(m)):
                    saved_p[(m, attr)] = v
                    setattr(m, attr, 0.0)

        def run(seed):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return [o.detach().float().cpu() for o in torch_runner.forward(feed)]

        got = run(1)
        # train() still random after that (dropout the check cannot reach): not a train/eval bug
        stochastic = any(not torch.equal(a, b) for a, b in zip(got, run(2)))
    finally:
        for (m, attr), v in saved_p.items():
            setattr(m, attr, v)
        for m, mode in saved_modes.items():
            m.training = mode
    worst = {"max_abs": 0.0, "violations": 0}
    for a, b in zip(got, ref):
        s = _allclose_stats(a.numpy(), b.numpy(), atol, rtol)
        worst["max_abs"] = max(worst["max_abs"], s["max_abs"])
        worst["violations"] += s["violations"]
    held_text = f" and {len(held)} running-statistics normalization{'s' * (len(held) != 1)} ({_kinds(held)}) " \
                f"held in eval()" if held else ""
    if held:
        worst["held_in_eval"] = len(held)
    if worst["violations"] and stochastic:
        return InvarianceResult("train_eval", torch_runner.name, SKIPPED,
                                "train() gives different outputs on two runs even with every dropout module and rate "
                                "set to 0 (randomness the check cannot switch off), so it cannot be compared with eval()",
                                worst)
    if worst["violations"]:
        return InvarianceResult("train_eval", torch_runner.name, FAILED,
                                f"train() (dropout off{held_text}) differs from eval() by up to "
                                f"{worst['max_abs']:.3g} ({_tol_text(atol, rtol)}): the model computes something "
                                f"else in training mode", worst)
    return InvarianceResult("train_eval", torch_runner.name, PASSED,
                            f"train() with dropout off{held_text} equals eval() (max diff {worst['max_abs']:.2g})",
                            worst)


def _slice(feed, sl, axis, only=None):
    """``feed`` with ``sl`` taken along ``axis`` of every input (of the inputs in ``only``, when given:
    an input without a batch axis, such as a bias passed as a keyword argument, is passed whole)."""
    out = OrderedDict()
    for k, v in feed.items():
        if only is not None and k not in only:
            out[k] = v
            continue
        idx = [slice(None)] * v.ndim
        idx[axis] = sl
        out[k] = v[tuple(idx)]
    return out


def batch_independence(backend: Backend, feed, atol, rtol, batch_dependent_modules=(),
                       batch_inputs=None) -> list[InvarianceResult]:
    """Each sample alone vs. inside ``feed``'s batch; returns the tolerance result and the bitwise one.
    ``batch_inputs``: the inputs with a batch axis (default: all)."""
    if not backend.dynamic_batch:
        r = InvarianceResult("batch_independence", backend.name, SKIPPED,
                             "the model's batch axis is static in this runtime")
        return [r, InvarianceResult("batch_independence_bitwise", backend.name, SKIPPED, r.message)]
    batch = next(v for k, v in feed.items() if batch_inputs is None or k in batch_inputs).shape[0]
    full = backend.infer(feed)
    worst = {"max_abs": 0.0, "violations": 0, "worst_sample": None, "worst_output": None, "batch": batch,
             "bitwise_identical_samples": 0}
    for i in range(batch):
        alone = backend.infer(_slice(feed, slice(i, i + 1), 0, batch_inputs))
        identical = True
        for name, out in full.items():
            if out.ndim == 0 or out.shape[0] != batch:
                continue
            s = _allclose_stats(alone[name][0], out[i], atol, rtol)
            identical &= _bits_equal(alone[name][0], out[i])
            if s["max_abs"] >= worst["max_abs"]:
                worst.update(max_abs=s["max_abs"], worst_sample=i, worst_output=name)
            worst["violations"] += s["violations"]
        worst["bitwise_identical_samples"] += int(identical)
    results = []
    if worst["violations"]:
        hint = ""
        if batch_dependent_modules:
            hint = ("; normalizations using batch statistics: " + ", ".join(batch_dependent_modules))
        results.append(InvarianceResult(
            "batch_independence", backend.name, FAILED,
            f"sample {worst['worst_sample']}'s output {worst['worst_output']!r} changes by up to "
            f"{worst['max_abs']:.3g} when run inside a batch of {batch} instead of alone "
            f"({_tol_text(atol, rtol)}): the result depends on the other samples in the batch{hint}", worst))
    else:
        results.append(InvarianceResult(
            "batch_independence", backend.name, PASSED,
            f"{batch} samples alone match the batch (max diff {worst['max_abs']:.2g})", worst))
    bitwise = worst["bitwise_identical_samples"] == batch
    msg = (f"{worst['bitwise_identical_samples']}/{batch} samples bit-identical alone and in the batch")
    if bitwise:
        status = PASSED
    elif backend.require_bitwise:
        status = FAILED
        msg += " (required for TensorRT engines: the kernels' reduction order must not depend on the row count)"
    else:
        status = PASSED
        msg += " (informational for this runtime; rounding-level differences are allowed)"
    results.append(InvarianceResult("batch_independence_bitwise", backend.name, status, msg,
                                    {"bitwise_identical_samples": worst["bitwise_identical_samples"],
                                     "batch": batch, "required": backend.require_bitwise}))
    return results


def sequence_independence(backend: Backend, feed, seq_inputs, atol, rtol) -> InvarianceResult:
    """Outputs at positions < T1 from a sequence of T1 equal those from the full sequence of T."""
    if not backend.dynamic_seq:
        return InvarianceResult("sequence_independence", backend.name, SKIPPED,
                                "the model's sequence axis is static in this runtime")
    first = next(iter(feed.values()))
    total = first.shape[1]
    if total < 2:
        return InvarianceResult("sequence_independence", backend.name, SKIPPED, "sequence of length 1")
    prefix = max(1, total // 2)
    short = OrderedDict((k, v[:, :prefix] if k in seq_inputs else v) for k, v in feed.items())
    full = backend.infer(feed)
    part = backend.infer(short)
    worst = {"max_abs": 0.0, "violations": 0, "prefix": prefix, "length": total}
    for name, out in full.items():
        if out.ndim < 2 or out.shape[1] != total:
            continue
        s = _allclose_stats(part[name], out[:, :prefix], atol, rtol)
        worst["max_abs"] = max(worst["max_abs"], s["max_abs"])
        worst["violations"] += s["violations"]
    if worst["violations"]:
        return InvarianceResult("sequence_independence", backend.name, FAILED,
                                f"outputs at the first {prefix} positions change by up to {worst['max_abs']:.3g} "
                                f"when the sequence grows to {total} ({_tol_text(atol, rtol)}): "
                                "later positions leak into earlier ones", worst)
    return InvarianceResult("sequence_independence", backend.name, PASSED,
                            f"first {prefix} positions unchanged when the sequence grows to {total} "
                            f"(max diff {worst['max_abs']:.2g})", worst)


def padding_leak(backend: Backend, feed, mask_name, seq_inputs, rng, atol, rtol) -> InvarianceResult:
    """Re-randomize every padded position of the sequence inputs; real positions' outputs must not move."""
    import numpy as np

    mask = np.asarray(feed[mask_name])
    pad = mask < 0.5
    if not pad.any():
        return InvarianceResult("padding_leak", backend.name, SKIPPED, "the batch has no padded position")
    changed = OrderedDict()
    for k, v in feed.items():
        if k in seq_inputs and k != mask_name and np.issubdtype(v.dtype, np.floating):
            v = v.copy()
            v[pad] = (rng.standard_normal(v[pad].shape) * 3.0).astype(v.dtype)
        changed[k] = v
    a, b = backend.infer(feed), backend.infer(changed)
    real = ~pad
    worst = {"max_abs": 0.0, "violations": 0, "padded_positions": int(pad.sum())}
    for name, out in a.items():
        if out.ndim < 2 or out.shape[:2] != mask.shape:
            continue
        s = _allclose_stats(b[name][real], out[real], atol, rtol)
        worst["max_abs"] = max(worst["max_abs"], s["max_abs"])
        worst["violations"] += s["violations"]
    if worst["violations"]:
        return InvarianceResult("padding_leak", backend.name, FAILED,
                                f"changing the values at {worst['padded_positions']} padded positions changes "
                                f"real positions' outputs by up to {worst['max_abs']:.3g} ({_tol_text(atol, rtol)})",
                                worst)
    return InvarianceResult("padding_leak", backend.name, PASSED,
                            f"padded positions do not leak into real ones (max diff {worst['max_abs']:.2g})", worst)


def batch_statistics_modules(module) -> list[str]:
    """Normalizations whose eval() output depends on the batch (BatchNorm without running statistics)."""
    import torch

    out = []
    for n, m in module.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not m.track_running_stats:
            out.append(f"{n} ({type(m).__name__} without running statistics)")
    return out


def kernel_bitwise_invariance(norm_shapes) -> list[InvarianceResult]:
    """Issue 9's bitwise batch-invariance check of ln_deploy's normalization kernels, on a GPU.

    ``norm_shapes``: {(kind, hidden)} from the model's normalizations. Reported as skipped (with why)
    when there is no GPU or no kernel library."""
    import importlib

    from .runners import cuda_available

    name = "kernel_batch_invariance_bitwise"
    if not norm_shapes:
        return [InvarianceResult(name, "ln_deploy kernels", SKIPPED, "the model has no layer/RMS normalization")]
    if not cuda_available():
        return [InvarianceResult(name, "ln_deploy kernels", SKIPPED, "no CUDA GPU is visible")]
    try:
        kernels = importlib.import_module("ln_deploy.kernels")
        fn = kernels.bitwise_batch_invariance
    except (ImportError, AttributeError) as e:
        return [InvarianceResult(name, "ln_deploy kernels", SKIPPED,
                                 f"ln_deploy.kernels.bitwise_batch_invariance is not available ({type(e).__name__})")]
    results = []
    for kind, hidden in sorted(norm_shapes):
        for dtype in ("float32", "float16", "bfloat16"):
            try:
                r = fn(kind, hidden, dtype)
            except Exception as e:  # a kernel library that is present but not built
                results.append(InvarianceResult(name, f"{kind}[{hidden}] {dtype}", SKIPPED,
                                                f"kernel run failed: {type(e).__name__}: {str(e)[:200]}"))
                continue
            # ln_deploy.kernels returns {"invariant": bool, "differing_bits": int, "cases": [...], ...}
            ok = r.get("invariant") if isinstance(r, dict) else (r if isinstance(r, bool) else None)
            stats = {k: v for k, v in r.items() if k in ("invariant", "differing_bits", "cases")} \
                if isinstance(r, dict) else {}
            if ok is None:
                results.append(InvarianceResult(name, f"{kind}[{hidden}] {dtype}", SKIPPED,
                                                f"unrecognised result {type(r).__name__}"))
            else:
                results.append(InvarianceResult(name, f"{kind}[{hidden}] {dtype}", PASSED if ok else FAILED,
                                                "zero differing bits alone and at first/middle/last positions of "
                                                "batches of 3, 1000 and 100000 rows" if ok else
                                                f"{stats.get('differing_bits', '?')} differing bits between a row alone "
                                                "and the same row inside batches",
                                                stats))
    return results
