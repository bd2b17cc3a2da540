"""Model specs: ``path/to/file.py:NAME`` or ``package.module:NAME`` → a module and its example inputs.

``NAME`` is a callable returning an ``nn.Module``, ``(module, example_inputs)`` or
``(module, example_args, example_kwargs)``. A module returned alone must carry ``example_inputs`` as an
attribute. Example inputs are a tensor, a tuple of positional arguments, or a dict of keyword arguments;
any argument may be a nested tuple/list/dict whose tensor leaves become model inputs and whose other
leaves (ints, floats, None, strings) are held constant. Checkpoints load without arbitrary unpickling:
safetensors, or ``torch.load(weights_only=True)``.

The rest of ln_deploy sees a flat list of input tensors (``example_inputs``) named after forward()'s
arguments (``input_names``: ``x``, ``args.0``, ``pair.1.0`` for nested leaves, a ``**kwargs`` key as
itself); ``LoadedModel.call(*flat)`` rebuilds the argument tree and returns the output's tensors, flat,
named by ``output_names_of`` (``output``, ``output_0``..., or a dict's / ModelOutput's field names).
"""

from __future__ import annotations

import contextlib
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
    # forward()'s argument tree with tensor leaves replaced by their index in example_inputs (None:
    # plain positional tensors, forward(*example_inputs)).
    args_tree: tuple | None = None
    kwargs_tree: dict | None = None

    @property
    def is_recurrent(self) -> bool:
        return is_recurrent(self.module)

    @property
    def plain(self) -> bool:
        """forward(*example_inputs): positional tensors only, no rebuilding needed."""
        return self.args_tree is None

    def arguments(self, flat) -> tuple[tuple, dict]:
        """forward()'s (args, kwargs) with the tensors ``flat`` (in ``input_names`` order) at the leaves."""
        if self.args_tree is None:
            return tuple(flat), {}
        return _fill(self.args_tree, flat), _fill(self.kwargs_tree or {}, flat)

    def call(self, *flat) -> tuple:
        """Run forward() on flat input tensors; returns the output's tensors, flattened (see flatten_output)."""
        args, kwargs = self.arguments(flat)
        with attributes_restored(self.module):
            return tuple(t for _, t in flatten_output(self.module(*args, **kwargs)))


@contextlib.contextmanager
def attributes_restored(module):
    """Every forward (or trace) ln_deploy runs leaves the model's Python attributes as it found them.

    Some models rewrite their own attributes in forward(): Hugging Face's Swin shrinks each layer's
    window to the input's resolution, for good, so one probe at a small image broke every later call
    at the example size (and the reference ``check`` compares with). Each submodule's attributes are
    put back by identity afterwards; parameters, buffers and submodules are the model's declared
    state and are not touched."""
    saved = [(m, dict(m.__dict__)) for m in module.modules()] if hasattr(module, "modules") else []
    try:
        yield
    finally:
        for m, before in saved:
            now = m.__dict__
            for key in [k for k in now if k not in before]:
                del now[key]
            for key, value in before.items():
                if now.get(key, _MISSING) is not value:
                    now[key] = value


_MISSING = object()


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

    kwargs = None
    if isinstance(made, (tuple, list)) and len(made) in (2, 3) and isinstance(made[0], torch.nn.Module):
        model, example = made[0], made[1]
        if len(made) == 3:
            kwargs = made[2]
            if not isinstance(kwargs, dict):
                raise BadInputError(f"{spec}: the factory's third item (example keyword arguments) is "
                                    f"{type(kwargs).__name__}, not a dict")
    elif isinstance(made, torch.nn.Module):
        model, example = made, getattr(made, "example_inputs", None)
        if example is None:
            raise BadInputError(f"{spec}: the factory returned a module without example inputs; "
                                "return (module, example_inputs) or set module.example_inputs")
    else:
        raise BadInputError(f"{spec}: the factory returned {type(made).__name__}, "
                            "not an nn.Module or (nn.Module, example_inputs)")
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    model.eval()
    return structure_inputs(spec, model, example, kwargs)


def structure_inputs(spec: str, model, example, kwargs=None) -> LoadedModel:
    """A LoadedModel for ``model`` and its example: a tensor, a tuple of positional arguments, or a dict
    of keyword arguments (``kwargs`` adds keyword arguments to a tuple). Tensor leaves of nested
    containers become inputs named by their path; other leaves stay constant."""
    import torch

    if isinstance(example, torch.Tensor):
        example = (example,)
    if isinstance(example, dict) and kwargs is None:
        example, kwargs = (), example
    if not isinstance(example, (tuple, list)) or not (example or kwargs):
        raise BadInputError(f"{spec}: example inputs must be a tensor, a non-empty tuple of arguments or a "
                            "dict of keyword arguments")
    example, kwargs = tuple(example), dict(kwargs or {})
    bad = [k for k in kwargs if not isinstance(k, str)]
    if bad:
        raise BadInputError(f"{spec}: example keyword argument names must be strings, not {bad[0]!r}")
    if not kwargs and all(isinstance(t, torch.Tensor) for t in example):  # forward(*tensors): as before
        _check_tensors(spec, [(str(i), t) for i, t in enumerate(example)])
        names = forward_input_names(model, len(example))
        return LoadedModel(spec=spec, module=model, example_inputs=example, input_names=names)
    arg_names = _argument_names(spec, model, example, kwargs)
    flat: list = []
    names: list[str] = []
    args_tree = tuple(_template(a, name, flat, names) for a, name in zip(example, arg_names))
    kwargs_tree = {k: _template(v, k, flat, names) for k, v in kwargs.items()}
    if not flat:
        raise BadInputError(f"{spec}: the example inputs hold no tensor: nothing to export or compare")
    _check_tensors(spec, list(zip(names, flat)))
    return LoadedModel(spec=spec, module=model, example_inputs=tuple(flat), input_names=_unique(names),
                       args_tree=args_tree, kwargs_tree=kwargs_tree)


class _Leaf(int):
    """A tensor's place in the flat input list, inside an argument template."""


def _template(value, path, flat, names):
    import torch

    if isinstance(value, torch.Tensor):
        flat.append(value)
        names.append(path)
        return _Leaf(len(flat) - 1)
    if isinstance(value, dict):
        return type(value)((k, _template(v, f"{path}.{k}", flat, names)) for k, v in value.items())
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(_template(v, f"{path}.{f}", flat, names) for f, v in zip(value._fields, value)))
    if isinstance(value, (tuple, list)):
        return type(value)(_template(v, f"{path}.{i}", flat, names) for i, v in enumerate(value))
    return value  # a constant: ints, floats, bools, None, strings


def _fill(tree, flat):
    if isinstance(tree, _Leaf):
        return flat[int(tree)]
    if isinstance(tree, dict):
        return type(tree)((k, _fill(v, flat)) for k, v in tree.items())
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_fill(v, flat) for v in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(_fill(v, flat) for v in tree)
    return tree


def _argument_names(spec, model, args, kwargs) -> list[str]:
    """A name per positional example argument: forward()'s parameter name, ``NAME.i`` for the i-th
    item of ``*NAME``. Arguments forward() cannot take are refused here, in one line."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return [f"input_{i}" for i in range(len(args))]
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        raise BadInputError(f"{spec}: the example inputs do not fit forward{sig}: {e}") from None
    names = []
    params = list(sig.parameters.values())
    for p in params:
        if len(names) == len(args):
            break
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        elif p.kind == p.VAR_POSITIONAL:
            names += [f"{p.name}.{i}" for i in range(len(args) - len(names))]
    return names


def _unique(names: list[str]) -> list[str]:
    seen: set = set()
    out = []
    for n in names:
        m, i = n, 1
        while m in seen:
            m, i = f"{n}_{i}", i + 1
        seen.add(m)
        out.append(m)
    return out


def _check_tensors(spec, named) -> None:
    import torch

    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise BadInputError(f"{spec}: example input {name} is {type(t).__name__}, not a tensor")
        if t.numel() == 0:
            raise BadInputError(f"{spec}: example input {name} is empty (shape {list(t.shape)}): nothing to export "
                                "or compare")


def flatten_output(out, prefix: str = "") -> list[tuple[str, object]]:
    """(name, tensor) for every tensor of a forward() result, depth-first: a tensor is ``output``; a
    tuple/list's items ``output_0``, ``output_1``...; a dict's, ``ModelOutput``'s or dataclass's
    fields their names (None fields skipped, as Hugging Face does); nested paths join with ``.``."""
    import dataclasses

    import torch

    if isinstance(out, torch.Tensor):
        return [(prefix or "output", out)]
    items = None
    if isinstance(out, dict):  # ModelOutput is an OrderedDict of its non-None fields
        items = [(str(k), v) for k, v in out.items()]
    elif dataclasses.is_dataclass(out) and not isinstance(out, type):
        items = [(f.name, getattr(out, f.name)) for f in dataclasses.fields(out)]
    elif isinstance(out, (tuple, list)):
        items = [(f"{i}" if prefix else f"output_{i}", v) for i, v in enumerate(out)]
    if items is None:
        return []  # a constant (None, int, str...): not an output of the graph
    flat = []
    for key, v in items:
        flat += flatten_output(v, f"{prefix}.{key}" if prefix else key)
    return flat


def output_names_of(out) -> list[str]:
    """The ONNX output names of a forward() result (see flatten_output); a single tuple item keeps
    the exporter's old name ``output``."""
    named = flatten_output(out)
    if len(named) == 1 and isinstance(out, (tuple, list)):
        return ["output"]
    return _unique([n for n, _ in named])


def forward_input_names(model, n: int) -> list[str]:
    """The names of forward's first ``n`` parameters: the ONNX input names the exporter uses."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    names: list[str] = []
    for p in params:
        if len(names) == n:
            break
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        elif p.kind == p.VAR_POSITIONAL:  # forward(self, *args): args.0, args.1, ...
            names += [f"{p.name}.{i}" for i in range(n - len(names))]
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
            if p.stat().st_size and not _looks_like_torch_save(p):  # torch's own error is a bare KeyError number
                raise BadInputError(f"checkpoint {p} cannot be read: not a torch.save file (neither a zip archive "
                                    f"nor a pickle); give a torch.save state_dict or a .safetensors file") from None
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


def _looks_like_torch_save(path: Path) -> bool:
    """torch.save writes a zip archive (since 1.6) or, legacy, a pickle (protocol 2+ starts with 0x80)."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(1)
    return head == b"\x80" or zipfile.is_zipfile(path)
