"""Model specs: ``path/to/file.py:NAME`` or ``package.module:NAME`` → a module and its example inputs.

``NAME`` is a callable returning an ``nn.Module`` or ``(module, example_inputs)``. A module returned
alone must carry ``example_inputs`` as an attribute. Checkpoints load without arbitrary unpickling:
safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadInputError


@dataclass
class LoadedModel:
    spec: str
    module: Any  # torch.nn.Module, in eval() mode
    example_inputs: tuple  # of torch.Tensor, positional
    input_names: list[str]
    output_names: list[str] = field(default_factory=list)

    @property
    def is_recurrent(self) -> bool:
        return is_recurrent(self.module)


def is_recurrent(module) -> bool:
    """A recurrent model follows ln_deploy's protocol: ``step(x_t, *state) -> (y_t, *state)`` and
    ``initial_state(batch_size) -> tuple``; its ``forward(x)`` loops over time (batch-first)."""
    return callable(getattr(module, "step", None)) and callable(getattr(module, "initial_state", None))


def _split_spec(spec: str) -> tuple[str, str]:
    if not isinstance(spec, str) or ":" not in spec:
        raise BadInputError(f"model spec {spec!r} must be 'path/to/file.py:NAME' or 'package.module:NAME'")
    target, _, name = spec.rpartition(":")
    if not target or not name.isidentifier():
        raise BadInputError(f"model spec {spec!r}: {name!r} is not a valid Python name")
    return target, name


def _import_target(target: str):
    if target.endswith(".py") or os.sep in target or "/" in target:
        path = Path(target)
        if not path.exists():
            raise BadInputError(f"model file not found: {path}")
        if not path.is_file() or path.suffix != ".py":
            raise BadInputError(f"model file must be a .py file: {path}")
        path = path.resolve()
        mod_name = "_ln_deploy_spec_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        if mod_name in sys.modules:
            return sys.modules[mod_name]
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        # The file's folder goes on sys.path so it can import its siblings, as `python file.py` would.
        sys.path.insert(0, str(path.parent))
        try:
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as e:  # a file that calls sys.exit() must not end ln-deploy silently
            sys.modules.pop(mod_name, None)
            raise BadInputError(f"importing {path} failed: {type(e).__name__}: {_one_line(e)}") from None
        finally:
            sys.path.remove(str(path.parent))
        return module
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        raise BadInputError(f"cannot import module {target!r}: {_one_line(e)}") from None
    except (Exception, SystemExit) as e:
        raise BadInputError(f"importing {target!r} failed: {type(e).__name__}: {_one_line(e)}") from None


def weights_fingerprint(module) -> str:
    """sha256 of a module's state_dict (names, dtypes, shapes, bytes): export records it, check
    compares it, so a check never runs against weights other than the exported ones."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{t.numel()}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_spec(spec: str, checkpoint: str | os.PathLike | None = None) -> LoadedModel:
    """Import the spec, call its factory, load the checkpoint, return the model in eval() mode."""
    import torch

    target, name = _split_spec(spec)
    module = _import_target(target)
    if not hasattr(module, name):
        raise BadInputError(f"{target} has no attribute {name!r}")
    factory = getattr(module, name)
    if not callable(factory):
        raise BadInputError(f"{spec}: {name!r} is not callable")
    try:
        # Seeded (and the caller's RNG state restored): a factory that builds random weights builds
        # the same ones for `export` and for `check`, which load the SPEC separately.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            made = factory()
    except (Exception, SystemExit) as e:
        raise BadInputError(f"{spec}: the factory raised {type(e).__name__}: {_one_line(e)}") from None

    if isinstance(made, (tuple, list)) and len(made) == 2 and isinstance(made[0], torch.nn.Module):
        model, example = made
    elif isinstance(made, torch.nn.Module):
        model, example = made, getattr(made, "example_inputs", None)
        if example is None:
            raise BadInputError(f"{spec}: the factory returned a module without example inputs; "
                                "return (module, example_inputs) or set module.example_inputs")
    else:
        raise BadInputError(f"{spec}: the factory returned {type(made).__name__}, "
                            "not an nn.Module or (nn.Module, example_inputs)")
    example = _as_input_tuple(spec, example)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    model.eval()
    names = forward_input_names(model, len(example))
    return LoadedModel(spec=spec, module=model, example_inputs=example, input_names=names)


def _as_input_tuple(spec: str, example) -> tuple:
    import torch

    if isinstance(example, torch.Tensor):
        example = (example,)
    if not isinstance(example, (tuple, list)) or not example:
        raise BadInputError(f"{spec}: example inputs must be a tensor or a non-empty tuple of tensors")
    for i, t in enumerate(example):
        if not isinstance(t, torch.Tensor):
            raise BadInputError(f"{spec}: example input {i} is {type(t).__name__}, not a tensor")
        if t.numel() == 0:
            raise BadInputError(f"{spec}: example input {i} is empty (shape {list(t.shape)}): nothing to export "
                                "or compare")
    return tuple(example)


def forward_input_names(model, n: int) -> list[str]:
    """The names of forward's first ``n`` parameters: the ONNX input names the exporter uses."""
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:n]]
    return names + [f"input_{i}" for i in range(len(names), n)]


def load_checkpoint(model, path: str | os.PathLike) -> None:
    """Load weights without executing code from the file: safetensors, or torch.load(weights_only=True)."""
    import pickle

    import torch

    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as e:
            raise BadInputError(f"checkpoint {p} is not a valid safetensors file: {_one_line(e)}") from None
    else:
        try:
            with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says enough
                warnings.simplefilter("ignore")
                state = torch.load(str(p), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            # torch's message is a page of advice; keep the line that says what was refused
            why = next((ln.strip() for ln in str(e).splitlines() if "nsupported" in ln), "")
            raise BadInputError(f"checkpoint {p} needs arbitrary unpickling (refused: it could run code); "
                                f"save a state_dict or use safetensors" + (f" ({why[:160]})" if why else "")) from None
        except Exception as e:
            raise BadInputError(f"checkpoint {p} cannot be read: {type(e).__name__}: {_one_line(e)[:200]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInputError(f"checkpoint {p} does not hold a state_dict of tensors")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BadInputError(f"checkpoint {p} does not match the model: {_one_line(e)[:300]}") from None


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
