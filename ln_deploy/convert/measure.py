"""Error measures of the measured check: magnitudes and relative errors that tell inf and NaN apart."""

from __future__ import annotations

def absmax(a) -> float:
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    return float(np.abs(a).max()) if a.size else 0.0


def finite_absmax(a) -> float:
    """Largest finite magnitude: ±inf (attention masks) is as representable in fp16 as in fp32."""
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(np.abs(a).max()) if a.size else 0.0


def rel_err(got, ref) -> float:
    import numpy as np

    g = np.asarray(got, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if g.shape != r.shape:
        return float("inf")
    if not r.size:
        return 0.0
    fin = np.isfinite(r)
    if not np.array_equal(np.isfinite(g), fin):
        return float("inf")
    scale = max(float(np.abs(r[fin]).max(initial=0.0)), 1e-6)
    return float(np.abs(g[fin] - r[fin]).max(initial=0.0) / scale)
