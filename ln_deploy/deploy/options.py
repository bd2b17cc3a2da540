"""``DeployOptions``: every setting of a deploy run, validated in one place before anything runs."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

from ..errors import BadInputError

PRECISIONS = ("fp32", "fp16", "bf16")
TARGETS = ("onnx", "tensorrt")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass
class DeployOptions:
    """Fields (each also a ``deploy`` flag): ``name`` of the Triton model (default: the SPEC's factory
    name), ``precision`` fp32|fp16|bf16, ``target`` onnx|tensorrt, ``repo`` (default WORKDIR/repo),
    ``checkpoint``, ``onnx`` (an ONNX file exported elsewhere to deploy instead of exporting the SPEC:
    check still proves it against the SPEC), ``dynamic_axes`` ({input: {axis: label}} as export takes it), ``opset``,
    ``inputs`` (.npz of real inputs for check), ``atol``/``rtol`` (check tolerance overrides: one
    number for every output, or ``{output name or "": number}``),
    ``plugin`` (the TensorRT plugin library for the tensorrt target), ``max_batch_size`` (the
    largest batch to verify and package; capped at the largest batch check verified), ``force``
    (redo every stage; replace a model folder deploy did not write)."""

    name: str | None = None
    precision: str = "fp32"
    target: str = "onnx"
    repo: str | None = None
    checkpoint: str | None = None
    onnx: str | None = None
    dynamic_axes: dict | None = None
    opset: int | None = None
    inputs: str | None = None
    atol: float | dict | None = None
    rtol: float | dict | None = None
    plugin: str | None = None
    max_batch_size: int = 8
    force: bool = False
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def validate(self) -> "DeployOptions":
        if self.precision not in PRECISIONS:
            raise BadInputError(f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.target not in TARGETS:
            raise BadInputError(f"--target must be one of {', '.join(TARGETS)}, not {self.target!r}")
        if self.name is not None and not _NAME.fullmatch(self.name):
            raise BadInputError(f"--name {self.name!r}: use letters, digits, '_', '.', '-' (at most 128, "
                                "not starting with '.' or '-')")
        for key in ("atol", "rtol"):  # one number (every output) or {output name or "": number}
            v = getattr(self, key)
            values = v.values() if isinstance(v, dict) else [] if v is None else [v]
            if not all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in values):
                raise BadInputError(f"--{key} must be a finite number >= 0, got {v}")
        if not (isinstance(self.max_batch_size, int) and 1 <= self.max_batch_size <= 4096):
            raise BadInputError(f"--max-batch-size must be an integer from 1 to 4096, got {self.max_batch_size}")
        if self.opset is not None and not (isinstance(self.opset, int) and 17 <= self.opset <= 30):
            raise BadInputError(f"--opset must be 17 or more (LayerNormalization), got {self.opset}")
        if self.onnx is not None:
            from pathlib import Path

            if not Path(self.onnx).is_file():
                raise BadInputError(f"--onnx {self.onnx}: no such file")
        if self.checkpoint is not None:
            from pathlib import Path

            if not Path(self.checkpoint).is_file():
                raise BadInputError(f"--checkpoint {self.checkpoint}: no such file")
        if self.inputs is not None:
            from pathlib import Path

            if not Path(self.inputs).is_file():
                raise BadInputError(f"--inputs {self.inputs}: no such file")
        if self.seed < 0:
            raise BadInputError(f"--seed must be >= 0, got {self.seed}")
        return self

    def to_dict(self) -> dict:
        """Every field above by its name."""
        return asdict(self)
