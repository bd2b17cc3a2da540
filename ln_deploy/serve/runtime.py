"""ONNX Runtime sessions for serving: which model, which providers, what it takes and returns."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInputError, MissingDependencyError
from ..signature import Signature, numpy_dtype, onnx_signature

log = logging.getLogger(__name__)


class InferenceError(Exception):
    """ONNX Runtime refused a request's tensors (``client_error``) or failed on its own."""

    def __init__(self, message: str, client_error: bool):
        super().__init__(message)
        self.client_error = client_error


def choose_providers(device: str = "auto") -> list[str]:
    """CUDA when asked for or present (``auto``), always with the CPU provider as fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise MissingDependencyError("ONNX Runtime's CUDA execution provider",
                                         "pip install 'ln_deploy[gpu]' on a machine with an NVIDIA GPU")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device != "auto":
        raise BadInputError(f"--device must be auto, cpu or cuda, got {device!r}")
    return (["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in available
            else ["CPUExecutionProvider"])


@dataclass
class ServedModel:
    """One model behind the server: its session, signature and batching limit."""

    name: str
    version: str
    path: Path
    session: object  # onnxruntime.InferenceSession
    signature: Signature
    max_batch_size: int  # 0 = requests run one by one, no batch axis required
    batch_window_s: float
    providers: list[str]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.signature.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.signature.outputs]

    def run(self, feeds: dict) -> dict:
        """One ONNX Runtime call; releases the GIL while it computes."""
        try:
            results = self.session.run(self.output_names, feeds)
        except Exception as e:  # noqa: BLE001 - classified below
            name = type(e).__name__
            msg = str(e).strip().splitlines()[0][:500] if str(e).strip() else name
            raise InferenceError(msg, client_error=name in ("InvalidArgument", "Fail", "InvalidGraph")) from None
        return dict(zip(self.output_names, results))


# ORT's pool threads spin at most this long per wait for work: a run's parallel sections get the
# spinning's fast hand-over, and the threads sleep within 0.2 ms of a run's end instead of spinning
# on into the time the event loop needs. Chosen by benchmarks/bench_serve.py --sweep (docs/serving.md).
DEFAULT_SPIN_US = 200


def session_options(intra_op_threads: int = 0, spin: bool | int = DEFAULT_SPIN_US):
    """The ONNX Runtime session options the server uses (the benchmark's direct baseline uses them too)."""
    from .. import ort as ln_ort

    return ln_ort.session_options(server_session_config(intra_op_threads, spin=spin))


def server_session_config(intra_op_threads: int = 0, level: str = "all", spin: bool | int = DEFAULT_SPIN_US):
    """The server's ``ln_deploy.ort.SessionConfig``. ``spin``: False (off), True (ORT's own spinning),
    or microseconds (on, each wait for work bounded to that long). ORT's pool threads spin while
    waiting for work by default, and keep spinning well after a run ends: right for a benchmark
    loop, wrong for a server, where the spinning steals the cores the event loop needs to parse
    requests; a bound of a few hundred µs keeps the spinning inside a run (docs/serving.md)."""
    from ..ort import SessionConfig

    if spin is True or spin is False:
        return SessionConfig(level=level, threads=intra_op_threads, spinning=spin)
    return SessionConfig(level=level, threads=intra_op_threads, spinning=True, spin_us=spin)


def spin_text(spin: bool | int) -> str:
    """'off', 'on' or '200 µs' (for logs and reports)."""
    return "on" if spin is True else "off" if spin is False else f"bounded to {spin} µs"


def parse_spin(text: str) -> bool | int:
    """``--spin`` value: ``off``, ``on`` or a whole number of microseconds (> 0)."""
    t = str(text).strip().lower()
    if t in ("on", "off"):
        return t == "on"
    if t.isdigit() and int(t) > 0:
        return int(t)
    raise ValueError(f"--spin must be on, off or a number of microseconds > 0, got {text!r}")


def load_served_model(path: str | os.PathLike, name: str, *, max_batch_size: int | None = None,
                      batch_window_s: float = 0.001, device: str = "auto", version: str = "1",
                      intra_op_threads: int = 0, spin: bool | int = DEFAULT_SPIN_US) -> ServedModel:
    """Open ``path`` in ONNX Runtime. ``max_batch_size`` None: 8 when the model can batch, else 0."""
    from ..fileio import load_onnx

    path = Path(path)
    model = load_onnx(path)  # untrusted file: checker and external-data path checks first
    sig = onnx_signature(model)
    for t in (*sig.inputs, *sig.outputs):
        if numpy_dtype(t.datatype) is None:
            raise BadInputError(f"{path}: tensor {t.name!r} is {t.datatype}, which `ln-deploy serve` cannot "
                                "carry (NumPy has no such type); serve it with Triton")
    reason = sig.not_batchable_reason()
    if max_batch_size is None:
        max_batch_size = 0 if reason else 8
    elif max_batch_size > 0 and reason:
        raise BadInputError(f"{path}: cannot batch requests ({reason}); use --max-batch-size 0")
    if max_batch_size < 0:
        raise BadInputError(f"--max-batch-size must be >= 0, got {max_batch_size}")
    providers = choose_providers(device)
    from ..ort import OrtCrash, first_line, open_deployable

    config = server_session_config(intra_op_threads, spin=spin).replace(provider=providers[0])
    try:
        # an untrusted file: probed in a child process first (cached by hash), opened with a known
        # crashing ORT optimizer disabled (or at a lower level) where the probe shows the crash
        session, deployable = open_deployable(str(path), config, what=str(path))
    except OrtCrash as e:
        raise BadInputError(f"{e}; not served") from None
    except Exception as e:  # noqa: BLE001 - e.g. custom ops ORT does not know
        raise BadInputError(f"ONNX Runtime cannot open {path}: {first_line(e)}") from None
    if deployable.worked_around:
        log.warning("%s", deployable.note(str(path)))
    del model
    return ServedModel(name, version, path, session, sig, max_batch_size, batch_window_s,
                       list(session.get_providers()))
