"""``ConvertOptions``: every setting of one ``convert_model`` run, validated when it is made.

Frozen (``dataclasses.replace`` makes a variant, validated again); bad values raise ``BadInputError``
(one line, exit 2) naming the field and the value.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields

from ..errors import BadInputError
from ..keywords import options_with_keywords
from .node_typing import DEFAULT_FP32_OPS, FP16_MAX, PRECISIONS, TARGETS


@dataclass(frozen=True)
class ConvertOptions:
    """Fields (``convert_model``'s keywords):

    - ``precision``: "fp16" or "bf16";
    - ``keep_io_types``: graph inputs and outputs keep their fp32 type (Casts at the edges);
    - ``fp32_ops`` / ``fp32_nodes``: op types / node names always kept in fp32 (tuples of names);
    - ``calibration``: inputs for the measured check: a ``.npz`` path, a dict name -> array, or None
      (the spec's example inputs when ``spec`` is given, else seeded random inputs);
    - ``spec``: a SPEC whose example inputs calibrate, or None;
    - ``force_norm_fp16``: normalization statistics in the low type (the failure demonstration);
    - ``target``: "ort-cpu" (the typed graph ONNX Runtime runs) or "tensorrt" (the pure typed graph);
    - ``measure``: run the fp32 model and the candidate on the calibration inputs and keep in fp32 what
      overflows or loses accuracy;
    - ``data_max``: (fp16) a node touching values beyond this stays fp32 (finite, > 0);
    - ``tolerance``: relative error that sends a node to fp32 (None: 16 unit roundoffs; else finite, > 0);
    - ``max_rounds``: measured rounds at most (>= 0);
    - ``fuse`` / ``fuser``: fuse decomposed normalizations first with ``fuser`` (a callable taking
      ``(model, target="onnx", opset=..., verify=True)``; None: no fusion, with a report note).
    """

    precision: str = "fp16"
    keep_io_types: bool = True
    fp32_ops: tuple = DEFAULT_FP32_OPS
    fp32_nodes: tuple = ()
    calibration: object = None
    spec: str | None = None
    force_norm_fp16: bool = False
    target: str = "ort-cpu"
    measure: bool = True
    data_max: float = FP16_MAX / 4
    tolerance: float | None = None
    max_rounds: int = 4
    fuse: bool = True
    fuser: object = None

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise BadInputError(f"unknown precision {self.precision!r} (choose from {', '.join(PRECISIONS)})")
        if self.target not in TARGETS:
            raise BadInputError(f"unknown target {self.target!r} (choose from {', '.join(TARGETS)})")
        for name in ("fp32_ops", "fp32_nodes"):
            v = getattr(self, name)
            if isinstance(v, str):
                raise BadInputError(f"{name} must be a list of names, not one string ({v!r})")
            v = tuple(v or ())
            if not all(isinstance(x, str) for x in v):
                raise BadInputError(f"{name} must hold names (strings), got {list(v)!r}")
            object.__setattr__(self, name, v)
        if self.calibration is not None and not isinstance(self.calibration, (str, os.PathLike, dict)):
            raise BadInputError(f"calibration must be a .npz path or a dict name -> array, not "
                                f"{type(self.calibration).__name__}")
        if self.spec is not None and not isinstance(self.spec, str):
            raise BadInputError(f"spec must be a SPEC string (path/file.py:NAME), not {type(self.spec).__name__}")
        for name in ("keep_io_types", "force_norm_fp16", "measure", "fuse"):
            if not isinstance(getattr(self, name), bool):
                raise BadInputError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not _positive(self.data_max):
            raise BadInputError(f"data_max must be a finite number > 0, got {self.data_max!r}")
        if self.tolerance is not None and not _positive(self.tolerance):
            raise BadInputError(f"tolerance must be None or a finite number > 0, got {self.tolerance!r}")
        if isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int) or self.max_rounds < 0:
            raise BadInputError(f"max_rounds must be an integer >= 0, got {self.max_rounds!r}")
        if self.fuser is not None and not callable(self.fuser):
            raise BadInputError(f"fuser must be a callable (ln_deploy.fuse.fuse_model) or None, "
                                f"not {type(self.fuser).__name__}")

    @classmethod
    def from_call(cls, options: "ConvertOptions | None", precision: str | None, kwargs: dict) -> "ConvertOptions":
        """``options`` with ``precision`` (when not None) and ``kwargs`` (``convert_model``'s keywords)
        applied over it; unknown names are a ``TypeError``, as for any Python call."""
        if precision is not None:
            kwargs = {**kwargs, "precision": precision}
        return options_with_keywords(cls, options, kwargs, "convert_model")

    def to_dict(self) -> dict:
        """Every field above by its name, except ``fuser`` (given as its qualified name) and a dict of
        calibration arrays (given as its input names)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "fuser":
                v = None if v is None else f"{getattr(v, '__module__', '?')}.{getattr(v, '__qualname__', '?')}"
            elif isinstance(v, dict):
                v = sorted(v)
            elif isinstance(v, os.PathLike):
                v = str(v)
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out


def _positive(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v > 0
