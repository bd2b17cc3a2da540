"""``CheckOptions``: every setting of one ``check_model`` run, validated when it is made.

Frozen, so the steps of a check (``api.CheckRun``) read one set of settings that nothing changes
half-way; ``dataclasses.replace`` makes a variant (validated again). Bad values raise
``BadInputError`` (one line, exit 2) naming the field and the value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from ..errors import BadInputError
from ..keywords import options_with_keywords
from .tolerances import PRECISIONS

INPUT_SOURCES = ("example", "random")  # or None (both), or the path of a .npz
TORCH_DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class CheckOptions:
    """Fields (``check_model``'s keywords):

    - ``checkpoint``: weights for the SPEC (a path), or None;
    - ``engine``: a TensorRT engine built from the ONNX model (run where TensorRT and a GPU are present);
    - ``plugins``: plugin libraries loaded before deserializing the engine (a tuple of paths);
    - ``precision``: "auto" (read from the model) or one of ``tolerances.PRECISIONS``: selects the tolerances;
    - ``report_dir``: where report.json, report.md, plots and run_results.json go, or None;
    - ``inputs``: None (example inputs + one seeded random batch), "example", "random", or a .npz path;
    - ``seed``: seed of the random inputs (>= 0);
    - ``tolerances``: ``{"atol": ..., "rtol": ...}`` overrides (a number or ``{output: number}`` each), or None;
    - ``localise``: compare every normalization's output and report the first that diverges;
    - ``invariance``: run the train/eval, batch, sequence and padding invariance checks;
    - ``batch_size``: batch of the batch-independence check (>= 2);
    - ``threads``: ONNX Runtime intra-op threads (None or 0: ORT's default);
    - ``plots``: write error-distribution PNGs with the report;
    - ``torch_device``: where the PyTorch reference runs ("cpu" or "cuda");
    - ``max_batch``: also verify the graph's batch axis at this size (>= 1), or None.
    """

    checkpoint: str | os.PathLike | None = None
    engine: str | os.PathLike | None = None
    plugins: tuple = ()
    precision: str = "auto"
    report_dir: str | os.PathLike | None = None
    inputs: str | os.PathLike | None = None
    seed: int = 0
    tolerances: dict | None = None
    localise: bool = True
    invariance: bool = True
    batch_size: int = 4
    threads: int | None = None
    plots: bool = True
    torch_device: str = "cpu"
    max_batch: int | None = None

    def __post_init__(self):
        if isinstance(self.plugins, (str, os.PathLike)):
            raise BadInputError(f"plugins must be a list of library paths, not one string ({self.plugins!r})")
        object.__setattr__(self, "plugins", tuple(self.plugins or ()))
        if self.precision not in PRECISIONS + ("auto",):
            raise BadInputError(f"precision must be auto, {', '.join(PRECISIONS)}; not {self.precision!r}")
        if not _is_int(self.batch_size) or self.batch_size < 2:
            raise BadInputError(f"batch_size must be at least 2 (a sample must have neighbours), got {self.batch_size!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise BadInputError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 0):
            raise BadInputError(f"threads must be an integer >= 0 (0: ONNX Runtime's default), got {self.threads!r}")
        if self.max_batch is not None and (not _is_int(self.max_batch) or self.max_batch < 1):
            raise BadInputError(f"max_batch must be an integer >= 1, got {self.max_batch!r}")
        if self.torch_device not in TORCH_DEVICES:
            raise BadInputError(f"torch_device must be one of {', '.join(TORCH_DEVICES)}, not {self.torch_device!r}")
        if self.inputs is not None and not isinstance(self.inputs, (str, os.PathLike)):
            raise BadInputError(f"inputs must be None, {' or '.join(map(repr, INPUT_SOURCES))} or the path of a "
                                f".npz, not {type(self.inputs).__name__}")
        if self.tolerances is not None:
            if not isinstance(self.tolerances, dict):
                raise BadInputError(f"tolerances must be a dict such as {{'atol': 1e-3}}, not "
                                    f"{type(self.tolerances).__name__}")
            from .tolerances import make_profile

            make_profile("fp32", self.tolerances)  # the same rules (and messages) the check applies
        for name in ("localise", "invariance", "plots"):
            if not isinstance(getattr(self, name), bool):
                raise BadInputError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @classmethod
    def from_call(cls, options: "CheckOptions | None", kwargs: dict) -> "CheckOptions":
        """``options`` with ``kwargs`` (``check_model``'s keywords) applied over it; unknown names are a
        ``TypeError``, as for any Python call."""
        return options_with_keywords(cls, options, kwargs, "check_model")

    def to_dict(self) -> dict:
        """Every field above, by its name (paths as strings)."""
        return {f.name: (str(v) if isinstance(v, os.PathLike) else list(v) if isinstance(v, tuple) else v)
                for f in fields(self) for v in [getattr(self, f.name)]}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)

