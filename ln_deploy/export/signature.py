"""Any forward() signature as one torch.export can take: positional tensors in, a tuple of tensors out.

torch.export matches ``dynamic_shapes`` to forward's own signature, and its support for ``*args`` (a
tuple holding a tuple), ``**kwargs`` (a torch bug: "Must provide a tree_name") and dataclass outputs
varies. So the exporter traces a copy of the user's module whose class overrides ``forward`` with an
explicit parameter per input tensor: it rebuilds forward's argument tree (``LoadedModel.arguments``),
calls the original forward, and returns the output's tensors flat (``spec.flatten_output``).

A copy, not a wrapper module: the copy shares the original's submodules and parameters, so the module
paths torch.onnx writes on every node (``blocks.0.norm1``) are the original's, which localisation and
the advisor read; a wrapper would prefix them all.
"""

from __future__ import annotations

import copy
import keyword
import re

from ..spec import flatten_output


def parameter_names(input_names: list[str]) -> list[str]:
    """Python identifiers for the flat inputs (``args.0`` -> ``args_0``); dynamo's messages name these."""
    out, seen = [], set()
    for n in input_names:
        p = re.sub(r"\W", "_", n)
        if not p or p[0].isdigit() or keyword.iskeyword(p) or p == "self":
            p = "in_" + p
        q, i = p, 1
        while q in seen:
            q, i = f"{p}_{i}", i + 1
        seen.add(q)
        out.append(q)
    return out


def flat_module(loaded, params: list[str] | None = None):
    """A copy of ``loaded.module`` whose ``forward(self, <one parameter per input>)`` returns a tuple of
    the output's tensors. ``params`` names the parameters (default: ``parameter_names``)."""
    module = loaded.module
    params = params or parameter_names(loaded.input_names)
    orig = module.forward  # bound to the original: the copy shares its submodules and parameters
    src = (f"def forward(self, {', '.join(params)}):\n"
           f"    args, kwargs = _loaded.arguments(({', '.join(params)},))\n"
           f"    return tuple(t for _, t in _flatten(_orig(*args, **kwargs)))\n")
    scope: dict = {"_loaded": loaded, "_orig": orig, "_flatten": flatten_output}
    exec(src, scope)  # noqa: S102 - our own fixed template; only the parameter names vary (identifiers)
    cls = type(module)
    flat_cls = type(cls.__name__, (cls,), {"forward": scope["forward"], "__module__": cls.__module__,
                                            "__qualname__": cls.__qualname__})
    flat = copy.copy(module)
    flat.__class__ = flat_cls
    flat.__dict__.pop("forward", None)  # an instance-level forward (set by some wrappers) would win
    return flat
