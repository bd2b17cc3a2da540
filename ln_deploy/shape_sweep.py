"""The shapes a graph's dynamic axes are verified at, shared by ``export`` (before writing) and ``check``.

A graph input dimension with a name (``dim_param``) claims that any size works there. The claim is
tested at several sizes per named dimension: 1, the example's size, twice it, and a prime above it
(odd sizes catch vectorised paths and reshapes that only work for even or power-of-two sizes), within
the range the exporter recorded as allowed (torch.export's range constraints: a model indexing
``x[:, 9]`` needs at least 10 steps; a position table of 64 allows at most 64). Dimensions sharing a name move together (the
batch of ``x`` and of ``mask``); each name is swept on its own, the others kept at the example's size,
so the cost grows with the number of dynamic axes, not their product.

Imports no pipeline stage: export and check both build on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

RANGES_KEY = "ln_deploy.dynamic_ranges"


@dataclass
class ShapeCase:
    label: str  # the dim_param being swept
    size: int
    shapes: dict  # input name -> shape (list of ints)

    def describe(self) -> str:
        return f"{self.label}={self.size} (" + ", ".join(f"{n}{list(s)}" for n, s in self.shapes.items()) + ")"


def _next_prime(n: int) -> int:
    def prime(k):
        return k >= 2 and all(k % d for d in range(2, int(k ** 0.5) + 1))

    k = n + 1
    while not prime(k):
        k += 1
    return k


def sweep_sizes(example: int, upper: int | None = None, lower: int = 1) -> list[int]:
    """1 (or ``lower``), the example, 2x the example and a prime above it, at most ``upper``; in that
    order, unique."""
    sizes = []
    for s in (max(1, lower), example, 2 * example, _next_prime(max(example, 2))):
        if s >= max(1, lower) and (upper is None or s <= upper) and s not in sizes:
            sizes.append(s)
    return sizes


def dynamic_dims(model) -> dict[str, list[tuple[str, int]]]:
    """dim_param -> [(input name, axis)] over the graph's (non-initializer) inputs."""
    inits = {i.name for i in model.graph.initializer}
    out: dict[str, list] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_param") and d.dim_param:
                out.setdefault(d.dim_param, []).append((vi.name, k))
            elif not d.HasField("dim_value"):
                out.setdefault(f"{vi.name}[{k}]", []).append((vi.name, k))  # unnamed: its own group
    return out


def recorded_bounds(model) -> dict[str, tuple[int, int | None]]:
    """label -> (smallest, largest or None) allowed size, as the exporter recorded them (torch.export's
    range constraints). The model file is untrusted: anything malformed is ignored."""
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        ranges = json.loads(meta.get(RANGES_KEY, "{}"))
    except ValueError:
        return {}
    out = {}
    for k, v in (ranges.items() if isinstance(ranges, dict) else ()):
        if (isinstance(v, list) and len(v) == 2 and isinstance(v[0], int) and v[0] >= 1
                and (v[1] is None or isinstance(v[1], int) and v[1] >= v[0])):
            out[k] = (v[0], v[1])
    return out


def plan(model, example_shapes: dict[str, list[int]], extra: dict | None = None) -> list[ShapeCase]:
    """Every shape to run: per dynamic dimension of ``model``, each sweep size (others at the example).
    ``extra``: {dim_param: [sizes]} to run too (within the recorded range), e.g. the largest batch a
    deployment will serve."""
    bounds = recorded_bounds(model)
    cases = []
    for label, places in dynamic_dims(model).items():
        ex = [example_shapes[n][k] for n, k in places if n in example_shapes]
        if not ex:
            continue
        lower, upper = bounds.get(label, (1, None))
        sizes = sweep_sizes(int(ex[0]), upper, lower)
        sizes += [int(x) for x in (extra or {}).get(label, ()) if x not in sizes and x >= lower
                  and (upper is None or x <= upper)]
        for size in sizes:
            shapes = {n: list(s) for n, s in example_shapes.items()}
            for n, k in places:
                if n in shapes:
                    shapes[n][k] = size
            cases.append(ShapeCase(label, size, shapes))
    return cases


def random_feed(example_inputs: dict, shapes: dict, rng):
    """Inputs of the given shapes that mean what the examples mean: 0/1 float examples stay 0/1 masks
    (all ones: every position real), integer examples stay in the example's value range (token ids in the
    vocabulary), bools are random, other floats standard normal."""
    import numpy as np

    feed = {}
    for name, ex in example_inputs.items():
        ex = np.asarray(ex)
        shape = tuple(shapes[name])
        if ex.dtype.kind == "f" and ex.size and np.isin(ex, (0.0, 1.0)).all():
            feed[name] = np.ones(shape, dtype=ex.dtype)
        elif ex.dtype.kind == "f":
            feed[name] = rng.standard_normal(shape).astype(ex.dtype)
        elif ex.dtype.kind == "b":
            feed[name] = rng.random(shape) < 0.5
        else:
            lo, hi = (int(ex.min()), int(ex.max())) if ex.size else (0, 0)
            feed[name] = rng.integers(lo, hi + 1, size=shape).astype(ex.dtype)
    return feed
